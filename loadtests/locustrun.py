"""`python -m loadtests locust`: run loadtests/locustfile.py headless against a fresh tokensvc.

Starts `tokensvc serve` (embedded SQLite in a temporary directory, the service's default argon2
profile), mints an admin token, creates a few login users through the admin API, then runs
`locust -f loadtests/locustfile.py --headless` for `--duration` seconds and prints locust's
per-endpoint table (requests/s, failures, p50/p99) and writes it as results/locust-*.json.
locust is optional: `pip install locust` into the venv.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from loadtests.common import fmt, free_port, loadavg_note, machine_info, table, write_results
from loadtests.httpbench import ROOT, _admin_token, _start, _tokensvc_bin
from loadtests.svc import base_env, bench_password, create_users

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"


def _locust_bin() -> str | None:
    candidate = Path(sys.executable).with_name("locust")
    if candidate.exists():
        return str(candidate)
    return shutil.which("locust")


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests locust", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--users", type=int, default=50, help="simulated clients (default 50)")
    parser.add_argument("--spawn-rate", type=float, default=10.0, help="clients started per second")
    parser.add_argument("--duration", type=int, default=30, help="seconds (default 30)")
    parser.add_argument("--login-users", type=int, default=5, help="accounts the clients log in as")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    if not (
        1 <= args.users <= 5000 and 1 <= args.duration <= 3600 and 1 <= args.login_users <= 100
    ):
        parser.error("--users in 1..5000, --duration in 1..3600, --login-users in 1..100")
    locust = _locust_bin()
    if locust is None:
        print(
            "locust: locust is not installed; it is an optional dependency of the benchmarks:\n"
            "    .venv/bin/pip install locust\n"
            "then run this again (or: locust -f loadtests/locustfile.py, see loadtests/README.md)",
            file=sys.stderr,
        )
        return 2
    note = loadavg_note()
    print(
        f"locust: {args.users} users for {args.duration} s" + (f"; {note}" if note else ""),
        flush=True,
    )
    workdir = Path(tempfile.mkdtemp(prefix="tokensvc-bench-locust-"))
    port = free_port()
    env = dict(
        base_env(),
        TOKENSVC_DATA_DIR=str(workdir / "data"),
        TOKENSVC_PORT=str(port),
        TOKENSVC_HOST="127.0.0.1",
    )
    server = _start("tokensvc", [_tokensvc_bin(), "serve"], env, port, workdir, None)
    try:
        server.wait_healthy()
        admin = _admin_token(env)
        password = bench_password()
        users = [f"locust-user-{i}" for i in range(args.login_users)]
        asyncio.run(create_users(server.base, admin, users, password))
        csv_prefix = workdir / "locust"
        cmd = [
            locust,
            "-f",
            str(LOCUSTFILE),
            "--headless",
            "--host",
            server.base,
            "-u",
            str(args.users),
            "-r",
            str(args.spawn_rate),
            "-t",
            f"{args.duration}s",
            "--csv",
            str(csv_prefix),
            "--only-summary",
            "--stop-timeout",
            "5",
        ]
        locust_env = dict(
            base_env(),
            LOADTESTS_ADMIN_TOKEN=admin,
            LOADTESTS_USERS=",".join(users),
            LOADTESTS_PASSWORD=password,
        )
        proc = subprocess.run(
            cmd,
            env=locust_env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=args.duration + 120,
            check=False,
        )
        # locust exits 1 when any request failed; the table below shows which.
        if proc.returncode not in (0, 1):
            raise RuntimeError(f"locust exited with {proc.returncode}: {proc.stderr[-2000:]}")
        stats = _read_stats(Path(f"{csv_prefix}_stats.csv"))
        if not stats:
            raise RuntimeError(f"locust wrote no stats; its output:\n{proc.stderr[-2000:]}")
    finally:
        server.stop()
        if args.keep:
            print(f"locust: kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    data: dict[str, Any] = {
        "params": {k: v for k, v in vars(args).items() if k not in ("keep", "no_save")},
        "machine": machine_info(),
        "locust_returncode": proc.returncode,
        "endpoints": stats,
    }
    print(render(data), flush=True)
    if not args.no_save:
        print(f"results: {write_results('locust', data)}")
    return 0


def _read_stats(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):

            def num(key: str, row: dict[str, str] = row) -> float:
                try:
                    return float(row.get(key) or "nan")
                except ValueError:
                    return float("nan")

            out.append(
                {
                    "name": row.get("Name") or "",
                    "method": row.get("Type") or "",
                    "requests": int(num("Request Count")),
                    "failures": int(num("Failure Count")),
                    "rps": num("Requests/s"),
                    "p50_ms": num("50%"),
                    "p99_ms": num("99%"),
                    "mean_ms": num("Average Response Time"),
                }
            )
    return out


def render(data: dict[str, Any]) -> str:
    p = data["params"]
    rows = [
        [
            e["name"],
            f"{e['requests']:,}",
            str(e["failures"]),
            fmt(e["rps"]),
            fmt(e["p50_ms"]),
            fmt(e["p99_ms"]),
        ]
        for e in data["endpoints"]
    ]
    return "\n".join(
        [
            f"locust: {p['users']} users, {p['duration']} s, login → mint → verify mix (weights 1 / 5 / 50+5)",
            table(["endpoint", "requests", "failures", "req/s", "p50 ms", "p99 ms"], rows),
            (
                "note: locust (gevent, one process) is itself the bottleneck on 2 cores; this is a scenario "
                "check, not a ceiling — use `http`/`storm` for figures"
            ),
        ]
    )
