"""Login storm: /v1/verify throughput and p99 while POST /v1/login floods argon2, against without.

Starts `tokensvc serve` (embedded SQLite, Redis lockout on 127.0.0.1:6379 under a unique
TOKENSVC_REDIS_PREFIX whose keys are deleted at the end, argon2 at the default OWASP profile,
TOKENSVC_TRUSTED_PROXIES=127.0.0.1/32 so each storm request can name its own client IP in
X-Forwarded-For), creates a few users and mints hot tokens, then:

(a) login throughput alone: a bounded, concurrent loop of logins with the right password;
    logins/s and the share of 503 answers (the hasher's wait queue overflowing);
(b) rounds of two wrk runs against /v1/verify with hot tokens — `quiet` (no storm) and `storm`
    (an asyncio client in a thread of this process flooding POST /v1/login: right passwords for
    the real users, wrong ones for never-seen usernames — credential stuffing, which lockout does
    not stop per identity — each from a distinct X-Forwarded-For IP), the order alternated every
    round. Ratios storm/quiet of the medians: req/s (issue 7 target ≥ 0.60, issue 19 ≥ 0.85) and
    p99 (≤ 2×);
(c) during every run of (b), quiet and storm alike, a trickle of real users (issue 19): each real
    user logs in from its own known address (one it logged in from before (b): the lockout store
    trusts it), waits `--trickle-think` seconds, and again, from a thread of its own at normal
    priority. Its logins/s during the storm against during the quiet runs (target ≥ 0.50): the
    hasher's fair queue puts these trusted attempts before the storm's anonymous ones.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from loadtests import loadgen
from loadtests.common import (
    SHARED_MACHINE_NOTE,
    Deadline,
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
from loadtests.httpbench import (
    _admin_token,
    _mint,
    _one_run,
    _verify_once,
    _write_bodies,
    use_verify_ports,
)
from loadtests.svc import (
    DEFAULT_REDIS_URL,
    bench_password,
    check_redis,
    create_users,
    delete_prefix,
    start_tokensvc,
    unique_prefix,
)

TARGETS = ("quiet", "storm")
MAX_ATTEMPTS = 1_000_000  # a bound on every login loop besides its deadline


def _ip(n: int) -> str:
    """A distinct IPv4 address in 10.0.0.0/8 for attempt n."""
    n = n % (1 << 24)
    return f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255 or 1}"


async def login_loop(
    base: str,
    users: list[str],
    password: str,
    *,
    concurrency: int,
    seconds: float,
    wrong_share: float,
    stop: threading.Event | None = None,
    ip_offset: int = 0,
    max_attempts: int = MAX_ATTEMPTS,
) -> dict[str, Any]:
    """Flood POST /v1/login for `seconds` (or until `stop`); status counts and logins/s.

    Attempt i uses a distinct X-Forwarded-For IP. A share `wrong_share` of attempts send a wrong
    password for a never-seen username (each its own identity: stuffing, so lockout's per-identity
    counter never trips); the rest log a real user in with the right password.
    """
    import aiohttp

    deadline = Deadline(seconds)
    counts: Counter[str] = Counter()
    ok_latencies: list[float] = []
    samples: dict[str, str] = {}  # the first body seen for each non-200 status
    attempts = 0
    wrong_every = round(1 / wrong_share) if wrong_share > 0 else 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal attempts
        while not deadline.passed and attempts < max_attempts and not (stop and stop.is_set()):
            i = attempts
            attempts += 1
            wrong = wrong_every and (i % wrong_every == 0 or wrong_share >= 1)
            if wrong:
                body = {"username": f"stuff-{ip_offset + i}", "password": "wrong-" + str(i)}
            else:
                body = {"username": users[i % len(users)], "password": password}
            headers = {"X-Forwarded-For": _ip(ip_offset + i)}
            start = time.perf_counter()
            try:
                async with session.post(base + "/v1/login", json=body, headers=headers) as resp:
                    text = await resp.read()
                    status = resp.status
                    if str(status) not in samples and status != 200:
                        samples[str(status)] = text[:200].decode(errors="replace")
            except (aiohttp.ClientError, TimeoutError):
                counts["client_error"] += 1
                await asyncio.sleep(0.05)
                continue
            counts[str(status)] += 1
            if status == 200:
                ok_latencies.append(time.perf_counter() - start)
            elif status == 503:
                await asyncio.sleep(0)  # the server said "busy"; the storm does not back off

    start = time.monotonic()
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    elapsed = time.monotonic() - start
    total = sum(counts.values())
    ok_latencies.sort()
    return {
        "seconds": elapsed,
        "attempts": total,
        "status": dict(counts),
        "attempts_per_s": total / elapsed if elapsed else float("nan"),
        "logins_per_s": counts["200"] / elapsed if elapsed else float("nan"),
        "share_503": counts["503"] / total if total else float("nan"),
        "share_429": counts["429"] / total if total else float("nan"),
        "bodies": samples,
        "login_p50_ms": ok_latencies[len(ok_latencies) // 2] * 1000 if ok_latencies else None,
        "login_p99_ms": ok_latencies[int(len(ok_latencies) * 0.99)] * 1000
        if ok_latencies
        else None,
    }


def _home_ip(k: int) -> str:
    """The known address of real user k: outside the storm's 10.0.0.0/8."""
    return f"172.16.{(k >> 8) & 255}.{k & 255 or 1}"


async def trickle_loop(
    base: str, users: list[str], password: str, *, think: float, stop: threading.Event
) -> dict[str, Any]:
    """Each real user logs in from its home address, waits `think` s, and again, until `stop`."""
    import aiohttp

    counts: Counter[str] = Counter()
    latencies: list[float] = []

    async def user(session: aiohttp.ClientSession, k: int, name: str) -> None:
        headers = {"X-Forwarded-For": _home_ip(k)}
        body = {"username": name, "password": password}
        while not stop.is_set():
            started = time.perf_counter()
            try:
                async with session.post(base + "/v1/login", json=body, headers=headers) as resp:
                    await resp.read()
                    counts[str(resp.status)] += 1
                    if resp.status == 200:
                        latencies.append(time.perf_counter() - started)
            except (aiohttp.ClientError, TimeoutError):
                counts["client_error"] += 1
            await asyncio.sleep(think)

    start = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(user(session, k, name) for k, name in enumerate(users)))
    elapsed = time.monotonic() - start
    latencies.sort()
    return {
        "seconds": elapsed,
        "status": dict(counts),
        "logins_per_s": counts["200"] / elapsed if elapsed else float("nan"),
        "login_p50_ms": latencies[len(latencies) // 2] * 1000 if latencies else None,
        "login_p99_ms": latencies[int(len(latencies) * 0.99)] * 1000 if latencies else None,
    }


class TrickleThread(threading.Thread):
    """trickle_loop in its own event loop on a thread (normal priority), until finished."""

    def __init__(self, base: str, users: list[str], password: str, think: float) -> None:
        super().__init__(daemon=True, name="real-users")
        self.stop_event = threading.Event()
        self.args = (base, users, password)
        self.think = think
        self.result: dict[str, Any] | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = asyncio.run(
                trickle_loop(*self.args, think=self.think, stop=self.stop_event)
            )
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc

    def finish(self) -> dict[str, Any]:
        self.stop_event.set()
        self.join(60)
        if self.error is not None:
            raise self.error
        if self.result is None:
            raise RuntimeError("the real users' trickle did not stop within 60 s")
        return self.result


async def prime_trust(base: str, users: list[str], password: str) -> None:
    """Each real user logs in once from its home address, so the lockout store trusts it there."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        for k, name in enumerate(users):
            async with session.post(
                base + "/v1/login",
                json={"username": name, "password": password},
                headers={"X-Forwarded-For": _home_ip(k)},
            ) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"priming {name}: {resp.status} {await resp.text()}")


class StormThread(threading.Thread):
    """login_loop in its own event loop on a thread, until stopped (or its time bound)."""

    def __init__(
        self, base: str, users: list[str], password: str, args: argparse.Namespace, ip_offset: int
    ) -> None:
        super().__init__(daemon=True, name="login-storm")
        self.stop_event = threading.Event()
        self.kwargs: dict[str, Any] = {
            "concurrency": args.storm_concurrency,
            "seconds": args.duration + 30,
            "wrong_share": args.wrong_share,
            "stop": self.stop_event,
            "ip_offset": ip_offset,
        }
        self.base, self.users, self.password = base, users, password
        self.nice = args.storm_nice
        self.result: dict[str, Any] | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        if self.nice:
            # On Linux nice is per thread: only this thread (the attackers) yields the cores.
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)
        try:
            self.result = asyncio.run(
                login_loop(self.base, self.users, self.password, **self.kwargs)
            )
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc

    def finish(self) -> dict[str, Any]:
        self.stop_event.set()
        self.join(60)
        if self.error is not None:
            raise RuntimeError(f"the login storm failed: {self.error!r}")
        if self.result is None:
            raise RuntimeError("the login storm did not stop within 60 s")
        return self.result


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests storm", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--duration", type=float, default=10.0, help="seconds per wrk run (default 10)"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of quiet/storm runs (default 3)"
    )
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--hot", type=int, default=10, help="hot tokens (default 10)")
    parser.add_argument("--users", type=int, default=4, help="real users logging in (default 4)")
    parser.add_argument(
        "--login-seconds", type=float, default=10.0, help="(a): seconds of logins alone"
    )
    parser.add_argument(
        "--login-concurrency", type=int, default=16, help="(a): concurrent logins (default 16)"
    )
    parser.add_argument(
        "--storm-concurrency",
        type=int,
        default=128,
        help="(b): concurrent storm requests (default 128)",
    )
    parser.add_argument(
        "--storm-nice",
        type=int,
        default=19,
        help=(
            "(b): nice value of the storm client's thread (default 19): the attackers' CPU is not "
            "the server's on a real deployment, but here it shares the 2 cores; 0 lets it compete"
        ),
    )
    parser.add_argument(
        "--wrong-share",
        type=float,
        default=0.5,
        help="(b): share of wrong-password attempts (default 0.5)",
    )
    parser.add_argument(
        "--one-process",
        action="store_true",
        help="serve with TOKENSVC_VERIFY_PROCESS=false: logins share /v1/verify's event loop",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="tokensvc serve --workers N (default 1): N verify processes on the verify port, one"
        " API process",
    )
    parser.add_argument(
        "--trickle-think",
        type=float,
        default=0.5,
        help="(c): seconds each real user waits between its logins from home (default 0.5)",
    )
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument(
        "--password-profile",
        default=None,
        help="TOKENSVC_PASSWORD_PROFILE (default: the service's, OWASP)",
    )
    parser.add_argument(
        "--app-port-verify",
        action="store_true",
        help=(
            "send the verify load to /v1/verify on the app port, not tokensvc's verify listener "
            "(TOKENSVC_VERIFY_PORT, still opened; used by default when it answers)"
        ),
    )
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    if not (
        0.5 <= args.duration <= 600 and 1 <= args.rounds <= 50 and 1 <= args.connections <= 10000
    ):
        parser.error("--duration in 0.5..600, --rounds in 1..50, --connections in 1..10000")
    if not (
        1 <= args.users <= 100
        and 1 <= args.login_concurrency <= 2000
        and 1 <= args.storm_concurrency <= 2000
    ):
        parser.error("--users in 1..100, --login-concurrency and --storm-concurrency in 1..2000")
    if not 1 <= args.workers <= 64:
        parser.error("--workers in 1..64")
    if not (
        0 <= args.wrong_share <= 1 and 0 < args.login_seconds <= 600 and 1 <= args.hot <= 10000
    ):
        parser.error("--wrong-share in 0..1, --login-seconds in 0..600, --hot in 1..10000")
    if not 0.01 <= args.trickle_think <= 60:
        parser.error("--trickle-think in 0.01..60")

    check_redis(args.redis_url)
    gen = loadgen.find(args.loadgen, args.threads)
    note = loadavg_note()
    print(f"storm: load generator: {gen.describe()}" + (f"; {note}" if note else ""), flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="tokensvc-bench-storm-"))
    prefix = unique_prefix("storm")
    extra = {"TOKENSVC_TRUSTED_PROXIES": "127.0.0.1/32"}
    if args.password_profile:
        extra["TOKENSVC_PASSWORD_PROFILE"] = args.password_profile
        if args.password_profile.upper() == "CHEAP_FOR_TESTS":
            # The service refuses the test profile unless told that this is on purpose.
            extra["TOKENSVC_ALLOW_INSECURE"] = "test-password-profile"
    if args.one_process:
        extra["TOKENSVC_VERIFY_PROCESS"] = "false"
    svc = start_tokensvc(
        "tokensvc",
        workdir,
        redis_url=args.redis_url,
        prefix=prefix,
        port=free_port(),
        data_dir=workdir / "data",
        workers=args.workers,
        extra_env=extra,
    )
    server = svc.server
    deleted = -1
    try:
        server.wait_healthy()
        endpoints = use_verify_ports([(server, svc.verify_port)], app_port=args.app_port_verify)
        for line in endpoints:
            print(f"storm: {line}", flush=True)
        print(
            f"storm: tokensvc on :{server.port} (pid {server.proc.pid}), Redis prefix {prefix!r}",
            flush=True,
        )
        admin = _admin_token(svc.env)
        password = bench_password()
        users = [f"storm-user-{i}" for i in range(args.users)]
        asyncio.run(create_users(server.base, admin, users, password))
        hot, _ = asyncio.run(
            _mint(server.base, admin, [f"storm-hot-{i}" for i in range(args.hot)], 120)
        )
        answer = _verify_once(server, hot[0])
        if answer["status"] != 200:
            raise RuntimeError(f"sanity check: verifying a hot token gave {answer}")
        bodies = workdir / "hot.jsonl"
        _write_bodies(bodies, hot)

        # (a) logins alone
        print(
            f"storm: (a) {args.login_seconds:g} s of logins alone, {args.login_concurrency} concurrent, right password…",
            flush=True,
        )
        cpu0 = server.cpu_seconds()
        alone = asyncio.run(
            login_loop(
                server.base,
                users,
                password,
                concurrency=args.login_concurrency,
                seconds=args.login_seconds,
                wrong_share=0.0,
                ip_offset=1 << 20,
            )
        )
        alone["server_cpu_share"] = (server.cpu_seconds() - cpu0) / alone["seconds"]
        print(
            f"storm:     {alone['logins_per_s']:.1f} logins/s, statuses {alone['status']}, "
            f"503 share {alone['share_503']:.1%}, server CPU {alone['server_cpu_share']:.2f} cores",
            flush=True,
        )
        if not alone["status"].get("200"):
            raise RuntimeError(
                f"no login succeeded in (a): {alone['status']}; log:\n{server.log_tail()}"
            )

        # (c) the real users' known addresses: one login each from home, before any storm
        asyncio.run(prime_trust(server.base, users, password))

        # (b) verify with and without a storm, (c) the trickle of real users in both
        runs: dict[str, list[dict[str, Any]]] = {t: [] for t in TARGETS}
        trickles: dict[str, list[dict[str, Any]]] = {t: [] for t in TARGETS}
        storms: list[dict[str, Any]] = []
        ip_offset = 2 << 20
        for r in range(args.rounds):
            order = TARGETS if r % 2 == 0 else tuple(reversed(TARGETS))
            for target in order:
                time.sleep(0.5)
                storm = None
                if target == "storm":
                    storm = StormThread(server.base, users, password, args, ip_offset)
                    storm.start()
                    time.sleep(1.0)  # let the storm fill the hasher queue first
                trickle = TrickleThread(server.base, users, password, args.trickle_think)
                trickle.start()
                cpu0 = server.cpu_seconds()
                try:
                    res = _one_run(gen, server, bodies, args, workdir, None)
                finally:
                    trickle_res = trickle.finish()
                    storm_res = storm.finish() if storm is not None else None
                trickle_res["round"] = r
                trickles[target].append(trickle_res)
                res["server_cpu_share"] = (server.cpu_seconds() - cpu0) / res["seconds"]
                res["round"] = r
                runs[target].append(res)
                extra_txt = ""
                if storm_res is not None:
                    storm_res["round"] = r
                    storms.append(storm_res)
                    ip_offset += storm_res["attempts"] + 10
                    extra_txt = (
                        f"  storm {storm_res['attempts_per_s']:.0f} attempts/s, {storm_res['logins_per_s']:.1f} logins/s, "
                        f"{storm_res['status']}"
                    )
                extra_txt += (
                    f"  real users {trickle_res['logins_per_s']:.1f} logins/s "
                    f"{trickle_res['status']}"
                )
                flag = f"  ERRORS {res['errors']}" if res["error_count"] else ""
                print(
                    f"storm: round {r + 1}/{args.rounds} {target:5s} {res['rps']:9,.0f} req/s  "
                    f"p50 {res['p50_ms']:6.2f} ms  p99 {res['p99_ms']:6.2f} ms  "
                    f"server CPU {res['server_cpu_share']:.2f} cores{flag}{extra_txt}",
                    flush=True,
                )
        log_tail = server.log_tail(10)
    finally:
        server.stop()
        deleted = delete_prefix(args.redis_url, prefix)
        if args.keep:
            print(f"storm: kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    metrics = ("rps", "p50_ms", "p99_ms", "server_cpu_share")
    data: dict[str, Any] = {
        "params": {k: v for k, v in vars(args).items() if k not in ("keep", "no_save")},
        "loadgen": {"kind": gen.kind, "version": gen.version, "threads": gen.threads},
        "machine": machine_info(),
        "redis": {"url": args.redis_url, "prefix": prefix, "keys_deleted": deleted},
        "verify_endpoints": endpoints,
        "login_alone": alone,
        "runs": runs,
        "storms": storms,
        "medians": {t: {m: median([x[m] for x in runs[t]]) for m in metrics} for t in TARGETS},
        "storm_medians": {
            m: median([s[m] for s in storms])
            for m in ("attempts_per_s", "logins_per_s", "share_503", "share_429")
        },
        "errors_total": {t: sum(x["error_count"] for x in runs[t]) for t in TARGETS},
        "trickles": trickles,
        "trickle_medians": {
            t: {
                m: median([x[m] for x in trickles[t] if x[m] is not None] or [float("nan")])
                for m in ("logins_per_s", "login_p50_ms", "login_p99_ms")
            }
            for t in TARGETS
        },
        "tokensvc_log_tail": log_tail,
    }
    q, s = data["medians"]["quiet"], data["medians"]["storm"]
    data["ratios"] = {
        "rps": ratio(s["rps"], q["rps"]),
        "p50": ratio(s["p50_ms"], q["p50_ms"]),
        "p99": ratio(s["p99_ms"], q["p99_ms"]),
        "rps_per_round": [
            ratio(a["rps"], b["rps"]) for a, b in zip(runs["storm"], runs["quiet"], strict=True)
        ],
        "storm_logins_vs_alone": ratio(
            data["storm_medians"]["logins_per_s"], alone["logins_per_s"]
        ),
        "real_users": ratio(
            data["trickle_medians"]["storm"]["logins_per_s"],
            data["trickle_medians"]["quiet"]["logins_per_s"],
        ),
        "real_users_per_round": [
            ratio(a["logins_per_s"], b["logins_per_s"])
            for a, b in zip(trickles["storm"], trickles["quiet"], strict=True)
        ],
    }
    print()
    print(render(data), flush=True)
    if not args.no_save:
        print(f"results: {write_results('storm', data)}")
    return 1 if any(data["errors_total"].values()) else 0


def _bodies(data: dict[str, Any]) -> dict[str, str]:
    """The first body of each non-200 status the storm got (lockout 429 vs admission-control 429)."""
    out: dict[str, str] = {}
    for st in data["storms"]:
        for k, v in st.get("bodies", {}).items():
            out.setdefault(k, v)
    return out


def _mode(params: dict[str, Any]) -> str:
    """How the server was run, in words (results files from before --workers have none)."""
    workers = int(params.get("workers", 1))
    processes = f"{workers} workers" if workers > 1 else "one worker"
    if params.get("one_process"):
        return f"{processes}, each serving everything"
    verifiers = f"{workers} verify processes" if workers > 1 else "verify process"
    return f"{verifiers} + API process"


def render(data: dict[str, Any]) -> str:
    p, a, q = data["params"], data["login_alone"], data["ratios"]
    rows = []
    labels = {"quiet": "/v1/verify, no storm", "storm": "/v1/verify, login storm"}
    for t in TARGETS:
        m = data["medians"][t]
        rows.append(
            [
                labels[t],
                fmt(m["rps"]),
                spread([x["rps"] for x in data["runs"][t]]),
                fmt(m["p50_ms"]),
                fmt(m["p99_ms"]),
                fmt(m["server_cpu_share"]),
                str(data["errors_total"][t]),
            ]
        )
    sm = data["storm_medians"]
    status_total: Counter[str] = Counter()
    for st in data["storms"]:
        status_total.update(st["status"])
    rps_ok = q["rps"] >= 0.85
    p99_ok = q["p99"] <= 2.0
    # Results saved before issue 19 have no trickle of real users.
    tm = data.get("trickle_medians")
    real_ok = q.get("real_users", float("nan")) >= 0.50
    trickle_rows = (
        [
            [
                "real users' logins/s (known addresses)",
                fmt_ratio(q["real_users"]),
                " ".join(f"{x:.2f}" for x in q["real_users_per_round"]),
                "≥ 0.50",
                "met" if real_ok else "NOT met",
            ]
        ]
        if tm
        else []
    )
    trickle_line = (
        [
            (
                f"(c) real users ({p['users']}, each from its known address, "
                f"{p.get('trickle_think', 0.5):g} s between logins): "
                f"quiet {tm['quiet']['logins_per_s']:.2f} logins/s "
                f"(p50 {fmt(tm['quiet']['login_p50_ms'])} ms), "
                f"storm {tm['storm']['logins_per_s']:.2f} logins/s "
                f"(p50 {fmt(tm['storm']['login_p50_ms'])} ms, p99 {fmt(tm['storm']['login_p99_ms'])} ms); "
                f"statuses in the storm "
                + str(
                    dict(sum((Counter(x["status"]) for x in data["trickles"]["storm"]), Counter()))
                )
            ),
            "",
        ]
        if tm
        else []
    )
    return "\n".join(
        [
            (
                f"storm: argon2 profile {p.get('password_profile') or 'OWASP (service default)'}, Redis lockout, "
                f"{_mode(p)}, "
                f"wrk {p['connections']} connections, hot tokens; medians of {p['rounds']} rounds × {p['duration']:g} s"
            ),
            "",
            (
                f"(a) logins alone ({a['seconds']:.1f} s, {p['login_concurrency']} concurrent, right password): "
                f"{a['logins_per_s']:.1f} logins/s, p50 {fmt(a['login_p50_ms'] or float('nan'))} ms, "
                f"503 share {a['share_503']:.1%}, statuses {a['status']}"
            ),
            "",
            table(
                [
                    "(b) target",
                    "req/s",
                    "req/s min–max",
                    "p50 ms",
                    "p99 ms",
                    "server CPU cores",
                    "errors",
                ],
                rows,
            ),
            "",
            (
                f"storm ({p['storm_concurrency']} concurrent, client thread at nice {p.get('storm_nice', 0)}, "
                f"{p['wrong_share']:.0%} wrong passwords for unknown users, "
                f"distinct X-Forwarded-For IPs): median {sm['attempts_per_s']:.0f} attempts/s, "
                f"{sm['logins_per_s']:.1f} logins/s, 503 share {sm['share_503']:.1%}, 429 share {sm['share_429']:.1%}; "
                f"all statuses {dict(status_total)}"
            ),
            "what refused the storm: "
            + "; ".join(f"{k} {v[:110]}" for k, v in _bodies(data).items()),
            "",
            *trickle_line,
            table(
                ["storm / no storm", "ratio", "per round", "target", "verdict"],
                [
                    [
                        "verify req/s",
                        fmt_ratio(q["rps"]),
                        " ".join(f"{x:.2f}" for x in q["rps_per_round"]),
                        "≥ 0.85",
                        "met" if rps_ok else "NOT met",
                    ],
                    *trickle_rows,
                    ["verify p50", fmt_ratio(q["p50"]), "", "", ""],
                    [
                        "verify p99",
                        fmt_ratio(q["p99"]),
                        "",
                        "≤ 2.00",
                        "met" if p99_ok else "NOT met",
                    ],
                    [
                        "logins/s in storm / alone",
                        fmt_ratio(q["storm_logins_vs_alone"]),
                        "",
                        "",
                        "",
                    ],
                ],
            ),
            "",
            *(f"note: {line}" for line in data.get("verify_endpoints", [])),
            "note: "
            + SHARED_MACHINE_NOTE.format(cpus=data["machine"].get("cpus"))
            + "; the storm client runs in this process, also on these cores",
        ]
    )
