"""Scale-out on one machine: hot-token /v1/verify against `tokensvc serve --workers 1` and `--workers 2`.

Both services run side by side (same embedded SQLite data directory, the same Redis on
127.0.0.1:6379 under one unique TOKENSVC_REDIS_PREFIX, deleted at the end), and wrk runs against
each in turn, the order alternated every round. Reported: medians of req/s, p50/p99, and the
server CPU (the supervisor and all its workers, in cores and µs per request); the ratio
2 workers / 1 worker. On a 2-core machine wrk itself needs most of a core, so the second worker
has little CPU to scale into: read the CPU column together with the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from loadtests import loadgen
from loadtests.common import (
    SHARED_MACHINE_NOTE,
    fmt,
    fmt_ratio,
    free_port,
    loadavg_note,
    machine_info,
    median,
    ratio,
    spread,
    table,
    write_results,
)
from loadtests.httpbench import _admin_token, _mint, _one_run, _verify_once, _write_bodies
from loadtests.svc import (
    DEFAULT_REDIS_URL,
    check_redis,
    delete_prefix,
    start_tokensvc,
    unique_prefix,
)

TARGETS = ("w1", "w2")
LABELS = {"w1": "tokensvc serve --workers 1", "w2": "tokensvc serve --workers 2"}


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests workers", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--hot", type=int, default=10, help="hot tokens (default 10)")
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="unrecorded seconds per target first"
    )
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    if not (
        0.5 <= args.duration <= 600 and 1 <= args.rounds <= 50 and 1 <= args.connections <= 10000
    ):
        parser.error("--duration in 0.5..600, --rounds in 1..50, --connections in 1..10000")

    check_redis(args.redis_url)
    gen = loadgen.find(args.loadgen, args.threads)
    note = loadavg_note()
    print(f"workers: load generator: {gen.describe()}" + (f"; {note}" if note else ""), flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="tokensvc-bench-workers-"))
    prefix = unique_prefix("workers")
    data_dir = workdir / "data"
    services = {}
    try:
        # The first one creates the database; the second starts once it answers.
        services["w1"] = start_tokensvc(
            "tokensvc-w1",
            workdir,
            redis_url=args.redis_url,
            prefix=prefix,
            port=free_port(),
            data_dir=data_dir,
            workers=1,
        )
        services["w1"].server.wait_healthy()
        port2 = free_port()
        while port2 == services["w1"].server.port:
            port2 = free_port()
        services["w2"] = start_tokensvc(
            "tokensvc-w2",
            workdir,
            redis_url=args.redis_url,
            prefix=prefix,
            port=port2,
            data_dir=data_dir,
            workers=2,
        )
        services["w2"].server.wait_healthy()
        for t in TARGETS:
            s = services[t].server
            print(f"workers: {LABELS[t]} on :{s.port} (pid {s.proc.pid})", flush=True)
        admin = _admin_token(services["w1"].env)
        hot, _ = asyncio.run(
            _mint(
                services["w1"].server.base,
                admin,
                [f"workers-hot-{i}" for i in range(args.hot)],
                120,
            )
        )
        for t in TARGETS:
            # Several calls, so that (most likely) every worker of w2 has verified once.
            for _ in range(4):
                answer = _verify_once(services[t].server.base, hot[0])
                if answer["status"] != 200:
                    raise RuntimeError(f"sanity check: {LABELS[t]} answered {answer}")
        bodies = workdir / "hot.jsonl"
        _write_bodies(bodies, hot)
        if args.warmup > 0:
            warm = argparse.Namespace(**{**vars(args), "duration": args.warmup})
            for t in TARGETS:
                _one_run(gen, services[t].server, bodies, warm, workdir, None)
        runs: dict[str, list[dict[str, Any]]] = {t: [] for t in TARGETS}
        for r in range(args.rounds):
            for t in TARGETS if r % 2 == 0 else tuple(reversed(TARGETS)):
                time.sleep(0.5)
                res = _one_run(gen, services[t].server, bodies, args, workdir, None)
                res["round"] = r
                runs[t].append(res)
                flag = f"  ERRORS {res['errors']}" if res["error_count"] else ""
                print(
                    f"workers: round {r + 1}/{args.rounds} {LABELS[t]}  {res['rps']:9,.0f} req/s  "
                    f"p50 {res['p50_ms']:6.2f} ms  p99 {res['p99_ms']:6.2f} ms  "
                    f"server CPU {res['server_cpu_share']:.2f} cores, {res['server_cpu_us_per_req']:.0f} µs/req{flag}",
                    flush=True,
                )
    finally:
        for svc in services.values():
            svc.server.stop()
        deleted = delete_prefix(args.redis_url, prefix)
        if args.keep:
            print(f"workers: kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    metrics = ("rps", "p50_ms", "p99_ms", "server_cpu_share", "server_cpu_us_per_req")
    data: dict[str, Any] = {
        "params": {k: v for k, v in vars(args).items() if k not in ("keep", "no_save")},
        "loadgen": {"kind": gen.kind, "version": gen.version, "threads": gen.threads},
        "machine": machine_info(),
        "redis": {"url": args.redis_url, "prefix": prefix, "keys_deleted": deleted},
        "runs": runs,
        "medians": {t: {m: median([x[m] for x in runs[t]]) for m in metrics} for t in TARGETS},
        "errors_total": {t: sum(x["error_count"] for x in runs[t]) for t in TARGETS},
    }
    m1, m2 = data["medians"]["w1"], data["medians"]["w2"]
    data["ratios"] = {
        "rps": ratio(m2["rps"], m1["rps"]),
        "p50": ratio(m2["p50_ms"], m1["p50_ms"]),
        "p99": ratio(m2["p99_ms"], m1["p99_ms"]),
        "server_cpu_share": ratio(m2["server_cpu_share"], m1["server_cpu_share"]),
        "rps_per_round": [
            ratio(a["rps"], b["rps"]) for a, b in zip(runs["w2"], runs["w1"], strict=True)
        ],
    }
    print()
    print(render(data), flush=True)
    if not args.no_save:
        print(f"results: {write_results('workers', data)}")
    return 1 if any(data["errors_total"].values()) else 0


def render(data: dict[str, Any]) -> str:
    p, q = data["params"], data["ratios"]
    rows = []
    for t in TARGETS:
        m = data["medians"][t]
        rows.append(
            [
                LABELS[t],
                fmt(m["rps"]),
                spread([x["rps"] for x in data["runs"][t]]),
                fmt(m["p50_ms"]),
                fmt(m["p99_ms"]),
                fmt(m["server_cpu_share"]),
                fmt(m["server_cpu_us_per_req"]),
                str(data["errors_total"][t]),
            ]
        )
    cpus = data["machine"].get("cpus")
    return "\n".join(
        [
            (
                f"workers: POST /v1/verify, hot tokens, wrk {p['connections']} connections; medians of "
                f"{p['rounds']} rounds × {p['duration']:g} s, order alternated"
            ),
            table(
                [
                    "target",
                    "req/s",
                    "req/s min–max",
                    "p50 ms",
                    "p99 ms",
                    "server CPU cores",
                    "µs CPU/req",
                    "errors",
                ],
                rows,
            ),
            "",
            table(
                ["2 workers / 1 worker", "req/s", "per round", "p50", "p99", "server CPU cores"],
                [
                    [
                        "ratio",
                        fmt_ratio(q["rps"]),
                        " ".join(f"{x:.2f}" for x in q["rps_per_round"]),
                        fmt_ratio(q["p50"]),
                        fmt_ratio(q["p99"]),
                        fmt_ratio(q["server_cpu_share"]),
                    ]
                ],
            ),
            "",
            (
                f"note: wrk runs on the same {cpus} cores as the workers: 2 workers can only use what wrk and the "
                "neighbours leave, so this ratio is a lower bound on scale-out, not its ceiling (server CPU cores "
                "shows how much the workers actually got)"
            ),
            "note: " + SHARED_MACHINE_NOTE.format(cpus=cpus),
        ]
    )
