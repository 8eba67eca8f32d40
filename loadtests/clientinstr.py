"""Issue 20's throughput goal counted in instructions: what tokensvc-client's aiohttp middleware
(and TokensvcGuard) adds to a sample endpoint on a remembered allow, under callgrind.

`python -m loadtests client` measures req/s, but on a shared 2-core machine the same code reads
anywhere from 0.78× to 1.20× of no auth, which cannot decide a 0.88-vs-0.90 question. callgrind
counts the instructions a process executes the same way every run.

One tokensvc (embedded SQLite, not under valgrind) issues a service token and a user token; then
each sample app (loadtests.clientapp: `noauth`, `passthrough` — an empty middleware —, `cached` —
the middleware —, `guarded`) runs under
`valgrind --tool=callgrind --instr-atstart=no` with PYTHONHASHSEED=0. This process is the client:
one keep-alive connection over a plain blocking socket sends GET /docs/1 with the token, --warmup
requests first (the verdict is fetched, the allow remembered, the stream goes live), then
`callgrind_control -i on`, exactly --requests requests, `-i off` and a dump: the dump's total over
--requests is the instructions per request. The app's own counters (GET /_client/metrics, outside
the counted stretch) must show that every counted request was a hit: no fetch, no fallback to
/v1/verify.

Counts still move by about ±1,000 per request between runs of the same app (timers and the
stream's heartbeats that fall inside the counted stretch), so each app is measured --repeat times
and the median is reported. The `passthrough` row is the floor under the middleware: what
aiohttp's middleware chain costs with nothing in it (partial, lru_cache of the chain, a call with
a keyword argument), which no middleware can avoid.

    python -m loadtests client-instructions [--requests 2000] [--warmup 300] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from loadtests.clientbench import GOAL_RATIO, PATH, start_issuer
from loadtests.common import (
    free_ports,
    loadavg_note,
    machine_info,
    median,
    ratio,
    table,
    write_results,
)
from loadtests.httpbench import Server, _start
from loadtests.instructions import _connect, _read_response

TARGETS = ("noauth", "passthrough", "cached", "guarded")
# Apps without a TokensvcClient: no stream to wait for, no counters to check.
UNCHECKED = ("noauth", "passthrough")
LABELS = {
    "noauth": "no auth",
    "passthrough": "empty middleware (aiohttp's chain)",
    "cached": "middleware, remembered allow",
    "guarded": "TokensvcGuard, remembered allow",
}
STEP_TIMEOUT = 300.0  # one callgrind_control call, or the app's start-up under valgrind
# The last line callgrind writes to a dump (its `summary:` line near the top is written first).
TOTALS = "totals:"


def _get(sock: socket.socket, stream: Any, path: str, token: str | None) -> tuple[int, bytes]:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\n".encode())
    return _read_response(stream)


def _callgrind_control(pid: int, *args: str) -> None:
    proc = subprocess.run(
        ["callgrind_control", *args, str(pid)],
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"callgrind_control {' '.join(args)} failed: {proc.stderr[-500:]}")


def _dumped_total(out: Path) -> int:
    """The instruction total of the dump `callgrind_control -d` wrote (out.1), once complete."""
    dump = out.with_name(out.name + ".1")
    deadline = time.monotonic() + STEP_TIMEOUT
    while True:
        try:
            for line in dump.read_text(errors="replace").splitlines():
                if line.startswith(TOTALS):
                    return int(line.split()[1])
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"callgrind wrote no total to {dump}")
        time.sleep(0.2)


def _metrics(sock: socket.socket, stream: Any) -> dict[str, Any]:
    status, body = _get(sock, stream, "/_client/metrics", None)
    if status != 200:
        raise RuntimeError(f"GET /_client/metrics answered {status}: {body[:300]!r}")
    return dict(json.loads(body))


def measure(
    mode: str, token: str, args: argparse.Namespace, env: dict[str, str], svc: dict[str, str]
) -> int:
    """Instructions of `args.requests` GET /docs/1 on `mode`'s app, remembered allows only."""
    (port,) = free_ports(1)
    workdir = Path(svc["workdir"])
    out = workdir / f"{mode}.callgrind.out"
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out}",
        f"--log-file={workdir / f'{mode}.valgrind.log'}",
        sys.executable,
        "-m",
        "loadtests.clientapp",
        "--mode",
        mode,
        "--port",
        str(port),
        "--tokensvc",
        svc["base"],
        "--verify-url",
        svc["verify_url"],
    ]
    app = _start(f"app-{mode}", cmd, dict(env, PYTHONHASHSEED="0"), port, workdir, None)
    pid = app.proc.pid
    try:
        with _connect(port, app.proc, STEP_TIMEOUT) as sock, sock.makefile("rb") as stream:
            if mode not in UNCHECKED:
                deadline = time.monotonic() + STEP_TIMEOUT
                while _metrics(sock, stream)["stream_state"] != "live":
                    if time.monotonic() > deadline:
                        raise RuntimeError("the client's revocation stream never went live")
                    time.sleep(0.5)
            for i in range(args.warmup + args.requests):
                if i == args.warmup:
                    before = _metrics(sock, stream) if mode not in UNCHECKED else {}
                    _callgrind_control(pid, "-i", "on")
                status, body = _get(sock, stream, PATH, token)
                if status != 200:
                    raise RuntimeError(f"{mode}: request {i + 1} answered {status}: {body[:300]!r}")
            _callgrind_control(pid, "-i", "off")
            _callgrind_control(pid, "-d")
            if mode not in UNCHECKED:
                after = _metrics(sock, stream)
                moved = {k: after[k] - before[k] for k in ("misses", "fallbacks", "unavailable")}
                if any(moved.values()) or after["hits"] - before["hits"] != args.requests:
                    raise RuntimeError(
                        f"{mode}: not every counted request was a hit: before {before}, "
                        f"after {after}"
                    )
        return _dumped_total(out)
    except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"{mode}: {exc}\napp log:\n{app.log_tail()}") from exc
    finally:
        app.stop()  # its dump is read: a slow shutdown under valgrind may be cut short


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests client-instructions", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--requests", type=int, default=2000, help="counted requests (2000)")
    parser.add_argument("--warmup", type=int, default=300, help="uncounted requests first (300)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per app, median taken (3)")
    parser.add_argument("--no-save", action="store_true", help="do not write a results file")
    args = parser.parse_args(argv)
    if not (
        100 <= args.requests <= 100_000 and 10 <= args.warmup <= 100_000 and 1 <= args.repeat <= 9
    ):
        parser.error("--requests in 100..100000, --warmup in 10..100000, --repeat in 1..9")
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print(
            "client-instructions: valgrind is not installed; install it with "
            "`apt-get install valgrind` (Debian/Ubuntu) and run again",
            file=sys.stderr,
        )
        return 2
    note = loadavg_note()
    print(
        f"client-instructions: {len(TARGETS)} apps × {args.repeat} runs × {args.requests} counted "
        "requests under callgrind (~10 s a run)" + (f"; {note}" if note else ""),
        flush=True,
    )
    workdir = Path(tempfile.mkdtemp(prefix="tokensvc-bench-client-instr-"))
    per_request: dict[str, float] = {}
    runs: dict[str, list[float]] = {t: [] for t in TARGETS}
    servers: list[Server] = []
    try:
        issuer = start_issuer(workdir, None, servers)
        where = {
            "workdir": str(workdir),
            "base": issuer.server.base,
            "verify_url": issuer.verify_url,
        }
        for run_no in range(args.repeat):  # apps interleaved, so a slow stretch is shared
            for mode in TARGETS:
                total = measure(mode, issuer.user_token, args, issuer.app_env, where)
                runs[mode].append(total / args.requests)
                print(
                    f"client-instructions: run {run_no + 1}/{args.repeat} {LABELS[mode]:34} "
                    f"{runs[mode][-1]:>10,.0f} per request",
                    flush=True,
                )
        per_request = {t: median(runs[t]) for t in TARGETS}
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    base = per_request["noauth"]
    rows = [
        [
            LABELS[t],
            f"{per_request[t]:,.0f}",
            f"{per_request[t] - base:+,.0f}",
            f"{ratio(base, per_request[t]):.3f}×",
        ]
        for t in TARGETS
    ]
    print()
    print(table(["GET /docs/1", "instr/req", "added", "expected throughput vs no auth"], rows))
    for mode in ("cached", "guarded"):
        share = ratio(base, per_request[mode])
        print(
            f"{LABELS[mode]}: {share:.3f}× of no auth's throughput, if throughput follows "
            f"instructions (goal ≥ {GOAL_RATIO}×: {'met' if share >= GOAL_RATIO else 'NOT met'})"
        )
    floor = per_request["passthrough"] - base
    budget = base / GOAL_RATIO - base - floor
    print(
        f"aiohttp's middleware chain alone: +{floor:,.0f} ({ratio(base, base + floor):.3f}×), so "
        f"a middleware meets the goal only if its own work is ≤ {budget:,.0f} per request; "
        f"tokensvc_middleware's is {per_request['cached'] - per_request['passthrough']:,.0f}"
    )
    print(
        "note: the app process only, user-space instructions (the socket syscalls, the same for "
        "every app, are not counted); instructions are not time, so the ratio is an estimate"
    )
    if not args.no_save:
        path = write_results(
            "client-instructions",
            {
                "args": vars(args),
                "machine": machine_info(),
                "instructions_per_request": per_request,
                "runs": runs,
                "expected_throughput_ratio": {
                    t: ratio(base, per_request[t]) for t in TARGETS if t != "noauth"
                },
            },
        )
        print(f"client-instructions: results in {path}")
    return 0
