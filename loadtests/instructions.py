"""Server-side instructions per POST /v1/verify, counted by callgrind: tokensvc against bare aiohttp.

A noise-free complement to `http`: wall-clock figures on a shared 2-core machine move by ±30 %
between runs, while valgrind's callgrind counts the instructions a process executes the same way
every time. For each target the server (`loadtests.instrserver`: the bare handler of
`loadtests.bare`, or tokensvc's `create_app` with its verify listener, the port services send
/v1/verify to) runs under `valgrind --tool=callgrind` with PYTHONHASHSEED=0 on free loopback
ports; this process is the client (not under valgrind): one
keep-alive connection over a plain blocking socket, N sequential requests with a fixed body, each
response read in full, then a GET on the server's stop route so it exits and callgrind reports
its total. Each target runs twice, with N = 300 and N = 1300 (`--requests`), and

    instructions per request = (total(1300) − total(300)) / 1000

so start-up, the first requests, shutdown and everything else that does not grow with N cancel.

Targets: `bare`; `hot` — tokensvc verifying one token again and again (chain cache on: the
service's default); with `--cache-off`, also `nocache` — tokensvc with
TOKENSVC_VERIFY_CACHE_ENTRIES=0 fed distinct tokens, each verified once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtests.common import (
    fmt_ratio,
    free_port,
    free_ports,
    loadavg_note,
    machine_info,
    ratio,
    table,
    write_results,
)
from loadtests.httpbench import (
    CONTEXT,
    ROOT,
    Server,
    _admin_token,
    _mint,
    _start,
    _tokensvc_bin,
    _verify_once,
)
from loadtests.instrserver import STOP_PATH
from loadtests.svc import base_env

# Time-based background work of tokensvc, stretched to an hour: under callgrind the service runs
# ~50× slower than at full speed, so a poll every few seconds would run ~50× as often per request
# as it really does. (The subject-generation refresh is not configurable: instrserver patches it.)
QUIET_BACKGROUND = {
    "TOKENSVC_REVOCATION_REFRESH_INTERVAL": "1h",
    "TOKENSVC_USAGE_FLUSH_INTERVAL": "1h",
    "TOKENSVC_KEY_MAINTENANCE_INTERVAL": "1h",
}
TARGETS = ("bare", "hot", "nocache")
LABELS = {
    "bare": "bare aiohttp JSON handler",
    "hot": "tokensvc /v1/verify, hot token (chain cache on)",
    "nocache": "tokensvc /v1/verify, distinct tokens (chain cache off)",
}
COLLECTED = re.compile(r"Collected\s*:\s*([\d,]+)")
RUN_TIMEOUT = 900.0  # one valgrind run; expect 20–60 s


@dataclass
class Run:
    target: str
    requests: int
    instructions: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "instructions": self.instructions,
            "wall_seconds": round(self.seconds, 2),
        }


# ---- the client -----------------------------------------------------------------------------------


def _request(body: bytes) -> bytes:
    return (
        b"POST /v1/verify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


def _read_response(stream: Any) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 response with a Content-Length."""
    status_line = stream.readline(65536)
    if not status_line:
        raise RuntimeError("the server closed the connection")
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
        raise RuntimeError(f"not an HTTP response: {status_line[:200]!r}")
    status = int(parts[1])
    length: int | None = None
    while True:
        line = stream.readline(65536)
        if not line:
            raise RuntimeError("the server closed the connection in the headers")
        if line in (b"\r\n", b"\n"):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length is None:
        raise RuntimeError(f"a response without Content-Length ({status_line!r})")
    body = stream.read(length)
    if len(body) != length:
        raise RuntimeError("the server closed the connection in a body")
    return status, body


def _connect(port: int, proc: subprocess.Popen[bytes], seconds: float) -> socket.socket:
    """Connect once the server listens (start-up under callgrind takes a while)."""
    deadline = time.monotonic() + seconds
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before listening")
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=2)
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not listen within {seconds:.0f}s") from None
            time.sleep(0.2)
            continue
        sock.settimeout(120)  # one request under callgrind takes milliseconds; stalls are bugs
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


def drive(
    port: int, stop_port: int, proc: subprocess.Popen[bytes], bodies: list[bytes], n: int
) -> None:
    """Send n requests (bodies cycled) to `port` one after another on one connection, then stop
    the server through its app on `stop_port` (tokensvc's verify listener answers /v1/verify
    only; for the bare handler the two are one port)."""
    requests = [_request(b) for b in bodies]
    with _connect(port, proc, RUN_TIMEOUT) as sock, sock.makefile("rb") as stream:
        for i in range(n):
            sock.sendall(requests[i % len(requests)])
            status, body = _read_response(stream)
            if status != 200:
                raise RuntimeError(f"request {i + 1} answered {status}: {body[:300]!r}")
            if i == 0 and json.loads(body).get("valid") is not True:
                raise RuntimeError(f"the first request was not answered valid: {body[:300]!r}")
    with _connect(stop_port, proc, RUN_TIMEOUT) as sock, sock.makefile("rb") as stream:
        sock.sendall(f"GET {STOP_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        status, body = _read_response(stream)
        if status != 200:
            raise RuntimeError(f"the stop request answered {status}: {body[:300]!r}")


# ---- one callgrind run ----------------------------------------------------------------------------


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def measure(
    valgrind: str,
    target: str,
    n: int,
    bodies: list[bytes],
    env: dict[str, str],
    workdir: Path,
) -> Run:
    port, verify_port = free_ports(2)
    stem = f"{target}-{n}"
    vg_log = workdir / f"{stem}.valgrind.log"
    cmd = [
        valgrind,
        "--tool=callgrind",
        f"--callgrind-out-file={workdir / f'{stem}.callgrind.out'}",
        f"--log-file={vg_log}",
        sys.executable,
        "-m",
        "loadtests.instrserver",
        "--target",
        "bare" if target == "bare" else "tokensvc",
        "--port",
        str(port),
    ]
    if target != "bare":
        cmd += ["--verify-port", str(verify_port)]
    server_log = workdir / f"{stem}.server.log"
    start = time.monotonic()
    with open(server_log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            env=dict(env, PYTHONHASHSEED="0"),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
        )
    try:
        drive(port if target == "bare" else verify_port, port, proc, bodies, n)
        proc.wait(RUN_TIMEOUT)
    except (RuntimeError, OSError, subprocess.TimeoutExpired, ValueError) as exc:
        raise RuntimeError(
            f"{target}, N={n}: {exc}\nserver log:\n{_tail(server_log)}\nvalgrind log:\n{_tail(vg_log)}"
        ) from exc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        raise RuntimeError(
            f"{target}, N={n}: the server exited with {proc.returncode}\n"
            f"server log:\n{_tail(server_log)}\nvalgrind log:\n{_tail(vg_log)}"
        )
    found = COLLECTED.findall(vg_log.read_text(errors="replace"))
    if not found:
        raise RuntimeError(f"no 'Collected' line in {vg_log}:\n{_tail(vg_log)}")
    return Run(target, n, int(found[-1].replace(",", "")), seconds)


# ---- tokens ---------------------------------------------------------------------------------------


def _body(token: str) -> bytes:
    return json.dumps({"token": token, "context": CONTEXT}, separators=(",", ":")).encode()


def mint_tokens(svc_env: dict[str, str], workdir: Path, distinct: int) -> tuple[str, list[str]]:
    """Start `tokensvc serve` (not under valgrind) on the data directory, mint through the API as
    `http` does, check one of each verifies, stop it. One hot token and `distinct` others."""
    port = free_port()
    server: Server = _start(
        "tokensvc-mint",
        [_tokensvc_bin(), "serve"],
        dict(svc_env, TOKENSVC_PORT=str(port), TOKENSVC_HOST="127.0.0.1"),
        port,
        workdir,
        None,
    )
    try:
        server.wait_healthy()
        admin = _admin_token(dict(svc_env))
        hot = asyncio.run(_mint(server.base, admin, ["bench-hot-0"], 120))[0][0]
        others: list[str] = []
        if distinct:
            subjects = [f"bench-{i:07d}" for i in range(distinct)]
            others, _ = asyncio.run(_mint(server.base, admin, subjects, 120 + distinct / 20))
        for label, token in (("hot", hot), *((("distinct", others[-1]),) if others else ())):
            answer = _verify_once(server.base, token)
            body = answer["body"]
            if (
                answer["status"] != 200
                or not isinstance(body, dict)
                or body.get("valid") is not True
            ):
                raise RuntimeError(f"sanity check: verifying a {label} token gave {answer}")
    finally:
        server.stop()
    return hot, others


# ---- the benchmark --------------------------------------------------------------------------------


def _parse_requests(text: str) -> tuple[int, int]:
    try:
        small, large = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("expected SMALL,LARGE, e.g. 300,1300") from None
    if not (1 <= small < large <= 1_000_000):
        raise argparse.ArgumentTypeError("need 1 ≤ SMALL < LARGE ≤ 1000000")
    return small, large


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests instructions", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--requests",
        type=_parse_requests,
        default=(300, 1300),
        metavar="SMALL,LARGE",
        help="requests in the two runs per target (default 300,1300)",
    )
    parser.add_argument(
        "--cache-off",
        action="store_true",
        help="also tokensvc with TOKENSVC_VERIFY_CACHE_ENTRIES=0 and distinct tokens (2 more runs)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary directory (callgrind.out files for callgrind_annotate, logs)",
    )
    parser.add_argument("--no-save", action="store_true", help="do not write a results file")
    args = parser.parse_args(argv)
    small, large = args.requests

    valgrind = shutil.which("valgrind")
    if valgrind is None:
        print(
            "instructions: valgrind is not installed; install it with `apt-get install valgrind` "
            "(Debian/Ubuntu) and run again",
            file=sys.stderr,
        )
        return 2
    version = subprocess.run(
        [valgrind, "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    targets = [t for t in TARGETS if t != "nocache" or args.cache_off]
    note = loadavg_note()
    print(
        f"instructions: {version}, {len(targets)} targets × N={small},{large} "
        "(each run takes ~20–60 s under callgrind)" + (f"; {note}" if note else ""),
        flush=True,
    )

    workdir = Path(tempfile.mkdtemp(prefix="tokensvc-bench-instr-"))
    runs: dict[str, dict[int, Run]] = {t: {} for t in targets}
    try:
        env = base_env()
        svc_env = dict(env, TOKENSVC_DATA_DIR=str(workdir / "data"))
        print("instructions: minting tokens through a tokensvc (not under valgrind)…", flush=True)
        hot, distinct = mint_tokens(svc_env, workdir, large if args.cache_off else 0)
        plan: dict[str, tuple[dict[str, str], list[bytes]]] = {
            "bare": (env, [_body(hot)]),
            "hot": (dict(svc_env, **QUIET_BACKGROUND), [_body(hot)]),
            "nocache": (
                dict(svc_env, **QUIET_BACKGROUND, TOKENSVC_VERIFY_CACHE_ENTRIES="0"),
                [_body(t) for t in distinct],
            ),
        }
        for target in targets:
            target_env, bodies = plan[target]
            for n in (small, large):
                res = measure(valgrind, target, n, bodies, target_env, workdir)
                runs[target][n] = res
                print(
                    f"instructions: {target:8s} N={n:<6d} {res.instructions:>16,} instructions "
                    f"({res.seconds:.0f} s)",
                    flush=True,
                )
    finally:
        if args.keep:
            print(f"instructions: kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    per_request = {
        t: (runs[t][large].instructions - runs[t][small].instructions) / (large - small)
        for t in targets
    }
    data: dict[str, Any] = {
        "params": {"requests": [small, large], "cache_off": args.cache_off},
        "valgrind": version,
        "machine": machine_info(),
        "runs": {t: {str(n): r.as_dict() for n, r in runs[t].items()} for t in targets},
        "instructions_per_request": per_request,
        "ratios": {
            t: {
                "instructions_per_request": ratio(per_request[t], per_request["bare"]),
                "expected_throughput_estimate": ratio(per_request["bare"], per_request[t]),
            }
            for t in targets
            if t != "bare"
        },
    }
    print()
    print(render(data), flush=True)
    if not args.no_save:
        path = write_results("instructions", data)
        print(f"results: {path}")
    return 0


NOTES = [
    (
        "server process only (the client is not under valgrind), user-space instructions: kernel "
        "time (the socket syscalls, about the same per request for both servers) is not counted"
    ),
    (
        "instructions are not time: cache misses and instructions per cycle differ between the "
        "two, so the throughput ratio is an estimate; the http command measures the real one"
    ),
    (
        "time-based background work runs ~50× more often per request under callgrind: tokensvc's "
        "revocation poll, usage flush and key maintenance are set to 1h through the environment, "
        "its subject-generation refresh (2 s) to 1h in the benchmark's server only"
    ),
    (
        "the 1 s access-log/metrics flush is kept as is: it is real per-request work (writing the "
        "buffered access lines — logging goes to /dev/null — and folding the request tallies into "
        "the metrics); only its small fixed cost per tick is counted more often than at full speed"
    ),
]


def render(data: dict[str, Any]) -> str:
    small, large = data["params"]["requests"]
    per_request = data["instructions_per_request"]
    rows = []
    for t, by_n in data["runs"].items():
        rows.append(
            [
                LABELS[t],
                f"{by_n[str(small)]['instructions']:,}",
                f"{by_n[str(large)]['instructions']:,}",
                f"{per_request[t]:,.0f}",
            ]
        )
    ratio_rows = [
        [
            LABELS[t].replace("tokensvc /v1/verify, ", ""),
            fmt_ratio(q["instructions_per_request"]),
            f"≈ {q['expected_throughput_estimate']:.2f}",
        ]
        for t, q in data["ratios"].items()
    ]
    lines = [
        (
            f"instructions: server-side instructions per POST /v1/verify (callgrind, "
            f"PYTHONHASHSEED=0), one keep-alive connection, sequential requests; "
            f"instr/req = (total(N={large}) − total(N={small})) / {large - small:,}"
        ),
        table(
            ["target", f"total, N={small}", f"total, N={large}", "instr/req"],
            rows,
        ),
        "",
        table(
            [
                "tokensvc / bare",
                "instr/req ratio",
                "expected throughput ratio ≈ bare/tokensvc (estimate)",
            ],
            ratio_rows,
        ),
        "",
        *(f"note: {n}" for n in NOTES),
    ]
    return "\n".join(lines)
