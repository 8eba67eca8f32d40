"""GET /metrics: request latencies, verify and login outcomes, live gauges, multiprocess sums."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ADMIN_PASSWORD, FakeClock, basic_auth, make_config
from tokensvc.operations import metrics
from tokensvc.web.app import create_app


def sample(name: str, **labels: str) -> float:
    """The current value of one sample in this process (0 when not yet created)."""
    metrics.flush_requests()  # request tallies reach the metrics every second or on a scrape
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def http(aiohttp_client: Any, sqlite_url: str, data_dir: Path, clock: FakeClock) -> Any:
    config = make_config(database_url=sqlite_url, data_dir=data_dir)
    return await aiohttp_client(create_app(config, clock=clock))


async def admin_token(http: Any) -> str:
    resp = await http.post("/v1/login", headers=basic_auth("admin", ADMIN_PASSWORD))
    return str((await resp.json())["token"])


async def test_metrics_are_served_in_the_prometheus_text_format(http: Any) -> None:
    """/metrics parses as Prometheus text and names every metric the dashboards use."""

    resp = await http.get("/metrics")

    text = await resp.text()
    names = {family.name for family in text_string_to_metric_families(text)}
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert {
        "tokensvc_http_request_duration_seconds",
        "tokensvc_verify",
        "tokensvc_login",
        "tokensvc_dependency_errors",
        "tokensvc_governor_queue_depth",
        "tokensvc_governor_in_flight",
        "tokensvc_governor_rejections",
        "tokensvc_root_key_age_seconds",
        "tokensvc_verify_chain_cache_entries",
    } <= names


async def test_request_latency_is_observed_by_route_template_and_status_class(http: Any) -> None:
    """A 404 under /v1/users/{name} counts once in that route's 4xx histogram, not by its path."""
    route = "/v1/users/{name}"
    before = sample("tokensvc_http_request_duration_seconds_count", route=route, status_class="4xx")

    await http.get("/v1/users/someone")

    after = sample("tokensvc_http_request_duration_seconds_count", route=route, status_class="4xx")
    assert after == before + 1


async def test_verify_outcomes_are_counted_by_reason(http: Any) -> None:
    """valid (200), invalid (401), denied (403) and bad_request (400) each count once."""
    login = await http.post(
        "/v1/login", json={"operations": ["read"]}, headers=basic_auth("admin", ADMIN_PASSWORD)
    )
    token = (await login.json())["token"]
    reasons = ("valid", "invalid", "denied", "bad_request")
    before = {r: sample("tokensvc_verify_total", endpoint="verify", reason=r) for r in reasons}

    await http.post("/v1/verify", json={"token": token, "context": {"operation": "read"}})
    # Change the checksum's last digit for sure: a fixed "00" left 1 token in 256 untouched.
    tampered = token[:-1] + ("0" if token[-1] != "0" else "1")
    await http.post("/v1/verify", json={"token": tampered})
    await http.post("/v1/verify", json={"token": token, "context": {"operation": "write"}})
    await http.post("/v1/verify", json={"token": 42})

    after = {r: sample("tokensvc_verify_total", endpoint="verify", reason=r) for r in reasons}
    assert {r: after[r] - before[r] for r in reasons} == dict.fromkeys(reasons, 1.0)


async def test_login_outcomes_are_counted(http: Any) -> None:
    """A good login, a wrong password, and a locked-out attempt each count under their outcome.
    A wrong password is answered with a (decoy) challenge and counted as one, as a right
    password of an enrolled user is: red team (helper-73), `fail` counted only the wrong ones
    and /metrics confirmed a guessed password the second factor was hiding."""
    outcomes = ("success", "fail", "mfa_challenge", "locked")
    before = {o: sample("tokensvc_login_total", outcome=o) for o in outcomes}

    await http.post("/v1/login", headers=basic_auth("admin", ADMIN_PASSWORD))
    statuses = [
        (await http.post("/v1/login", headers=basic_auth("mallory", "guess"))).status
        for _ in range(6)
    ]

    after = {o: sample("tokensvc_login_total", outcome=o) for o in outcomes}
    assert statuses[-1] == 429
    assert after["success"] - before["success"] == 1
    assert after["mfa_challenge"] - before["mfa_challenge"] == statuses.count(401)
    assert after["fail"] == before["fail"]
    assert after["locked"] - before["locked"] == statuses.count(429)


async def test_an_unreachable_redis_counts_as_unavailable_and_a_redis_error(
    aiohttp_client: Any, sqlite_url: str, data_dir: Path, clock: FakeClock
) -> None:
    """Login with Redis down answers 503 and counts login `unavailable` and a Redis error."""
    config = make_config(
        database_url=sqlite_url, data_dir=data_dir, redis_url="redis://127.0.0.1:1/0"
    )
    http = await aiohttp_client(create_app(config, clock=clock))
    before = (
        sample("tokensvc_login_total", outcome="unavailable"),
        sample("tokensvc_dependency_errors_total", dependency="redis"),
        sample("tokensvc_dependency_errors_total", dependency="database"),
    )

    resp = await http.post("/v1/login", headers=basic_auth("admin", ADMIN_PASSWORD))

    after = (
        sample("tokensvc_login_total", outcome="unavailable"),
        sample("tokensvc_dependency_errors_total", dependency="redis"),
        sample("tokensvc_dependency_errors_total", dependency="database"),
    )
    assert resp.status == 503
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)
    assert after[2] == before[2]


async def test_key_age_and_chain_cache_size_are_read_at_scrape_time(
    http: Any, clock: FakeClock
) -> None:
    """The root-key age follows the clock, and the cache gauge counts verified chains."""
    token = await admin_token(http)
    await http.post("/v1/verify", json={"token": token})
    clock.advance(minutes=10)

    text = await (await http.get("/metrics")).text()

    values = {
        s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples
    }
    assert values["tokensvc_root_key_age_seconds"] >= 600
    assert values["tokensvc_verify_chain_cache_entries"] >= 1


_WORKER = """
from tokensvc.operations import metrics
metrics.LOGIN_SUCCESS.inc()
metrics.observe_request("/v1/verify", 200, 0.001)  # tallied in memory...
metrics.observe_request("/v1/verify", 200, 0.0002)
metrics.flush_requests()  # ...and folded into the memory-mapped values
metrics.ROOT_KEY_AGE.set({age})
"""
_SCRAPER = """
import sys
from tokensvc.operations import metrics
sys.stdout.write(metrics.exposition()[0].decode())
"""


def test_worker_processes_add_up_in_multiprocess_mode(tmp_path: Path) -> None:
    """With PROMETHEUS_MULTIPROC_DIR set, counters of separate processes are summed on scrape."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}

    def run(code: str) -> str:
        return subprocess.run(
            [sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True
        ).stdout

    run(_WORKER.format(age=100))
    run(_WORKER.format(age=250))
    text = run(_SCRAPER)

    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert values[("tokensvc_login_total", (("outcome", "success"),))] == 2
    count = (
        "tokensvc_http_request_duration_seconds_count",
        (("route", "/v1/verify"), ("status_class", "2xx")),
    )
    assert values[count] == 4
    bucket = "tokensvc_http_request_duration_seconds_bucket"
    labels = (("le", "0.0005"), ("route", "/v1/verify"), ("status_class", "2xx"))
    assert values[(bucket, labels)] == 2  # one 0.2 ms request from each worker
    verified = ("tokensvc_verify_total", (("endpoint", "verify"), ("reason", "valid")))
    assert values[verified] == 4
    # Exited workers' live gauges would be dropped by mark_process_dead; here both still count.
    assert values[("tokensvc_root_key_age_seconds", ())] == 250


_DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


@pytest.mark.parametrize("name", ["grafana-dashboard.json", "prometheus-alerts.yaml"])
async def test_dashboard_and_alerts_use_only_exported_metrics(http: Any, name: str) -> None:
    """Every tokensvc_* series the shipped dashboard or alert rules query is one /metrics serves."""
    text = await (await http.get("/metrics")).text()
    served = {s.name for family in text_string_to_metric_families(text) for s in family.samples}

    used = set(re.findall(r"\btokensvc_[a-z_]+", (_DEPLOY / name).read_text()))

    assert used, name
    assert used <= served, sorted(used - served)


def test_the_dashboard_is_importable_json() -> None:
    """The dashboard parses, has a uid and title, and every panel queries the chosen data source."""

    dashboard = json.loads((_DEPLOY / "grafana-dashboard.json").read_text())

    assert dashboard["uid"] and dashboard["title"] == "tokensvc"
    queries = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert queries and all(
        p["targets"] and p["datasource"]["uid"] == "${datasource}" for p in queries
    )


def test_the_alert_rules_parse_with_expression_and_summary() -> None:
    """The rule file is a Prometheus rule group whose alerts each have expr, for and a summary."""

    rules = yaml.safe_load((_DEPLOY / "prometheus-alerts.yaml").read_text())["groups"][0]["rules"]

    assert {r["alert"] for r in rules} >= {
        "TokensvcDown",
        "TokensvcNotReady",
        "TokensvcDependencyDown",
        "TokensvcHigh5xxRate",
        "TokensvcVerifyLatencyHigh",
        "TokensvcLoginFailureSpike",
        "TokensvcLockoutsHigh",
        "TokensvcDatabaseErrors",
        "TokensvcRedisErrors",
        "TokensvcRootKeyNotRotating",
        "TokensvcGovernorOverload",
    }
    assert all(r["expr"] and r["for"] and r["annotations"]["summary"] for r in rules)
