"""The http benchmark's peer plumbing: parsing --peers, ratios and goals, the verify-port fallback."""

from __future__ import annotations

import math
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from loadtests import peers
from loadtests.common import free_ports
from loadtests.httpbench import Server, parse_peers, use_verify_ports
from loadtests.memory import per_process

ROOT = Path(__file__).resolve().parent.parent


def _m(rps: float, p99: float, p50: float = 1.0, cpu: float = 10.0) -> dict[str, float]:
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99, "server_cpu_us_per_req": cpu}


def test_parse_peers_keeps_the_canonical_order_and_refuses_unknown_names() -> None:
    assert parse_peers("nginx,go") == ("go", "nginx")
    assert parse_peers(" go-bare , go ") == ("go", "go-bare")
    assert parse_peers("none") == ()
    with pytest.raises(ValueError, match="apache"):
        parse_peers("go,apache")


def test_peer_ratios_divide_ours_by_each_measured_peer() -> None:
    medians = {
        "hot": _m(40_000, 2.0, cpu=20.0),
        "distinct": _m(30_000, 3.0),
        "go": _m(20_000, 4.0, cpu=40.0),
        "nginx": _m(100_000, 1.0),
    }
    ratios = peers.peer_ratios(medians)
    assert set(ratios) == {"hot/go", "hot/nginx", "distinct/go", "distinct/nginx"}
    assert ratios["hot/go"]["rps"] == pytest.approx(2.0)
    assert ratios["hot/go"]["server_cpu_per_req"] == pytest.approx(0.5)
    assert ratios["distinct/go"]["p99"] == pytest.approx(0.75)
    assert ratios["hot/nginx"]["rps"] == pytest.approx(0.4)


def test_goals_pass_fail_and_not_measured() -> None:
    medians = {
        "hot": _m(40_000, 2.0),
        "distinct": _m(23_000, 5.0),
        "go": _m(20_000, 4.0),
    }
    goals = {g["goal"]: g for g in peers.peer_goals(peers.peer_ratios(medians))}
    assert goals["hot req/s ≥ 1.6× go"]["met"] is True  # 2.0×
    assert goals["distinct req/s ≥ 1.2× go"]["met"] is False  # 1.15×
    assert goals["distinct p99 ≤ go p99"]["met"] is False  # 1.25×
    assert goals["hot req/s ≥ 0.5× nginx"]["met"] is None  # nginx not measured
    assert math.isnan(goals["hot req/s ≥ 0.5× nginx"]["value"])
    text = peers.render_goals(list(goals.values()))
    assert "hot req/s ≥ 1.6× go → PASS (2.00×)" in text
    assert "distinct req/s ≥ 1.2× go → FAIL (1.15×)" in text
    assert "hot req/s ≥ 0.5× nginx → not measured" in text


def test_bounds_are_inclusive() -> None:
    medians = {"hot": _m(50_000, 2.0), "distinct": _m(24_000, 4.0), "go": _m(20_000, 4.0)}
    medians["nginx"] = _m(100_000, 1.0)
    assert all(g["met"] for g in peers.peer_goals(peers.peer_ratios(medians)))


@pytest.fixture
def verify_listener() -> Iterator[int]:
    """Something answering POST /v1/verify with 400, as the verify listener does to `{}`."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.send_response(400)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def _server(name: str, port: int) -> Server:
    return Server(name, None, port, Path("/nonexistent"))  # type: ignore[arg-type]


def test_the_load_moves_to_the_verify_port_only_when_it_answers(verify_listener: int) -> None:
    app_port, silent_port = free_ports(2)
    listening, older = _server("new", app_port), _server("old", app_port)
    notes = use_verify_ports([(listening, verify_listener), (older, silent_port)], seconds=0.5)
    assert listening.verify_url == f"http://127.0.0.1:{verify_listener}/v1/verify"
    assert older.verify_url == f"http://127.0.0.1:{app_port}/v1/verify"
    assert "verify listener" in notes[0]
    assert "app port" in notes[1] and str(silent_port) in notes[1]


def test_app_port_verify_keeps_the_load_on_the_app_port(verify_listener: int) -> None:
    server = _server("svc", 1234)
    notes = use_verify_ports([(server, verify_listener)], app_port=True)
    assert server.verify_url == "http://127.0.0.1:1234/v1/verify"
    assert "--app-port-verify" in notes[0]


def test_per_process_rss_and_the_150_mb_goal() -> None:
    samples = [
        {"tokens": 0, "rss_kib": {"10": 100_000, "11": 50_000}},
        {"tokens": 50_000, "rss_kib": {"10": 140_000, "11": 60_000}},
        {"tokens": 100_000, "rss_kib": {"10": 150_000, "11": 60_000}},
    ]
    out = per_process(samples, cache_entries=50_000)
    assert out["10"]["max_kib"] == 150_000
    assert out["10"]["growth_after_cache_full_kib"] == 10_000
    assert out["10"]["within_goal"] is False  # 150,000 KiB = 153.6 MB > 150 MB
    assert out["11"]["within_goal"] is True and out["11"]["growth_after_cache_full_kib"] == 0


def test_http_help_documents_the_peer_and_verify_port_options() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "loadtests", "http", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    for option in ("--peers", "--go-peer", "--app-port-verify", "--no-pin", "TOKENSVC_VERIFY_PORT"):
        assert option in proc.stdout, option


def test_nginx_config_is_valid_where_nginx_is_installed(tmp_path: Path) -> None:
    found = peers.find_nginx()
    if found.path is None:
        pytest.skip(found.note)
    cmd = peers.nginx_cmd(found.path, tmp_path, free_ports(1)[0])
    proc = subprocess.run([*cmd, "-t"], capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
