"""Zero-hop verification (issue 20): a sample aiohttp endpoint with no auth, with tokensvc-client's
middleware on a cache hit, and with every request sent to tokensvc's /v1/verify.

One tokensvc (embedded SQLite) and three sample services (loadtests.clientapp: `noauth`, `cached`,
`verify`) on loopback. The sample services are pinned to CPU 0, wrk and tokensvc to CPU 1 (on 2+
CPUs; --no-pin to not), so the measured service has its core to itself; tokensvc shares wrk's core,
which only matters for the `verify` row (a comparison, not a goal). wrk sends GET /docs/1 with one
hot token in `Authorization: Bearer`, the targets in an order rotated every round.

A fourth row sends the cached app a new path in every request: the middleware remembers an allow
for an exact request (TokensvcClient.allowed) and reuses it for the next identical one, so the
main row measures that; this row measures the full decision from the cached verdict.

Reported: req/s, p50/p99, the sample service's CPU µs per request, and issue 20's goals: the time
a cache hit adds per request (CPU µs/req of `cached` minus `noauth`, and the same from throughput,
1/req/s; ≤ 10 µs) and the throughput of `cached` against `noauth` (≥ 0.9×). Also, in this process, `await client.check(...)` on a hit
(µs per call, median of rounds): the client's own share of the added time.

    python -m loadtests client [--duration 5] [--rounds 3] [--connections 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, NamedTuple

from loadtests import loadgen
from loadtests.common import (
    SHARED_MACHINE_NOTE,
    VerifyContext,
    fmt,
    fmt_ratio,
    free_ports,
    loadavg_note,
    machine_info,
    median,
    pinned,
    ratio,
    spread,
    table,
    write_results,
)
from loadtests.httpbench import ROOT, Server, _admin_token, _start, _tokensvc_bin

CLIENT_DIR = ROOT / "client"
TARGETS = ("noauth", "cached", "guarded", "cached-paths", "verify")
LABELS = {
    "noauth": "no auth",
    "cached": "middleware, cache hit",
    "guarded": "guard, cache hit",
    "cached-paths": "middleware, new path each",
    "verify": "/v1/verify per request",
}
# One app process per target; cached-paths runs the cached app's code (mode "cached") in a
# process of its own, so the thousands of allows it remembers never weigh on the cache-hit row
# (a bigger heap makes every garbage collection of that process slower).
APPS = ("noauth", "cached", "guarded", "cached-paths", "verify")
MODES = {"cached-paths": "cached"}
PATH = "/docs/1"
USER_TOKEN = {
    "subject": "bench-user",
    "ttl": "1h",
    "operations": ["read"],
    "resources": ["/docs/*"],
    "audience": ["files"],
}
SERVICE_TOKEN = {
    "subject": "bench-service",
    "ttl": "1h",
    "operations": ["tokens:verdict"],
    "service": True,
    "description": "loadtests client: verdicts",
}
GOAL_ADDED_US = 10.0
GOAL_RATIO = 0.9

# wrk: GET with the header given by -H; done() prints the same JSON line as loadgen's script.
DONE_SCRIPT = loadgen.WRK_SCRIPT[loadgen.WRK_SCRIPT.index("function done") :]
# For cached-paths: GET /docs/<n>, n counting up to a million, so no request repeats the path of
# one the middleware remembered an allow for (it remembers at most max_entries, 10,000): each is
# decided from the cached verdict in full, as a service whose URLs rarely repeat would see.
PATHS_SCRIPT = r"""
local n = 0
function request()
  n = (n + 1) % 1000000
  return wrk.format(nil, "/docs/" .. n)
end
"""


class Issuer(NamedTuple):
    """The tokensvc the sample apps ask, the tokens it issued, and the apps' environment."""

    server: Server
    verify_url: str  # its verify listener's base URL
    service_token: str  # tokens:verdict, for the apps' TokensvcClient
    user_token: str  # what the load sends
    app_env: dict[str, str]  # TOKENSVC_SERVICE_TOKEN, and the client package on PYTHONPATH


def start_issuer(workdir: Path, cpus: set[int] | None, servers: list[Server]) -> Issuer:
    """`tokensvc serve` (embedded SQLite under `workdir`, its verify port), appended to
    `servers` as soon as it runs (so the caller stops it), with a service and a user token."""
    svc_port, svc_vport = free_ports(2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENSVC_")}
    svc_env = dict(
        env,
        TOKENSVC_DATA_DIR=str(workdir / "data"),
        TOKENSVC_PORT=str(svc_port),
        TOKENSVC_VERIFY_PORT=str(svc_vport),
        TOKENSVC_HOST="127.0.0.1",
    )
    svc = _start("tokensvc", [_tokensvc_bin(), "serve"], svc_env, svc_port, workdir, cpus)
    servers.append(svc)
    svc.wait_healthy()
    admin = _admin_token(svc_env)
    service_token = _post(svc.base + "/v1/tokens", SERVICE_TOKEN, admin)["token"]
    app_env = dict(
        env,
        TOKENSVC_SERVICE_TOKEN=service_token,
        PYTHONPATH=os.pathsep.join(p for p in (str(CLIENT_DIR), env.get("PYTHONPATH", "")) if p),
    )
    return Issuer(
        svc,
        f"http://127.0.0.1:{svc_vport}",
        service_token,
        _post(svc.base + "/v1/tokens", USER_TOKEN, admin)["token"],
        app_env,
    )


def _post(url: str, body: dict[str, Any], token: str) -> dict[str, Any]:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return dict(json.loads(resp.read()))


def _get(url: str, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _wrk(
    wrk: str,
    url: str,
    token: str,
    args: argparse.Namespace,
    workdir: Path,
    cpus: set[int] | None,
    *,
    new_paths: bool = False,
) -> dict[str, Any]:
    script = workdir / ("paths.lua" if new_paths else "done.lua")
    script.write_text((PATHS_SCRIPT if new_paths else "") + DONE_SCRIPT)
    cmd = [
        wrk,
        "-t",
        str(args.threads),
        "-c",
        str(args.connections),
        "-d",
        f"{max(1, round(args.duration))}s",
        "--timeout",
        "10s",
        "--latency",
        "-H",
        f"Authorization: Bearer {token}",
        "-s",
        str(script),
        url,
    ]
    proc = subprocess.run(
        pinned(cmd, cpus), capture_output=True, text=True, timeout=args.duration + 60, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited with {proc.returncode}: {proc.stderr[-2000:]}")
    return loadgen.parse_output("wrk", proc.stdout)


def _one_run(
    wrk: str,
    server: Server,
    token: str,
    args: argparse.Namespace,
    workdir: Path,
    cpus: set[int] | None,
    *,
    new_paths: bool = False,
) -> dict[str, Any]:
    before = server.cpu_seconds()
    result = _wrk(wrk, server.base + PATH, token, args, workdir, cpus, new_paths=new_paths)
    cpu = server.cpu_seconds() - before
    if server.proc.poll() is not None:
        raise RuntimeError(f"{server.name} died during the run; its log:\n{server.log_tail()}")
    seconds = result["duration_us"] / 1e6
    requests = int(result["requests"])
    errors = result.get("errors", {})
    return {
        "rps": requests / seconds,
        "p50_ms": result["latency_us"]["p50"] / 1000,
        "p99_ms": result["latency_us"]["p99"] / 1000,
        "requests": requests,
        "error_count": sum(int(v) for v in errors.values()),
        "errors": errors,
        "cpu_us_per_req": cpu / requests * 1e6 if requests else float("nan"),
        "cpu_share": cpu / seconds,
    }


async def _check_micro(
    base: str, service_token: str, token: str, iterations: int, rounds: int
) -> dict[str, Any]:
    """µs per `await client.check(...)` on a hit, against an empty coroutine (the harness)."""
    if str(CLIENT_DIR) not in sys.path:
        sys.path.insert(0, str(CLIENT_DIR))
    from tokensvc_client import TokensvcClient

    async def nothing(token: str, **context: str) -> None:
        return None

    async with TokensvcClient(base, service_token) as client:
        assert client.stream is not None
        if not await client.stream.wait_live(30):
            raise RuntimeError("the client's revocation stream did not go live in 30 s")
        context: VerifyContext = {"operation": "read", "resource": PATH, "audience": "files"}
        await client.check(token, **context)  # the miss that fills the cache
        key = (f"Bearer {token}", None, "GET", PATH)
        await client.check(token, **context, reuse_as=key)  # a hit: remembered
        allowed = client.allowed
        results: dict[str, list[float]] = {"check": [], "harness": [], "allowed": []}
        for _ in range(rounds):
            for name, fn in (("harness", nothing), ("check", client.check)):
                start = time.perf_counter()
                for _ in range(iterations):
                    await fn(token, **context)
                results[name].append((time.perf_counter() - start) / iterations * 1e6)
            start = time.perf_counter()
            for _ in range(iterations):
                if allowed(key) is None:
                    raise RuntimeError("the remembered allow was not reused")
            results["allowed"].append((time.perf_counter() - start) / iterations * 1e6)
        if client.metrics.hits < iterations * rounds:
            raise RuntimeError(f"expected cache hits, metrics: {client.metrics.snapshot()}")
    return {
        "check_us": median(results["check"]),
        "allowed_us": median(results["allowed"]),
        "harness_us": median(results["harness"]),
        "check_rounds_us": results["check"],
    }


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests client", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unrecorded seconds per target")
    parser.add_argument("--micro-iterations", type=int, default=100_000)
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    if not (0.5 <= args.duration <= 600 and 1 <= args.rounds <= 50):
        parser.error("--duration in 0.5..600, --rounds in 1..50")

    gen = loadgen.find("wrk", args.threads)
    app_cpus: set[int] | None = None
    gen_cpus: set[int] | None = None
    if not args.no_pin and (os.cpu_count() or 1) >= 2:
        app_cpus, gen_cpus = {0}, {1}
    note = loadavg_note()
    print(f"client: {gen.describe()}" + (f"; {note}" if note else ""), flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="tokensvc-bench-client-"))
    servers: list[Server] = []
    try:
        issuer = start_issuer(workdir, gen_cpus, servers)
        svc, service_token, user_token = issuer.server, issuer.service_token, issuer.user_token
        apps: dict[str, Server] = {}
        for target, port in zip(APPS, free_ports(len(APPS)), strict=True):
            mode = MODES.get(target, target)
            cmd = [sys.executable, "-m", "loadtests.clientapp", "--mode", mode]
            cmd += ["--port", str(port), "--tokensvc", svc.base]
            cmd += ["--verify-url", issuer.verify_url]
            apps[target] = _start(f"app-{target}", cmd, issuer.app_env, port, workdir, app_cpus)
            servers.append(apps[target])
        for target, app in apps.items():
            app.wait_healthy()
            print(f"client: {LABELS[target]} on :{app.port} (pid {app.proc.pid})", flush=True)

        # Sanity: the token passes everywhere; the protected ones refuse a missing token.
        deadline = time.monotonic() + 30
        while _get(apps["cached"].base + PATH, user_token) != 200:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"cached app never allowed the token:\n{apps['cached'].log_tail()}"
                )
            time.sleep(0.2)
        for target, app in apps.items():
            if _get(app.base + PATH, user_token) != 200:
                raise RuntimeError(f"sanity: {LABELS[target]} refused the bench token")
            if target != "noauth" and _get(app.base + PATH, None) != 401:
                raise RuntimeError(f"sanity: {LABELS[target]} allowed a request without a token")

        if args.warmup > 0:
            warm = argparse.Namespace(**{**vars(args), "duration": args.warmup})
            for target in APPS:
                _one_run(gen.path, apps[target], user_token, warm, workdir, gen_cpus)
        runs: dict[str, list[dict[str, Any]]] = {t: [] for t in TARGETS}
        for r in range(args.rounds):
            order = TARGETS[r % len(TARGETS) :] + TARGETS[: r % len(TARGETS)]
            for target in order:
                time.sleep(0.3)
                app = apps[target]
                res = _one_run(
                    gen.path,
                    app,
                    user_token,
                    args,
                    workdir,
                    gen_cpus,
                    new_paths=target == "cached-paths",
                )
                runs[target].append(res)
                flag = f"  ERRORS {res['errors']}" if res["error_count"] else ""
                print(
                    f"client: round {r + 1}/{args.rounds} {LABELS[target]:24} "
                    f"{res['rps']:9,.0f} req/s  p50 {res['p50_ms']:6.2f} ms  "
                    f"p99 {res['p99_ms']:6.2f} ms  {res['cpu_us_per_req']:6.1f} CPU µs/req{flag}",
                    flush=True,
                )
        micro = asyncio.run(
            _check_micro(svc.base, service_token, user_token, args.micro_iterations, 5)
        )
    finally:
        for server in reversed(servers):
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    med = {
        t: {m: median([r[m] for r in runs[t]]) for m in runs[t][0] if m != "errors"}
        for t in TARGETS
    }
    added_us = med["cached"]["cpu_us_per_req"] - med["noauth"]["cpu_us_per_req"]
    added_latency_us = (med["cached"]["p50_ms"] - med["noauth"]["p50_ms"]) * 1000
    # The same from throughput: the service's core is saturated, so 1/rps is its time per request.
    added_by_rps_us = 1e6 / med["cached"]["rps"] - 1e6 / med["noauth"]["rps"]
    throughput = ratio(med["cached"]["rps"], med["noauth"]["rps"])
    rows = [
        [
            LABELS[t],
            fmt(med[t]["rps"]),
            spread([r["rps"] for r in runs[t]]),
            fmt(med[t]["p50_ms"], " ms"),
            fmt(med[t]["p99_ms"], " ms"),
            fmt(med[t]["cpu_us_per_req"], " µs"),
            fmt_ratio(ratio(med[t]["rps"], med["noauth"]["rps"])),
        ]
        for t in TARGETS
    ]
    print()
    print(table(["GET /docs/1", "req/s", "range", "p50", "p99", "CPU/req", "vs no auth"], rows))
    print()
    ok_added = added_us <= GOAL_ADDED_US
    ok_ratio = throughput >= GOAL_RATIO
    for target in ("cached", "guarded"):
        added = med[target]["cpu_us_per_req"] - med["noauth"]["cpu_us_per_req"]
        by_rps = 1e6 / med[target]["rps"] - 1e6 / med["noauth"]["rps"]
        share = ratio(med[target]["rps"], med["noauth"]["rps"])
        latency = (med[target]["p50_ms"] - med["noauth"]["p50_ms"]) * 1000
        print(
            f"{LABELS[target]}: adds {added:.1f} CPU µs per request (goal ≤ {GOAL_ADDED_US:g} µs: "
            f"{'met' if added <= GOAL_ADDED_US else 'NOT met'}; from throughput {by_rps:+.1f} µs; "
            f"p50 latency {latency:+.0f} µs), throughput {fmt_ratio(share)} of no auth "
            f"(goal ≥ {GOAL_RATIO}×: {'met' if share >= GOAL_RATIO else 'NOT met'})"
        )
    paths_added = med["cached-paths"]["cpu_us_per_req"] - med["noauth"]["cpu_us_per_req"]
    print(
        f"new path each request (the verdict cached, no remembered allow): {paths_added:+.1f} CPU "
        f"µs per request, {fmt_ratio(ratio(med['cached-paths']['rps'], med['noauth']['rps']))} "
        "of no auth (no goal: the goals are for the cache hit above)"
    )
    print(
        f"in-process: await client.check(...) on a hit {micro['check_us']:.2f} µs per call, "
        f"client.allowed(key) on a remembered allow {micro['allowed_us']:.2f} µs "
        f"(an empty coroutine: {micro['harness_us']:.2f} µs)"
    )
    print(
        f"/v1/verify per request: {fmt_ratio(ratio(med['verify']['rps'], med['noauth']['rps']))} "
        "of no auth"
    )
    if note:
        print(SHARED_MACHINE_NOTE.format(cpus=os.cpu_count()))
    if not args.no_save:
        path = write_results(
            "client",
            {
                "args": vars(args),
                "machine": machine_info(),
                "load_note": note,
                "pinned": app_cpus is not None,
                "runs": runs,
                "medians": med,
                "added_us_per_request": added_us,
                "added_p50_latency_us": added_latency_us,
                "added_us_by_throughput": added_by_rps_us,
                "guard_added_us_per_request": med["guarded"]["cpu_us_per_req"]
                - med["noauth"]["cpu_us_per_req"],
                "guard_throughput_ratio": ratio(med["guarded"]["rps"], med["noauth"]["rps"]),
                "throughput_ratio": throughput,
                "micro": micro,
                "goals": {"added_us": ok_added, "throughput_ratio": ok_ratio},
            },
        )
        print(f"client: results in {path}")
    return 0
