"""HTTP benchmark: /v1/verify of a running tokensvc against a bare aiohttp JSON handler.

Starts `tokensvc serve` (embedded SQLite in a temporary data directory, uvloop, one process) and
`loadtests.bare` (the same aiohttp + uvloop, access log off, a handler that only parses the JSON
body) on free loopback ports, mints tokens through the admin API, then alternates closed-loop runs
of the load generator against:

- `bare`: the bare handler, fed the hot-set bodies (it does not look at the token);
- `hot`: tokensvc with a hot set of a few tokens cycled;
- `distinct`: tokensvc with N distinct tokens (each its own subject), sent in order across all
  distinct runs, so each token is verified once until all N have been used.

and, beside them, peers (loadtests.peers; each optional, reported as missing when it cannot be
found or built): `go` (the Go verify-peer verifying distinct tokens it minted, no cache),
`go-bare` (its -bare mode) and `nginx` (`return 200`, one worker).

tokensvc's load goes to its verify listener (TOKENSVC_VERIFY_PORT, a free port given to it) when
that answers, else (a tokensvc without one, or --app-port-verify) to /v1/verify on the app port.
Servers run pinned to CPU 0 and the load generator to CPU 1 (on 2+ CPUs; --no-pin to not).

The order of the targets is reversed every other round, so drift on a noisy machine hits them all.
Reported: medians across rounds of req/s, p50 and p99 latency and server CPU time per request,
ratios tokensvc / bare and tokensvc / each peer of those medians, and issue 17's goals.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtests import loadgen, peers
from loadtests.common import (
    SHARED_MACHINE_NOTE,
    Deadline,
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
    tree_cpu_seconds,
    write_results,
)

ROOT = Path(__file__).resolve().parent.parent
CONTEXT: VerifyContext = {"operation": "read", "resource": "/docs/1", "audience": "files"}
MINT_BODY = {
    "ttl": "1h",
    "operations": ["read", "write"],
    "audience": ["files"],
    "resources": ["/docs/*"],
}
MINT_CONCURRENCY = 16
TARGETS = ("bare", "hot", "distinct")


def _tokensvc_bin() -> str:
    candidate = Path(sys.executable).with_name("tokensvc")
    if candidate.exists():
        return str(candidate)
    found = shutil.which("tokensvc")
    if found is None:
        raise SystemExit(
            "http: the `tokensvc` command is not installed (pip install -e . in the venv)"
        )
    return found


# ---- processes ------------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    # tokensvc's verify listener (TOKENSVC_VERIFY_PORT), once it answered; None: the app port.
    verify_port: int | None = None
    _clk_tck: int = field(default_factory=lambda: os.sysconf("SC_CLK_TCK"))

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def verify_url(self) -> str:
        """Where the load goes: the verify listener when it answers, else the app port."""
        port = self.verify_port or self.port
        return f"http://127.0.0.1:{port}/v1/verify"

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process (all its threads) and its children so far
        (nginx's worker, a tokensvc verify process)."""
        return tree_cpu_seconds(self.proc.pid, self._clk_tck)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def wait_healthy(self, seconds: float = 60.0) -> None:
        deadline = Deadline(seconds)
        last = ""
        while not deadline.passed:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode} before answering /healthz; "
                    f"its log:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.base + "/healthz", timeout=2) as resp:
                    if resp.status == 200:
                        return
                    last = f"HTTP {resp.status}"
            except (urllib.error.URLError, OSError) as exc:
                last = str(exc)
            time.sleep(0.2)
        raise RuntimeError(
            f"{self.name} did not answer /healthz in {seconds:.0f}s ({last}); log:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _start(
    name: str, cmd: list[str], env: dict[str, str], port: int, workdir: Path, cpus: set[int] | None
) -> Server:
    log = workdir / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            pinned(cmd, cpus),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
        )
    return Server(name, proc, port, log)


def _answers_verify(port: int) -> bool:
    """True when something on `port` answers POST /v1/verify with any HTTP status (an empty
    object is a 4xx: the listener only answers that route, it has no /healthz)."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/verify",
        data=b"{}",
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False


VERIFY_PORT_WAIT_S = 10.0


def use_verify_ports(
    asked: list[tuple[Server, int]], *, app_port: bool = False, seconds: float = VERIFY_PORT_WAIT_S
) -> list[str]:
    """Point each (healthy) server's load at the verify listener it was asked to open.

    A tokensvc that predates TOKENSVC_VERIFY_PORT ignores it: when the port does not answer
    within `seconds` (one deadline for all), that server's load stays on its app port. The notes
    (one per server) say which port each target got.
    """
    notes: list[str] = []
    deadline = Deadline(seconds)
    for server, port in asked:
        if app_port:
            notes.append(
                f"{server.name}: /v1/verify on the app port :{server.port} (--app-port-verify)"
            )
            continue
        while not _answers_verify(port) and not deadline.passed:
            time.sleep(0.2)
        if _answers_verify(port):
            server.verify_port = port
            notes.append(f"{server.name}: /v1/verify on its verify listener :{port}")
        else:
            notes.append(
                f"{server.name}: no verify listener on :{port} within {seconds:g} s (this tokensvc "
                f"ignores TOKENSVC_VERIFY_PORT?): /v1/verify on the app port :{server.port} instead"
            )
    return notes


# ---- tokens ---------------------------------------------------------------------------------------


def _admin_token(env: dict[str, str]) -> str:
    """An admin token from the break-glass door, which makes one only for an enabled admin
    user: on a data directory no server has started on yet, the user is made first."""
    add = [_tokensvc_bin(), "user", "add", "admin", "--admin", "--local", "--password-stdin"]
    password = env.get("TOKENSVC_ADMIN_PASSWORD") or secrets.token_urlsafe(18)
    added = subprocess.run(
        add, env=env, input=password + "\n", capture_output=True, text=True, timeout=120,
        cwd=ROOT, check=False,
    )  # fmt: skip
    if added.returncode != 0 and "already exists" not in added.stderr:
        raise RuntimeError(f"`tokensvc user add admin` failed: {added.stderr[-2000:]}")
    cmd = [
        _tokensvc_bin(),
        "token",
        "mint",
        "--local",
        "--admin",
        "--subject",
        "admin",
        "--ttl",
        "1h",
        "--json",
    ]
    proc = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=120, cwd=ROOT, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"`{' '.join(cmd[1:])}` failed ({proc.returncode}): {proc.stderr[-2000:]}"
        )
    try:
        return str(json.loads(proc.stdout)["token"])
    except (ValueError, KeyError) as exc:
        raise RuntimeError(
            f"unexpected output from `tokensvc token mint`: {proc.stdout[:500]!r}"
        ) from exc


async def _mint(
    base: str, admin: str, subjects: list[str], seconds: float
) -> tuple[list[str], float]:
    """Mint one token per subject through POST /v1/tokens; the tokens and the mint rate."""
    import aiohttp

    tokens: list[str | None] = [None] * len(subjects)
    deadline = Deadline(seconds)
    next_index = 0
    done = 0
    last_report = time.monotonic()
    start = time.monotonic()
    headers = {"Authorization": f"Bearer {admin}"}

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal next_index, done, last_report
        while next_index < len(subjects):
            if deadline.passed:
                raise RuntimeError(
                    f"minting took longer than {seconds:.0f}s ({done}/{len(subjects)} done)"
                )
            i = next_index
            next_index += 1
            async with session.post(
                base + "/v1/tokens", json={"subject": subjects[i], **MINT_BODY}, headers=headers
            ) as resp:
                text = await resp.text()
                if resp.status != 201:
                    raise RuntimeError(f"POST /v1/tokens answered {resp.status}: {text[:500]}")
                tokens[i] = json.loads(text)["token"]
            done += 1
            if len(subjects) >= 2000 and time.monotonic() - last_report > 5:
                last_report = time.monotonic()
                rate = done / (last_report - start)
                print(f"http:   minted {done:,}/{len(subjects):,} ({rate:,.0f}/s)", flush=True)

    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(MINT_CONCURRENCY)))
    elapsed = time.monotonic() - start
    return [t for t in tokens if t is not None], len(subjects) / elapsed if elapsed else float(
        "nan"
    )


def _verify_once(target: str | Server, token: str) -> dict[str, Any]:
    """POST /v1/verify once to a server (its verify_url) or a base URL (+ /v1/verify)."""
    url = target.verify_url if isinstance(target, Server) else target + "/v1/verify"
    body = json.dumps({"token": token, "context": CONTEXT}).encode()
    req = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return {"status": resp.status, "body": json.loads(resp.read())}
    except urllib.error.HTTPError as exc:
        return {"status": exc.code, "body": exc.read().decode(errors="replace")[:500]}


def _attenuated(tokens: list[str], k: int) -> list[str]:
    """k narrowed copies of each token, each with an Expiry caveat of its own (an hour or more
    ahead, so the token's own expiry still decides), ordered so that neighbours differ in their
    minted token: distinct bytes, chains and caveats for the verifier, as new tokens would be."""
    from caveats import Expiry, encode
    from tokensvc.macaroons.attenuation import attenuate

    start = time.monotonic()
    horizon = int(time.time()) + 3600
    out = [attenuate(t, [encode(Expiry(horizon + j))]) for j in range(k) for t in tokens]
    print(
        f"http: {len(out):,} distinct tokens by attenuation in {time.monotonic() - start:.1f} s",
        flush=True,
    )
    return out


def _write_bodies(path: Path, tokens: list[str]) -> None:
    with open(path, "w") as f:
        f.writelines(
            json.dumps({"token": token, "context": CONTEXT}, separators=(",", ":")) + "\n"
            for token in tokens
        )


# ---- the benchmark --------------------------------------------------------------------------------


def _settle(servers: list[Server], *, quiet: float = 0.02, timeout: float = 60.0) -> float:
    """Wait until every server is idle (under `quiet` CPU seconds per half second); seconds waited.

    The servers share one database: work a run leaves behind — the cache-off server flushing the
    last-use times of tens of thousands of tokens — must not land in the next target's run.
    """
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = [s.cpu_seconds() for s in servers]
        time.sleep(0.5)
        if all(s.cpu_seconds() - b < quiet for s, b in zip(servers, before, strict=True)):
            break
    return time.monotonic() - started


def _one_run(
    gen: loadgen.LoadGen,
    server: Server,
    bodies: Path,
    args: argparse.Namespace,
    workdir: Path,
    cpus: set[int] | None,
    offset: int = 0,
) -> dict[str, Any]:
    cpu_before = server.cpu_seconds()
    result = gen.run(
        url=server.verify_url,
        bodies=bodies,
        duration=args.duration,
        connections=args.connections,
        workdir=workdir,
        offset=offset,
        cpus=cpus,
    )
    cpu_at_end = server.cpu_seconds()
    cpu = cpu_at_end - cpu_before
    if server.proc.poll() is not None:
        raise RuntimeError(f"{server.name} died during the run; its log:\n{server.log_tail()}")
    seconds = result["duration_us"] / 1e6 if result.get("duration_us") else args.duration
    requests = int(result["requests"])
    errors = result.get("errors", {})
    return {
        "rps": requests / seconds if seconds else float("nan"),
        "p50_ms": result["latency_us"]["p50"] / 1000,
        "p99_ms": result["latency_us"]["p99"] / 1000,
        "p90_ms": (result["latency_us"].get("p90") or float("nan")) / 1000,
        "requests": requests,
        "seconds": seconds,
        "errors": errors,
        "error_count": sum(int(v) for v in errors.values()),
        "server_cpu_us_per_req": cpu / requests * 1e6 if requests else float("nan"),
        "server_cpu_share": cpu / seconds if seconds else float("nan"),
        "server_cpu_end_s": cpu_at_end,  # the server's CPU clock when the run ended
    }


def _charge_leftovers(res: dict[str, Any], server: Server, servers: list[Server]) -> None:
    """Wait for the servers to go idle and charge what `server` did meanwhile to its run.

    What a run's requests leave for later (last-use times flushed every few seconds) is part of
    their cost; the wait also keeps it out of the next target's run.
    """
    res["settle_s"] = _settle(servers)
    leftover = server.cpu_seconds() - res["server_cpu_end_s"]
    res["leftover_cpu_s"] = leftover
    if res["requests"]:
        res["server_cpu_us_per_req"] += leftover / res["requests"] * 1e6


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests http",
        description=__doc__.split("\n")[0],
        epilog=(
            "Peers: `go` is ../shared/peers/go-verify's verify-peer (built with its build.sh, "
            "Debian's Go packages, when missing), `nginx` is nginx `return 200` (nginx-light); "
            "a peer that cannot be found or started is reported and the rest is measured. "
            "tokensvc gets TOKENSVC_VERIFY_PORT=<free port> and the load goes to that verify "
            "listener, or to the app port when it does not answer (an older tokensvc) or with "
            "--app-port-verify."
        ),
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run (default 10)")
    parser.add_argument(
        "--connections", type=int, default=64, help="keep-alive connections (default 64)"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of runs of every target (default 3)"
    )
    parser.add_argument(
        "--distinct", type=int, default=20000, help="distinct tokens for the all-distinct runs"
    )
    parser.add_argument(
        "--attenuate",
        type=int,
        default=0,
        metavar="K",
        help=(
            "make the distinct set K attenuations of each minted token (each appends its own "
            "Expiry caveat, client-side), so every request carries bytes never seen before: no "
            "token comes back until N×K have been sent (default 0: the minted tokens, cycled)"
        ),
    )
    parser.add_argument("--hot", type=int, default=10, help="tokens in the hot set (default 10)")
    parser.add_argument(
        "--peers",
        default="go,nginx",
        metavar="LIST",
        help=(
            "peers measured beside tokensvc, comma-separated from go, go-bare, nginx, or none "
            "(default go,nginx); go-bare is verify-peer -bare, Go's HTTP ceiling"
        ),
    )
    parser.add_argument(
        "--go-peer", metavar="PATH", help="the verify-peer binary (default: build.sh's output)"
    )
    parser.add_argument(
        "--no-go-build",
        action="store_true",
        help="do not run the Go peer's build.sh when its binary is missing (skip the peer)",
    )
    parser.add_argument(
        "--app-port-verify",
        action="store_true",
        help=(
            "send tokensvc's load to /v1/verify on its app port, not its verify listener "
            "(TOKENSVC_VERIFY_PORT, still opened)"
        ),
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="wrk threads (default 1: the machine has 2 cores)"
    )
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="unrecorded seconds per target first"
    )
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument(
        "--pin",
        action="store_true",
        help="pin the servers to CPU 0 and the load generator to CPU 1 (the default on 2+ CPUs)",
    )
    parser.add_argument(
        "--no-pin", action="store_true", help="do not pin servers and load generator to CPUs"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary directory (logs, bodies)"
    )
    parser.add_argument("--no-save", action="store_true", help="do not write a results file")
    return parser


def parse_peers(text: str) -> tuple[str, ...]:
    """`go,nginx` → ("go", "nginx") in PEER_TARGETS order; ValueError on an unknown name."""
    names = {p.strip() for p in text.split(",") if p.strip()}
    if names == {"none"}:
        return ()
    unknown = names - set(peers.PEER_TARGETS)
    if unknown:
        raise ValueError(
            f"unknown peer(s) {', '.join(sorted(unknown))}: "
            f"choose from {', '.join(peers.PEER_TARGETS)} or none"
        )
    return tuple(p for p in peers.PEER_TARGETS if p in names)


def _start_peers(
    wanted: tuple[str, ...],
    args: argparse.Namespace,
    env: dict[str, str],
    ports: dict[str, int],
    workdir: Path,
    cpus: set[int] | None,
    notes: dict[str, str],
) -> tuple[dict[str, Server], str | None]:
    """Start the wanted peers that can be found (a missing one gets a note instead); the
    servers started and the Go peer's binary, if found."""
    started: dict[str, Server] = {}
    go = None
    if {"go", "go-bare"} & set(wanted):
        go = peers.find_go_peer(args.go_peer, build=not args.no_go_build)
    nginx = peers.find_nginx() if "nginx" in wanted else None
    for name in wanted:
        found = nginx if name == "nginx" else go
        assert found is not None
        if found.path is None:
            notes[name] = "not measured: " + found.note
            print(f"http: {name} not measured: {found.note}", flush=True)
            continue
        if name == "nginx":
            cmd = peers.nginx_cmd(found.path, workdir, ports[name])
        else:
            cmd = peers.go_serve_cmd(found.path, ports[name], bare=name == "go-bare")
        notes[name] = found.note
        started[name] = _start(name, cmd, env, ports[name], workdir, cpus)
    return started, go.path if go else None


def _drop_peer(
    name: str,
    why: str,
    servers: list[Server],
    peer_servers: dict[str, Server],
    notes: dict[str, str],
) -> None:
    server = peer_servers.pop(name)
    server.stop()
    servers.remove(server)
    notes[name] = f"not measured: {why}"
    print(f"http: {name} not measured: {why}", flush=True)


def run(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not (
        0.5 <= args.duration <= 600 and 1 <= args.rounds <= 50 and 1 <= args.connections <= 10000
    ):
        parser.error("--duration in 0.5..600, --rounds in 1..50, --connections in 1..10000")
    if not (1 <= args.hot <= 10000 and 1 <= args.distinct <= 1_000_000 and 1 <= args.threads <= 64):
        parser.error("--hot in 1..10000, --distinct in 1..1000000, --threads in 1..64")
    if not 0 <= args.attenuate <= 1000 or args.distinct * args.attenuate > 5_000_000:
        parser.error("--attenuate in 0..1000, and --distinct × --attenuate at most 5,000,000")
    try:
        wanted = parse_peers(args.peers)
    except ValueError as exc:
        parser.error(f"--peers: {exc}")
    if args.pin and args.no_pin:
        parser.error("--pin and --no-pin contradict each other")

    cpus = os.cpu_count() or 1
    server_cpus = loadgen_cpus = None
    if not args.no_pin:
        if cpus >= 2:
            server_cpus, loadgen_cpus = {0}, {1}
        elif args.pin:
            parser.error("--pin needs at least 2 CPUs")
        else:
            print("http: one CPU: servers and load generator unpinned", flush=True)
    args.pin = server_cpus is not None

    gen = loadgen.find(args.loadgen, args.threads)
    note = loadavg_note()
    print(f"http: load generator: {gen.describe()}" + (f"; {note}" if note else ""), flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="tokensvc-bench-http-"))
    data_dir = workdir / "data"
    servers: list[Server] = []
    peer_notes: dict[str, str] = {}
    body_bytes: dict[str, float] = {}
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENSVC_")}
        (svc_port, svc_vport, nocache_port, nocache_vport, bare_port, *peer_ports) = free_ports(
            5 + len(peers.PEER_TARGETS)
        )
        svc_env = dict(
            env,
            TOKENSVC_DATA_DIR=str(data_dir),
            TOKENSVC_PORT=str(svc_port),
            TOKENSVC_VERIFY_PORT=str(svc_vport),
            TOKENSVC_HOST="127.0.0.1",
        )
        svc = _start(
            "tokensvc", [_tokensvc_bin(), "serve"], svc_env, svc_port, workdir, server_cpus
        )
        servers.append(svc)
        # A second tokensvc on the same database with a verify cache smaller than the distinct
        # set: every request then decodes, runs every HMAC and replaces a cache entry, which is
        # what tokens beyond the cache cost (minting enough tokens to overflow the default
        # 50,000-entry cache would make the run much longer, for the same cost per request).
        nocache_env = dict(
            svc_env,
            TOKENSVC_PORT=str(nocache_port),
            TOKENSVC_VERIFY_PORT=str(nocache_vport),
            # A quarter of the distinct tokens: cycled in order, every request misses the cache,
            # then inserts its chain and evicts the oldest, as tokens beyond the cache do.
            TOKENSVC_VERIFY_CACHE_ENTRIES=str(max(1, args.distinct // 4)),
        )
        nocache = _start(
            "tokensvc-nocache",
            [_tokensvc_bin(), "serve"],
            nocache_env,
            nocache_port,
            workdir,
            server_cpus,
        )
        servers.append(nocache)
        bare = _start(
            "bare",
            [sys.executable, "-m", "loadtests.bare", "--port", str(bare_port)],
            env,
            bare_port,
            workdir,
            server_cpus,
        )
        servers.append(bare)
        peer_servers, go_binary = _start_peers(
            wanted,
            args,
            env,
            dict(zip(peers.PEER_TARGETS, peer_ports, strict=True)),
            workdir,
            server_cpus,
            peer_notes,
        )
        servers.extend(peer_servers.values())
        bare.wait_healthy()
        svc.wait_healthy()
        nocache.wait_healthy()
        for name, server in list(peer_servers.items()):
            try:
                server.wait_healthy(30)
            except RuntimeError as exc:
                _drop_peer(name, str(exc).splitlines()[0], servers, peer_servers, peer_notes)
        endpoints = use_verify_ports(
            [(svc, svc_vport), (nocache, nocache_vport)], app_port=args.app_port_verify
        )
        for line in endpoints:
            print(f"http: {line}", flush=True)
        print(
            "http: "
            + ", ".join(f"{s.name} on :{s.port} (pid {s.proc.pid})" for s in servers)
            + (" — all pinned to CPU 0, the load generator to CPU 1" if args.pin else ""),
            flush=True,
        )

        admin = _admin_token(dict(svc_env))
        print(
            f"http: minting {args.hot} hot + {args.distinct:,} distinct tokens through POST /v1/tokens…",
            flush=True,
        )
        hot_subjects = [f"bench-hot-{i}" for i in range(args.hot)]
        distinct_subjects = [f"bench-{i:07d}" for i in range(args.distinct)]
        budget = 120 + args.distinct / 20  # generous, but bounded
        hot_tokens, _ = asyncio.run(_mint(svc.base, admin, hot_subjects, budget))
        distinct_tokens, mint_rate = asyncio.run(_mint(svc.base, admin, distinct_subjects, budget))
        print(
            f"http: minted at {mint_rate:,.0f} tokens/s ({MINT_CONCURRENCY} concurrent requests)",
            flush=True,
        )

        if args.attenuate:
            distinct_tokens = _attenuated(distinct_tokens, args.attenuate)
        for label, server, token in (
            ("hot", svc, hot_tokens[0]),
            ("distinct", nocache, distinct_tokens[-1]),
        ):
            answer = _verify_once(server, token)
            if (
                answer["status"] != 200
                or not isinstance(answer["body"], dict)
                or answer["body"].get("valid") is not True
            ):
                raise RuntimeError(f"sanity check: verifying a {label} token gave {answer}")
        answer = _verify_once(bare, hot_tokens[0])
        if answer["status"] != 200:
            raise RuntimeError(f"sanity check: the bare handler answered {answer}")

        bodies = {
            "bare": workdir / "hot.jsonl",
            "hot": workdir / "hot.jsonl",
            "distinct": workdir / "distinct.jsonl",
            "nginx": workdir / "hot.jsonl",
            "go": workdir / "go.jsonl",
            "go-bare": workdir / "go.jsonl",
        }
        _write_bodies(bodies["hot"], hot_tokens)
        _write_bodies(bodies["distinct"], distinct_tokens)
        if go_binary and {"go", "go-bare"} & set(peer_servers):
            # As many distinct Go tokens as tokensvc gets (it has no cache: repeats cost the same).
            go_tokens = peers.go_mint(
                go_binary, min(len(distinct_tokens), 100_000), workdir / "go.txt"
            )
            _write_bodies(bodies["go"], go_tokens)
            for name in ("go", "go-bare"):
                if name not in peer_servers:
                    continue
                answer = _verify_once(peer_servers[name], go_tokens[-1])
                ok = answer["status"] == 200 and (
                    name == "go-bare"
                    or (isinstance(answer["body"], dict) and answer["body"].get("valid") is True)
                )
                if not ok:
                    _drop_peer(
                        name, f"sanity check gave {answer}", servers, peer_servers, peer_notes
                    )
        if (
            "nginx" in peer_servers
            and _verify_once(peer_servers["nginx"], hot_tokens[0])["status"] != 200
        ):
            _drop_peer("nginx", "it did not answer 200", servers, peer_servers, peer_notes)
        server_for = {"bare": bare, "hot": svc, "distinct": nocache, **peer_servers}
        targets = (*TARGETS, *(p for p in peers.PEER_TARGETS if p in peer_servers))
        for t in targets:
            lines = bodies[t].read_bytes().splitlines()
            body_bytes[t] = sum(map(len, lines)) / len(lines) if lines else float("nan")

        # The distinct runs continue where the previous one stopped, so a token comes back only
        # once all N have been used.
        distinct_sent = 0
        if args.warmup > 0:
            warm = argparse.Namespace(**{**vars(args), "duration": args.warmup})
            for target in targets:
                offset = distinct_sent if target == "distinct" else 0
                res = _one_run(
                    gen, server_for[target], bodies[target], warm, workdir, loadgen_cpus, offset
                )
                _settle(servers)
                if target == "distinct":
                    # + connections: requests still in flight when the run ended used tokens too.
                    distinct_sent += res["requests"] + args.connections

        runs: dict[str, list[dict[str, Any]]] = {t: [] for t in targets}
        for r in range(args.rounds):
            order = targets if r % 2 == 0 else tuple(reversed(targets))
            for target in order:
                if target not in runs:
                    continue  # a peer dropped in an earlier round
                time.sleep(0.5)  # let the previous run's connections close
                offset = distinct_sent if target == "distinct" else 0
                try:
                    res = _one_run(
                        gen, server_for[target], bodies[target], args, workdir, loadgen_cpus, offset
                    )
                except RuntimeError as exc:
                    if target not in peer_servers:
                        raise
                    # A peer failing is the peer's problem: say so and measure the rest.
                    _drop_peer(target, str(exc).splitlines()[0], servers, peer_servers, peer_notes)
                    del runs[target]
                    continue
                _charge_leftovers(res, server_for[target], servers)
                if target == "distinct":
                    # + connections: requests still in flight when the run ended used tokens too.
                    distinct_sent += res["requests"] + args.connections
                res["round"] = r
                runs[target].append(res)
                flag = f"  ERRORS {res['errors']}" if res["error_count"] else ""
                print(
                    f"http: round {r + 1}/{args.rounds} {target:8s} {res['rps']:9,.0f} req/s  "
                    f"p50 {res['p50_ms']:6.2f} ms  p99 {res['p99_ms']:6.2f} ms  "
                    f"server CPU {res['server_cpu_us_per_req']:6.1f} µs/req{flag}",
                    flush=True,
                )
        svc_log_tail = svc.log_tail(15)
    finally:
        for server in servers:
            server.stop()
        if args.keep:
            print(f"http: kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    measured = tuple(runs)
    medians = {
        t: {
            m: median([r[m] for r in runs[t]])
            for m in ("rps", "p50_ms", "p99_ms", "server_cpu_us_per_req")
        }
        for t in measured
    }
    data: dict[str, Any] = {
        "params": {k: v for k, v in vars(args).items() if k not in ("keep", "no_save")},
        "loadgen": {"kind": gen.kind, "version": gen.version, "threads": gen.threads},
        "machine": machine_info(),
        "mint_rate_per_s": mint_rate,
        # Requests (warm-up included) sent to the distinct set, each run starting where the last
        # stopped: ≤ N means every token was verified at most once.
        "distinct_requests_total": distinct_sent,
        "targets": list(measured),
        "verify_endpoints": endpoints,
        "peers": {p: peer_notes.get(p, "") for p in wanted},
        "body_bytes": body_bytes,
        "runs": runs,
        "medians": medians,
        "errors_total": {t: sum(r["error_count"] for r in runs[t]) for t in measured},
        "tokensvc_log_tail": svc_log_tail,
    }
    data["ratios"] = {
        t: {
            "rps": ratio(medians[t]["rps"], medians["bare"]["rps"]),
            "p50": ratio(medians[t]["p50_ms"], medians["bare"]["p50_ms"]),
            "p99": ratio(medians[t]["p99_ms"], medians["bare"]["p99_ms"]),
            "server_cpu_per_req": ratio(
                medians[t]["server_cpu_us_per_req"], medians["bare"]["server_cpu_us_per_req"]
            ),
            "rps_per_round": [
                ratio(a["rps"], b["rps"]) for a, b in zip(runs[t], runs["bare"], strict=True)
            ],
        }
        for t in ("hot", "distinct")
    }
    data["peer_ratios"] = peers.peer_ratios(medians)
    data["peer_goals"] = peers.peer_goals(data["peer_ratios"])
    print()
    print(render(data), flush=True)
    if not args.no_save:
        path = write_results("http", data)
        print(f"results: {path}")
    return 1 if any(data["errors_total"].values()) else 0


def _goals(ratios: dict[str, Any]) -> str:
    """The issues' goals against this run's ratios: issue 2 hot ≥ 0.75; issue 7 hot ≥ 0.90 with
    p99 ≤ 1.3× bare's, and distinct ≥ 0.75."""
    hot, distinct = ratios["hot"], ratios["distinct"]
    goals = [
        ("hot req/s ≥ 0.75 (issue 2)", hot["rps"] >= 0.75, f"{hot['rps']:.2f}"),
        ("hot req/s ≥ 0.90 (issue 7)", hot["rps"] >= 0.90, f"{hot['rps']:.2f}"),
        ("hot p99 ≤ 1.3× (issue 7)", hot["p99"] <= 1.3, f"{hot['p99']:.2f}"),
        ("distinct req/s ≥ 0.75 (issue 7)", distinct["rps"] >= 0.75, f"{distinct['rps']:.2f}"),
    ]
    return "goals: " + "; ".join(
        f"{name} → {'met' if ok else 'NOT met'} ({value})" for name, ok, value in goals
    )


def _distinct_note(n: int, sent: int, k: int = 0) -> str:
    made = f"{n * k:,} tokens ({k} attenuations of each of {n:,} minted)" if k else f"{n:,} tokens"
    n = n * k if k else n
    head = f"distinct: {made}, one subject per minted token, sent in order across runs ({sent:,} requests): "
    if sent <= n:
        return head + "every token was verified at most once"
    return (
        head
        + f"cycled, each token verified ~{sent / n:.1f}× in all (served by a tokensvc whose verify cache holds a quarter of them, so every request misses, runs the full chain and evicts, as tokens beyond the cache do)"
    )


def _distinct_count(p: dict[str, Any]) -> str:
    k = p.get("attenuate") or 0
    return f"{p['distinct'] * k:,} attenuated" if k else f"{p['distinct']:,}"


PEER_LABELS = {
    "go": "Go verify-peer (macaroon.v2 + bakery checkers, no cache)",
    "go-bare": "Go verify-peer -bare (JSON decode, fixed 200)",
    "nginx": "nginx return 200 (1 worker)",
}


def render(data: dict[str, Any]) -> str:
    p = data["params"]
    lg = data["loadgen"]
    targets = data.get("targets") or list(TARGETS)
    body_bytes = data.get("body_bytes", {})
    labels = {
        "bare": "bare aiohttp JSON handler",
        "hot": f"tokensvc /v1/verify, hot set ({p['hot']} tokens)",
        "distinct": f"tokensvc /v1/verify, distinct ({_distinct_count(p)} tokens, 4× the cache)",
        **PEER_LABELS,
    }
    rows = []
    for t in targets:
        m = data["medians"][t]
        runs = data["runs"][t]
        rows.append(
            [
                labels[t],
                fmt(m["rps"]),
                spread([r["rps"] for r in runs]),
                fmt(m["p50_ms"]),
                fmt(m["p99_ms"]),
                fmt(m["server_cpu_us_per_req"]),
                fmt(body_bytes.get(t, float("nan"))),
                str(data["errors_total"][t]),
            ]
        )
    ratio_rows = []
    for t in ("hot", "distinct"):
        q = data["ratios"][t]
        ratio_rows.append(
            [
                labels[t].replace("tokensvc /v1/verify, ", ""),
                fmt_ratio(q["rps"]),
                " ".join(f"{x:.2f}" for x in q["rps_per_round"]),
                fmt_ratio(q["p50"]),
                fmt_ratio(q["p99"]),
                fmt_ratio(q["server_cpu_per_req"]),
            ]
        )
    peer_rows = [
        [
            key,
            fmt_ratio(q["rps"]),
            fmt_ratio(q["p50"]),
            fmt_ratio(q["p99"]),
            fmt_ratio(q["server_cpu_per_req"]),
        ]
        for key, q in data.get("peer_ratios", {}).items()
    ]
    gen = (
        f"wrk ({lg['version']}, {lg['threads']} thread(s))"
        if lg["kind"] == "wrk"
        else "the Python load generator"
    )
    lines = [
        (
            f"http: POST /v1/verify, {p['connections']} connections, closed loop, {gen}; medians "
            f"of {p['rounds']} rounds × {p['duration']:g} s per target, order reversed every other round"
        ),
        table(
            [
                "target",
                "req/s",
                "req/s min–max",
                "p50 ms",
                "p99 ms",
                "server CPU µs/req",
                "body B",
                "errors",
            ],
            rows,
        ),
        "",
        table(
            ["tokensvc / bare", "req/s", "per round", "p50", "p99", "server CPU/req"],
            ratio_rows,
        ),
        "",
    ]
    if peer_rows:
        lines += [
            table(["tokensvc / peer", "req/s", "p50", "p99", "server CPU/req"], peer_rows),
            "",
        ]
    lines.append(_goals(data["ratios"]))
    if "peer_goals" in data:
        lines.append(peers.render_goals(data["peer_goals"]))
    for name, note in data.get("peers", {}).items():
        if note.startswith("not measured"):
            lines.append(f"note: {name} {note}")
    lines += [f"note: {line}" for line in data.get("verify_endpoints", [])]
    lines += [
        _distinct_note(p["distinct"], data["distinct_requests_total"], p.get("attenuate") or 0),
        f"minting through POST /v1/tokens ran at {data['mint_rate_per_s']:,.0f} tokens/s",
        "note: "
        + SHARED_MACHINE_NOTE.format(cpus=data["machine"].get("cpus"))
        + ("; servers pinned to CPU 0, load generator to CPU 1" if p.get("pin") else ""),
    ]
    if lg["kind"] != "wrk":
        lines.append(
            "note: the Python load generator is likely the bottleneck: ratios are compressed towards 1"
        )
    if any(data["errors_total"].values()):
        lines.append(
            f"WARNING: non-2xx responses or socket errors: {data['errors_total']} — figures are suspect"
        )
    return "\n".join(lines)
