"""`python -m loadtests report`: one summary of the latest results files, and a latency plot.

Reads the newest `results/<kind>-*.json` of each kind (http, instructions, micro, storm, workers,
memory, locust), prints every ratio against its in-run baseline (the bare aiohttp handler, the bare
HMAC chain, the no-storm run, one worker), and writes `results/latency.png`: p50/p99 and req/s per
target of the latest http, storm and workers runs (matplotlib, an optional dependency).
Each ratio comes from one run; ratios from different commands were measured at different times.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from loadtests.common import RESULTS_DIR, fmt, fmt_ratio, table

KINDS = ("http", "instructions", "micro", "storm", "workers", "memory", "locust")


def latest(kind: str, directory: Path) -> tuple[Path, dict[str, Any]] | None:
    files = sorted(directory.glob(f"{kind}-*.json"), key=lambda p: (p.stat().st_mtime, p.name))
    for path in reversed(files):
        try:
            return path, json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # a half-written or foreign file: try the previous one
    return None


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def summary_rows(found: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows: list[list[str]] = []
    nan = float("nan")
    if "http" in found:
        q = found["http"]["ratios"]
        rows += [
            [
                "http",
                "hot verify req/s / bare",
                fmt_ratio(q["hot"]["rps"]),
                "≥ 0.90",
                _verdict(q["hot"]["rps"] >= 0.90),
            ],
            [
                "http",
                "hot verify p99 / bare p99",
                fmt_ratio(q["hot"]["p99"]),
                "≤ 1.30",
                _verdict(q["hot"]["p99"] <= 1.30),
            ],
            [
                "http",
                "hot server CPU/req / bare",
                fmt_ratio(q["hot"]["server_cpu_per_req"]),
                "",
                "",
            ],
            [
                "http",
                "distinct verify req/s / bare",
                fmt_ratio(q["distinct"]["rps"]),
                "≥ 0.75",
                _verdict(q["distinct"]["rps"] >= 0.75),
            ],
            ["http", "distinct verify p99 / bare p99", fmt_ratio(q["distinct"]["p99"]), "", ""],
        ]
        # Issue 17: against the Go verify-peer and nginx of the same run (older files: none).
        for g in found["http"].get("peer_goals", []):
            rows.append(
                [
                    "http",
                    f"{g['ratio']} {g['metric']}",
                    fmt_ratio(g["value"]),
                    g.get("target", ""),
                    "not measured" if g["met"] is None else _verdict(bool(g["met"])),
                ]
            )
    if "instructions" in found:
        i = found["instructions"]
        names = {"hot": "hot", "nocache": "distinct, chain cache off"}
        per_request = i["instructions_per_request"]
        for target, q in i["ratios"].items():
            name = names.get(target, target)
            counts = f"{per_request[target]:,.0f} vs {per_request['bare']:,.0f}"
            rows += [
                [
                    "instructions",
                    f"{name} verify server instr/req / bare (callgrind)",
                    fmt_ratio(q["instructions_per_request"]),
                    "",
                    counts,
                ],
                [
                    "instructions",
                    f"{name} verify req/s / bare, estimated as bare/tokensvc instr",
                    f"≈ {q['expected_throughput_estimate']:.2f}",
                    "(estimate)",
                    "",
                ],
            ]
    if "micro" in found:
        res = found["micro"]["results"].get("3") or next(iter(found["micro"]["results"].values()))
        med = res["us_per_op_median"]
        of = res["ratios"].get("ours / floor", nan)
        rows += [
            [
                "micro",
                f"uncached verify / HMAC floor ({res['caveats']} caveats)",
                fmt_ratio(of),
                "≤ 1.50",
                _verdict(of <= 1.5),
            ],
            [
                "micro",
                "chain-cache hit (µs)",
                fmt(med.get("ours_hit", nan)) + " µs",
                "< 3 µs",
                _verdict(med.get("ours_hit", nan) < 3),
            ],
            [
                "micro",
                "pymacaroons / ours",
                fmt_ratio(res["ratios"].get("pymacaroons / ours", nan)),
                "≥ 5",
                "",
            ],
        ]
    if "storm" in found:
        s = found["storm"]
        q = s["ratios"]
        rows += [
            [
                "storm",
                "logins/s alone (argon2 OWASP)",
                f"{s['login_alone']['logins_per_s']:.1f}/s",
                "",
                "",
            ],
            [
                "storm",
                "verify req/s storm / no storm",
                fmt_ratio(q["rps"]),
                "≥ 0.60",
                _verdict(q["rps"] >= 0.60),
            ],
            [
                "storm",
                "verify p99 storm / no storm",
                fmt_ratio(q["p99"]),
                "≤ 2.00",
                _verdict(q["p99"] <= 2.0),
            ],
        ]
    if "workers" in found:
        q = found["workers"]["ratios"]
        rows += [
            ["workers", "verify req/s 2 workers / 1", fmt_ratio(q["rps"]), "(report)", ""],
            ["workers", "server CPU 2 workers / 1", fmt_ratio(q["server_cpu_share"]), "", ""],
        ]
    if "memory" in found and found["memory"].get("mode") == "http":
        m = found["memory"]
        for pid, q in m["processes"].items():
            rows.append(
                [
                    "memory",
                    f"RSS max of {m['labels'].get(pid, pid)}, {m['tokens']:,} tokens over HTTP",
                    f"{q['max_kib'] / 1024:.0f} MiB",
                    "≤ 150 MB",
                    _verdict(bool(q["within_goal"])),
                ]
            )
    elif "memory" in found:
        m = found["memory"]
        growth = m.get("growth_after_cache_full_kib")
        rows += [
            [
                "memory",
                f"RSS start → max → end, {m['tokens']:,} distinct tokens",
                f"{m['rss_start_kib'] / 1024:.0f} → {m['rss_max_kib'] / 1024:.0f} → {m['rss_end_kib'] / 1024:.0f} MiB",
                "bounded",
                "",
            ],
            [
                "memory",
                f"RSS growth after the cache filled ({m.get('tokens_after_cache_full', 0):,} tokens)",
                "n/a" if growth is None else f"{growth / 1024:.1f} MiB",
                "≈ 0",
                "",
            ],
        ]
    if "locust" in found:
        for e in found["locust"]["endpoints"]:
            if e["name"] == "Aggregated":
                rows.append(
                    [
                        "locust",
                        "mix: req/s, p50/p99 ms",
                        f"{fmt(e['rps'])}/s, {fmt(e['p50_ms'])}/{fmt(e['p99_ms'])}",
                        "",
                        f"{e['failures']} failures",
                    ]
                )
    return rows


def latency_points(found: dict[str, dict[str, Any]]) -> list[tuple[str, float, float, float]]:
    """(label, p50 ms, p99 ms, req/s) per target of the latest http, storm and workers runs."""
    points = []
    names = {
        ("http", "bare"): "http: bare aiohttp",
        ("http", "hot"): "http: verify hot",
        ("http", "distinct"): "http: verify distinct",
        ("http", "go"): "http: Go verify-peer",
        ("http", "go-bare"): "http: Go verify-peer -bare",
        ("http", "nginx"): "http: nginx return 200",
        ("storm", "quiet"): "storm: verify, no storm",
        ("storm", "storm"): "storm: verify, login storm",
        ("workers", "w1"): "workers: 1 worker",
        ("workers", "w2"): "workers: 2 workers",
    }
    for (kind, target), label in names.items():
        m = found.get(kind, {}).get("medians", {}).get(target)
        if m:
            points.append((label, m["p50_ms"], m["p99_ms"], m["rps"]))
    return points


def plot(points: list[tuple[str, float, float, float]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError(
            "report: the latency plot needs matplotlib, an optional dependency: "
            ".venv/bin/pip install matplotlib (or pass --no-plot)"
        ) from exc
    labels = [p[0] for p in points]
    y = list(range(len(points)))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 0.55 * len(points) + 2.2), sharey=True)
    h = 0.38
    ax1.barh([i - h / 2 for i in y], [p[1] for p in points], height=h, label="p50", color="#4C72B0")
    ax1.barh([i + h / 2 for i in y], [p[2] for p in points], height=h, label="p99", color="#DD8452")
    for i, p in enumerate(points):
        ax1.text(p[2], i + h / 2, f" {p[2]:.1f}", va="center", fontsize=8)
        ax1.text(p[1], i - h / 2, f" {p[1]:.1f}", va="center", fontsize=8)
    ax1.set_xscale("log")
    ax1.set_xlim(right=max(p[2] for p in points) * 4)  # room for the value labels
    ax1.set_xlabel("latency, ms (log scale; median over rounds of wrk's percentiles)")
    ax1.set_yticks(y, labels)
    ax1.invert_yaxis()
    ax1.legend(loc="lower right")
    ax1.grid(axis="x", alpha=0.3)
    ax2.barh(y, [p[3] for p in points], height=0.6, color="#55A868")
    for i, p in enumerate(points):
        ax2.text(p[3], i, f" {p[3]:,.0f}", va="center", fontsize=8)
    ax2.set_xlim(right=max(p[3] for p in points) * 1.15)
    ax2.set_xlabel("req/s (median over rounds)")
    ax2.grid(axis="x", alpha=0.3)
    fig.suptitle(
        "tokensvc POST /v1/verify, closed loop (wrk); latest http / storm / workers results — "
        "shared 2-core machine, compare within a group",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests report", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--no-plot", action="store_true", help="do not write latency.png")
    args = parser.parse_args(argv)
    found: dict[str, dict[str, Any]] = {}
    sources = []
    for kind in KINDS:
        hit = latest(kind, args.results_dir)
        if hit is None:
            sources.append([kind, "(none: run `python -m loadtests " + kind + "`)", ""])
            continue
        path, data = hit
        found[kind] = data
        sources.append([kind, path.name, data.get("written_at", "")[:19]])
    if not found:
        print(
            f"report: no results in {args.results_dir}; run some benchmarks first", file=sys.stderr
        )
        return 1
    print(table(["kind", "latest results file", "written (UTC)"], sources, right=set()))
    print()
    print(
        table(
            ["from", "figure (each a ratio within one run)", "value", "target", "verdict"],
            summary_rows(found),
            right={2},
        )
    )
    status = 0
    if not args.no_plot:
        points = latency_points(found)
        if not points:
            print("\nreport: no http/storm/workers results: no plot")
        else:
            out = args.results_dir / "latency.png"
            try:
                plot(points, out)
                print(f"\nplot: {out}")
            except RuntimeError as exc:
                print(f"\n{exc}", file=sys.stderr)
                status = 1
    print(
        "note: figures from a shared, noisy machine; ratios are within one run each — take final "
        "figures on a quiet machine"
    )
    return status
