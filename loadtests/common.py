"""Helpers shared by the benchmarks: statistics, tables, machine notes and the results files."""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import socket
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict

RESULTS_DIR = Path(__file__).resolve().parent / "results"

SHARED_MACHINE_NOTE = (
    "load generator, server(s) and this script share one {cpus}-core machine; numbers are "
    "relative (ratios against a baseline measured in the same run), not capacity figures"
)


class VerifyContext(TypedDict):
    """The request context the benchmarks verify tokens against (as keyword arguments too)."""

    operation: str
    resource: str
    audience: str


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def ratio(numerator: float, denominator: float) -> float:
    if not denominator or math.isnan(denominator):
        return float("nan")
    return numerator / denominator


def spread(values: Sequence[float]) -> str:
    """min–max of a series, for eyeballing how noisy the rounds were."""
    if not values:
        return "-"
    return f"{_num(min(values))}–{_num(max(values))}"


def _num(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def fmt(value: float, unit: str = "") -> str:
    return _num(value) + unit


def fmt_ratio(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}×"


def table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: set[int] | None = None
) -> str:
    """A plain-text table; columns in `right` (default: all but the first) are right-aligned."""
    if right is None:
        right = set(range(1, len(headers)))
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            out.append(cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]))
        return "  ".join(out).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_ports(n: int) -> list[int]:
    """`n` distinct TCP ports on 127.0.0.1 that are free right now (all bound at once, so no two
    are the same)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on, and how busy it was when we started."""
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "loadavg_at_start": _loadavg(),
    }
    try:
        import aiohttp

        info["aiohttp"] = aiohttp.__version__
    except ImportError:  # pragma: no cover
        pass
    try:
        import uvloop

        info["uvloop"] = getattr(uvloop, "__version__", "?")
    except ImportError:  # pragma: no cover
        pass
    return info


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not on every platform
        return None


def loadavg_note() -> str:
    load = _loadavg()
    if load is None:
        return ""
    cpus = os.cpu_count() or 1
    note = f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {cpus} CPUs"
    if load[0] > 0.5 * cpus:
        note += " — the machine is busy; expect noise, trust the ratios more than the absolutes"
    return note


def write_results(kind: str, data: dict[str, Any], results_dir: Path | None = None) -> Path:
    """Write `data` as results/<kind>-<UTC timestamp>.json (gitignored) and return the path."""
    directory = results_dir or RESULTS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = directory / f"{kind}-{stamp}.json"
    n = 1
    while path.exists() and n < 100:
        path = directory / f"{kind}-{stamp}-{n}.json"
        n += 1
    data = {"kind": kind, "written_at": datetime.now(UTC).isoformat(), **data}
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    return path


class Deadline:
    """A wall-clock budget for a loop: `while not deadline.passed: ...`."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    @property
    def passed(self) -> bool:
        return time.monotonic() >= self.end

    @property
    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text().split()
            out.extend(int(x) for x in text)
    except OSError:
        pass
    return out


def process_tree(pid: int, limit: int = 256) -> list[int]:
    """`pid` and its live descendants, parents first (bounded walk)."""
    out: list[int] = []
    todo = [pid]
    while todo and len(out) < limit:
        p = todo.pop(0)
        if p in out:
            continue
        out.append(p)
        todo.extend(_children(p))
    return out


def tree_cpu_seconds(pid: int, clk_tck: int | None = None) -> float:
    """User + system CPU of `pid` and all its live descendants (bounded walk)."""
    tck = clk_tck or os.sysconf("SC_CLK_TCK")
    total = 0.0
    todo: list[int] = [pid]
    seen: set[int] = set()
    while todo and len(seen) < 256:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            if p == pid:
                return float("nan")
            continue
        total += (int(fields[11]) + int(fields[12])) / tck
        todo.extend(_children(p))
    return total


def pinned(cmd: list[str], cpus: set[int] | None) -> list[str]:
    """`cmd` run on the given CPUs (through taskset), or unchanged when `cpus` is None."""
    if not cpus:
        return cmd
    taskset = shutil.which("taskset")
    if taskset is None:
        raise RuntimeError("--pin needs `taskset` (util-linux)")
    return [taskset, "-c", ",".join(str(c) for c in sorted(cpus)), *cmd]
