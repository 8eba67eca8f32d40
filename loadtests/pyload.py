"""A small closed-loop HTTP/1.1 load generator in Python, the fallback when wrk is not available.

C keep-alive connections on asyncio streams (uvloop if present), each sending pre-built POST
requests one after another and reading the answer (Content-Length framed, as aiohttp answers);
bodies come from a file, one per line, cycled in order across all connections from `--offset`.
Prints one JSON object in the shape `loadtests.loadgen` reads from wrk:

    python -m loadtests.pyload --url http://127.0.0.1:8081/v1/verify --bodies FILE \
        --duration 10 --connections 64

It is much slower than wrk: in Python the load generator, not the server, is likely the
bottleneck, which compresses every ratio towards 1. Treat its figures as a smoke test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from urllib.parse import urlsplit

MAX_REQUESTS = 50_000_000  # a bound on the loop besides the duration


def _build_requests(host: str, port: int, path: str, bodies: list[bytes]) -> list[bytes]:
    head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
    return [
        (head + f"Content-Length: {len(body)}\r\n\r\n").encode("ascii") + body for body in bodies
    ]


async def _worker(
    host: str,
    port: int,
    requests: list[bytes],
    state: dict[str, int],
    latencies: list[float],
    errors: dict[str, int],
    stop_at: float,
) -> None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
    except (TimeoutError, OSError):
        errors["connect"] += 1
        return
    n = len(requests)
    try:
        while time.monotonic() < stop_at and len(latencies) < MAX_REQUESTS:
            index = state["sent"]
            state["sent"] = index + 1
            start = time.perf_counter()
            writer.write(requests[index % n])
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            except TimeoutError:
                errors["timeout"] += 1
                return
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
                errors["read"] += 1
                return
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
                    break
            try:
                await reader.readexactly(length)
            except (asyncio.IncompleteReadError, OSError):
                errors["read"] += 1
                return
            latencies.append(time.perf_counter() - start)
            if status >= 400:
                errors["status"] += 1
    finally:
        writer.close()


async def _run(
    url: str, bodies: list[bytes], duration: float, connections: int, offset: int = 0
) -> dict[str, object]:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    requests = _build_requests(host, port, parts.path or "/", bodies)
    state = {"sent": offset % len(requests)}
    latencies: list[float] = []
    errors = {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}
    start = time.monotonic()
    stop_at = start + duration
    await asyncio.gather(
        *(
            _worker(host, port, requests, state, latencies, errors, stop_at)
            for _ in range(connections)
        )
    )
    elapsed = time.monotonic() - start
    latencies.sort()

    def pct(p: float) -> float:
        if not latencies:
            return float("nan")
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1e6

    return {
        "requests": len(latencies),
        "duration_us": elapsed * 1e6,
        "errors": errors,
        "latency_us": {
            "p50": pct(50),
            "p90": pct(90),
            "p99": pct(99),
            "p999": pct(99.9),
            "mean": (sum(latencies) / len(latencies) * 1e6) if latencies else float("nan"),
            "max": latencies[-1] * 1e6 if latencies else float("nan"),
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.pyload", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--url", required=True)
    parser.add_argument("--bodies", required=True, help="file with one request body per line")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--offset", type=int, default=0, help="start at this body (0-based)")
    args = parser.parse_args(argv)
    with open(args.bodies, "rb") as f:
        bodies = [line.rstrip(b"\n") for line in f if line.strip()]
    if not bodies:
        parser.error("no bodies in " + args.bodies)
    try:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover
        loop = asyncio.new_event_loop()
    try:
        result = loop.run_until_complete(
            _run(args.url, bodies, args.duration, args.connections, args.offset)
        )
    finally:
        loop.close()
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
