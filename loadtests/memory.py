"""Memory: verify N distinct tokens in one process and watch its RSS (is every cache bounded?).

One process, no HTTP: a Keyring on a throw-away SQLite file gives the current root key; tokens are
minted lazily in batches (`chain.sign` over the three caveats the service writes — subject,
expiry, generation — each with its own subject, + `encode_token`), so the token list never
exists as a whole; each is verified once through `tokensvc.tokens.verification.Verifier` with the
default `Limits` (chain cache bounded at its default size, 50,000) and a generation source that
keeps nothing per subject. RSS (VmRSS from /proc/self/status) is sampled every `--sample-every`
tokens. Reported: RSS at start, max and end, and the growth after the chain cache filled — which
should be near zero if every cache on the verify path is bounded.

That is `--in-process`. By default the same count goes over HTTP to a running `tokensvc serve`
(one worker, embedded SQLite; `--workers N` adds Redis and N verify workers and their lane), to its
verify listener (TOKENSVC_VERIFY_PORT; the app port when it does not answer or with
`--app-port-verify`), each token sent once, and the RSS of every process of the service is sampled:
issue 7's bound is per worker, 150 MB after 1,000,000 distinct tokens. Minting a million tokens
through POST /v1/tokens would take hours (~100 tokens/s), so this process mints them with the
service's own `Minter` on the service's own keyring (the same data directory: its root key and
KEK), with the body POST /v1/tokens would send; what it skips is the registry row and the audit
row, which the verify path never reads (a last-use flush then updates no row). Every answer must
be 200.

What the in-process mode does not cover: the service's SubjectGenerations (it keeps only raised
generations), aiohttp's per-request memory, and the database driver.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from loadtests.common import (
    Deadline,
    VerifyContext,
    free_ports,
    loadavg_note,
    machine_info,
    process_tree,
    table,
    write_results,
)
from loadtests.micro import WarmGenerations, run_sync

CONTEXT: VerifyContext = {"operation": "read", "resource": "/docs/1", "audience": "files"}


def rss_kib() -> int:
    """This process's resident set size in KiB (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def _token_batches(derived: bytes, key_id: str, n: int, batch: int) -> Iterator[list[str]]:
    from caveats import Expiry, Generation, Subject, encode
    from tokensvc.macaroons import chain
    from tokensvc.macaroons.identifier import new_identifier
    from tokensvc.macaroons.macaroon import Caveat
    from tokensvc.macaroons.tokenformat import encode_token

    expiry = encode(Expiry(int((datetime.now(UTC) + timedelta(hours=2)).timestamp())))
    generation = encode(Generation(0))
    for start in range(0, n, batch):
        out = []
        for i in range(start, min(n, start + batch)):
            macaroon = chain.sign(
                derived_key=derived,
                identifier=new_identifier(key_id=key_id).encode(),
                caveats=[
                    Caveat(encode(Subject(f"mem-{i:08d}"))),
                    Caveat(expiry),
                    Caveat(generation),
                ],
                location=b"bench",
            )
            out.append(encode_token(macaroon))
        yield out


async def _measure(n: int, sample_every: int, batch: int, seconds: float) -> dict[str, Any]:
    from keystore import KeyEncryptionKey, Keyring, create_engine
    from tokensvc.storage.migrate import upgrade
    from tokensvc.tokens.verification import Limits, Verifier

    tmp = tempfile.mkdtemp(prefix="tokensvc-bench-memory-")
    engine = create_engine(f"sqlite+aiosqlite:///{tmp}/bench.db")
    try:
        await upgrade(engine)
        keyring = Keyring(engine, kek=KeyEncryptionKey.load(data_dir=tmp))
        key = await keyring.current()
        limits = Limits()
        verifier = Verifier(keyring, limits=limits, generations=WarmGenerations())
        gc.collect()
        samples: list[dict[str, Any]] = []
        start_rss = rss_kib()
        samples.append({"tokens": 0, "rss_kib": start_rss, "cache": 0, "seconds": 0.0})
        deadline = Deadline(seconds)
        t0 = time.monotonic()
        done = 0
        truncated = False
        next_sample = sample_every
        for tokens in _token_batches(key.derived, key.id, n, batch):
            for token in tokens:
                # The first verify of a token: a chain-cache miss, the full path.
                if run_sync(verifier.verify(token, **CONTEXT)).subject is None:
                    raise RuntimeError("verified token without a subject")
            done += len(tokens)
            if done >= next_sample or done == n:
                next_sample += sample_every
                samples.append(
                    {
                        "tokens": done,
                        "rss_kib": rss_kib(),
                        "cache": len(verifier.cache),
                        "seconds": time.monotonic() - t0,
                    }
                )
                s = samples[-1]
                print(
                    f"memory: {done:>9,} tokens  RSS {s['rss_kib'] / 1024:7.1f} MiB  "
                    f"chain cache {s['cache']:>6,}  {done / s['seconds']:,.0f} tokens/s",
                    flush=True,
                )
            if deadline.passed:
                truncated = True
                print(
                    f"memory: --max-seconds {seconds:g} reached after {done:,} tokens; stopping",
                    flush=True,
                )
                break
            del tokens
        elapsed = time.monotonic() - t0
    finally:
        await engine.dispose()
        shutil.rmtree(tmp, ignore_errors=True)
    cache_max = limits.cache_entries
    filled = next((s for s in samples if s["cache"] >= cache_max), None)
    end = samples[-1]
    return {
        "tokens": done,
        "truncated": truncated,
        "seconds": elapsed,
        "tokens_per_s": done / elapsed if elapsed else float("nan"),
        "cache_entries_limit": cache_max,
        "samples": samples,
        "rss_start_kib": start_rss,
        "rss_max_kib": max(s["rss_kib"] for s in samples),
        "rss_end_kib": end["rss_kib"],
        "cache_filled_at": filled["tokens"] if filled else None,
        "rss_at_cache_full_kib": filled["rss_kib"] if filled else None,
        "growth_after_cache_full_kib": end["rss_kib"] - filled["rss_kib"] if filled else None,
        "tokens_after_cache_full": end["tokens"] - filled["tokens"] if filled else 0,
    }


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests memory", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--tokens", type=int, default=1_000_000, help="distinct tokens (default 1,000,000)"
    )
    parser.add_argument(
        "--sample-every", type=int, default=50_000, help="RSS sample interval (default 50,000)"
    )
    parser.add_argument(
        "--batch", type=int, default=5_000, help="tokens minted per batch (default 5,000)"
    )
    parser.add_argument(
        "--max-seconds", type=float, default=900.0, help="stop after this long (default 900)"
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="verify in this process through Verifier (no HTTP, no service): the old measure",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="tokensvc serve --workers N (N > 1 uses Redis, --redis-url; default 1)",
    )
    parser.add_argument(
        "--redis-url",
        default=None,
        help="run the service with Redis (lockout) at this URL, under a prefix deleted at the end "
        "(default: none for one worker, redis://127.0.0.1:6379/0 for more)",
    )
    parser.add_argument(
        "--connections", type=int, default=32, help="keep-alive connections (default 32)"
    )
    parser.add_argument(
        "--app-port-verify",
        action="store_true",
        help="send /v1/verify to the app port, not the verify listener (TOKENSVC_VERIFY_PORT)",
    )
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    if not (
        1 <= args.tokens <= 20_000_000 and args.sample_every >= 1 and 1 <= args.batch <= 100_000
    ):
        parser.error("--tokens in 1..20,000,000, --sample-every ≥ 1, --batch in 1..100,000")
    if not (1 <= args.workers <= 64 and 1 <= args.connections <= 1000):
        parser.error("--workers in 1..64, --connections in 1..1000")
    if not args.in_process:
        note = loadavg_note()
        print(
            f"memory: verifying {args.tokens:,} distinct tokens over HTTP, `tokensvc serve` "
            f"with {args.workers} worker(s)" + (f"; {note}" if note else ""),
            flush=True,
        )
        data = {
            "params": {k: v for k, v in vars(args).items() if k != "no_save"},
            "machine": machine_info(),
            "mode": "http",
            **run_http(args),
        }
        print()
        print(render_http(data), flush=True)
        if not args.no_save:
            print(f"results: {write_results('memory', data)}")
        return 0 if all(q["within_goal"] for q in data["processes"].values()) else 1
    note = loadavg_note()
    print(
        f"memory: verifying {args.tokens:,} distinct tokens in-process"
        + (f"; {note}" if note else ""),
        flush=True,
    )
    result = asyncio.run(_measure(args.tokens, args.sample_every, args.batch, args.max_seconds))
    data = {
        "params": {k: v for k, v in vars(args).items() if k != "no_save"},
        "machine": machine_info(),
        "mode": "in-process",
        **result,
    }
    print()
    print(render(data), flush=True)
    if not args.no_save:
        print(f"results: {write_results('memory', data)}")
    return 0


def render(data: dict[str, Any]) -> str:
    def mib(kib: int | None) -> str:
        return "n/a" if kib is None else f"{kib / 1024:.1f}"

    rows = [
        ["RSS at start (MiB)", mib(data["rss_start_kib"])],
        ["RSS max (MiB)", mib(data["rss_max_kib"])],
        ["RSS at end (MiB)", mib(data["rss_end_kib"])],
        [
            f"RSS when the chain cache filled ({data['cache_entries_limit']:,} entries)",
            mib(data["rss_at_cache_full_kib"])
            + (f" at {data['cache_filled_at']:,} tokens" if data["cache_filled_at"] else ""),
        ],
        [
            "growth after the cache filled (MiB)",
            mib(data["growth_after_cache_full_kib"])
            + f" over {data['tokens_after_cache_full']:,} more tokens",
        ],
        [
            "tokens verified",
            f"{data['tokens']:,}" + (" (time limit hit)" if data["truncated"] else ""),
        ],
        ["throughput (mint + verify, tokens/s)", f"{data['tokens_per_s']:,.0f}"],
    ]
    lines = [
        "memory: distinct tokens, each verified once through Verifier (default Limits), one process",
        table(["figure", "value"], rows),
    ]
    if data["cache_filled_at"] is None:
        lines.append(
            f"note: fewer tokens than the chain cache holds ({data['cache_entries_limit']:,}): "
            "RSS had no chance to flatten; use --tokens ≥ 200000 for the real figure"
        )
    return "\n".join(lines)


# ---- over HTTP, against `tokensvc serve` ------------------------------------------------------------

GOAL_BYTES = 150_000_000  # issue 7: RSS ≤ 150 MB per worker after 1,000,000 distinct tokens


def _rss_of(pid: int) -> int:
    """VmRSS of `pid` in KiB; -1 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return -1


def _describe(pid: int, root: int) -> str:
    """A short name for a process of the service (spawned workers share one cmdline)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "gone"
    text = " ".join(a.decode(errors="replace") for a in argv if a)
    if pid == root:
        return "tokensvc serve (main)"
    if "multiprocessing" in text:
        return "spawned child"
    return text[:40]


def _tree_rss(root: int) -> dict[int, int]:
    return {pid: _rss_of(pid) for pid in process_tree(root)}


async def _send_each_once(port: int, requests: list[bytes], connections: int) -> Counter[int]:
    """POST each request once over `connections` keep-alive connections; the status counts."""
    statuses: Counter[int] = Counter()
    state = {"next": 0}

    async def worker() -> None:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
        try:
            while state["next"] < len(requests):
                i = state["next"]
                state["next"] = i + 1
                writer.write(requests[i])
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await asyncio.wait_for(reader.readexactly(length), 30)
                statuses[int(head[9:12])] += 1
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(min(connections, len(requests)))))
    return statuses


async def _measure_http(
    svc_env: dict[str, str],
    root_pid: int,
    port: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    from loadtests.pyload import _build_requests
    from tokensvc.composition import runtime, utc_now
    from tokensvc.operations.config import Config
    from tokensvc.tokens.minting import Minter, MintRequest

    config = Config.from_env(svc_env)
    samples: list[dict[str, Any]] = []
    statuses: Counter[int] = Counter()
    deadline = Deadline(args.max_seconds)
    mint_s = send_s = 0.0
    done = 0
    truncated = False
    samples.append({"tokens": 0, "seconds": 0.0, "rss_kib": _tree_rss(root_pid)})
    t0 = time.monotonic()
    next_sample = args.sample_every
    # The service's composition on its own data directory (as `tokensvc token mint --local`),
    # and a Minter of that keyring that registers nothing (see the module's docstring).
    async with runtime(config, serving=False) as built:
        minter = Minter(
            built.keyring, generations=WarmGenerations(), location=config.location, clock=utc_now
        )
        while done < args.tokens:
            started = time.monotonic()
            bodies = []
            for i in range(done, min(args.tokens, done + args.batch)):
                # What POST /v1/tokens asks for in the http benchmark (6 caveats).
                asked = MintRequest(
                    subject=f"mem-{i:08d}",
                    ttl=timedelta(hours=2),
                    operations=("read", "write"),
                    resources=("/docs/*",),
                    audiences=("files",),
                )
                minted = await minter.mint(asked)
                bodies.append(
                    json.dumps(
                        {"token": minted.token, "context": CONTEXT}, separators=(",", ":")
                    ).encode()
                )
            mint_s += time.monotonic() - started
            started = time.monotonic()
            requests = _build_requests("127.0.0.1", port, "/v1/verify", bodies)
            statuses.update(await _send_each_once(port, requests, args.connections))
            send_s += time.monotonic() - started
            done += len(bodies)
            if done >= next_sample or done == args.tokens:
                next_sample += args.sample_every
                rss = _tree_rss(root_pid)
                samples.append({"tokens": done, "seconds": time.monotonic() - t0, "rss_kib": rss})
                shown = "  ".join(f"{pid}: {kib / 1024:6.1f}" for pid, kib in rss.items())
                print(
                    f"memory: {done:>9,} tokens  RSS MiB {shown}  "
                    f"{done / (time.monotonic() - t0):,.0f} tokens/s  statuses {dict(statuses)}",
                    flush=True,
                )
            if set(statuses) - {200}:
                raise RuntimeError(f"non-200 answers to /v1/verify: {dict(statuses)}")
            if deadline.passed:
                truncated = True
                print(f"memory: --max-seconds {args.max_seconds:g} reached after {done:,} tokens")
                break
    elapsed = time.monotonic() - t0
    return {
        "tokens": done,
        "truncated": truncated,
        "seconds": elapsed,
        "tokens_per_s": done / elapsed if elapsed else float("nan"),
        "mint_seconds": mint_s,
        "send_seconds": send_s,
        "statuses": {str(k): v for k, v in statuses.items()},
        "cache_entries_limit": config.verify_cache_entries,
        "samples": samples,
        "processes": per_process(samples, config.verify_cache_entries),
    }


def per_process(samples: list[dict[str, Any]], cache_entries: int) -> dict[str, dict[str, Any]]:
    """Each process's RSS at start, max, end, when `cache_entries` tokens had been sent, and the
    growth since then (KiB; None where it does not apply); pids as strings (JSON keys)."""
    pids: list[int] = []
    for s in samples:
        pids.extend(int(p) for p in s["rss_kib"] if int(p) not in pids)
    out: dict[str, dict[str, Any]] = {}
    for pid in pids:
        seen = [
            (s["tokens"], kib)
            for s in samples
            for p, kib in s["rss_kib"].items()
            if int(p) == pid and kib >= 0
        ]
        if not seen:
            continue
        full = next(((t, k) for t, k in seen if t >= cache_entries), None)
        out[str(pid)] = {
            "start_kib": seen[0][1],
            "max_kib": max(k for _t, k in seen),
            "end_kib": seen[-1][1],
            "end_tokens": seen[-1][0],
            "cache_full_kib": full[1] if full else None,
            "growth_after_cache_full_kib": seen[-1][1] - full[1] if full else None,
            "within_goal": max(k for _t, k in seen) * 1024 <= GOAL_BYTES,
        }
    return out


def run_http(args: argparse.Namespace) -> dict[str, Any]:
    from loadtests.httpbench import _start, _tokensvc_bin, use_verify_ports
    from loadtests.svc import base_env, check_redis, delete_prefix, start_tokensvc, unique_prefix

    workdir = Path(tempfile.mkdtemp(prefix="tokensvc-bench-memory-http-"))
    port, verify_port = free_ports(2)
    redis_url = args.redis_url or ("redis://127.0.0.1:6379/0" if args.workers > 1 else None)
    prefix = None
    try:
        if redis_url:
            check_redis(redis_url)
            prefix = unique_prefix("memory")
            svc = start_tokensvc(
                "tokensvc",
                workdir,
                redis_url=redis_url,
                prefix=prefix,
                port=port,
                data_dir=workdir / "data",
                workers=args.workers,
            )
            server, env, verify_port = svc.server, svc.env, svc.verify_port
        else:
            env = dict(
                base_env(),
                TOKENSVC_DATA_DIR=str(workdir / "data"),
                TOKENSVC_PORT=str(port),
                TOKENSVC_VERIFY_PORT=str(verify_port),
                TOKENSVC_HOST="127.0.0.1",
            )
            server = _start("tokensvc", [_tokensvc_bin(), "serve"], env, port, workdir, None)
        try:
            server.wait_healthy()
            endpoints = use_verify_ports([(server, verify_port)], app_port=args.app_port_verify)
            for line in endpoints:
                print(f"memory: {line}", flush=True)
            target_port = server.verify_port or server.port
            result = asyncio.run(_measure_http(env, server.proc.pid, target_port, args))
            labels = {pid: _describe(int(pid), server.proc.pid) for pid in result["processes"]}
            if server.proc.poll() is not None:
                raise RuntimeError(f"tokensvc died; its log:\n{server.log_tail()}")
        finally:
            server.stop()
    finally:
        if redis_url and prefix:
            delete_prefix(redis_url, prefix)
        shutil.rmtree(workdir, ignore_errors=True)
    return {**result, "verify_endpoints": endpoints, "labels": labels}


def render_http(data: dict[str, Any]) -> str:
    def mib(kib: int | None) -> str:
        return "n/a" if kib is None else f"{kib / 1024:.1f}"

    rows = []
    for pid, q in data["processes"].items():
        rows.append(
            [
                f"{data['labels'].get(pid, '?')} (pid {pid})",
                mib(q["start_kib"]),
                mib(q["max_kib"]),
                mib(q["end_kib"]),
                mib(q["cache_full_kib"]),
                mib(q["growth_after_cache_full_kib"]),
                "met" if q["within_goal"] else "NOT met",
            ]
        )
    p = data["params"]
    lines = [
        (
            f"memory: {data['tokens']:,} distinct tokens, each verified once over HTTP by "
            f"`tokensvc serve` ({p['workers']} worker(s)); RSS per process"
        ),
        table(
            [
                "process",
                "RSS at start (MiB)",
                "RSS max (MiB)",
                "RSS at end (MiB)",
                f"at {data['cache_entries_limit']:,} tokens",
                "growth after the cache filled (MiB)",
                f"max ≤ {GOAL_BYTES / 1e6:.0f} MB",
            ],
            rows,
        ),
        "",
        (
            f"tokens verified: {data['tokens']:,}"
            + (" (time limit hit)" if data["truncated"] else "")
            + f"; {data['tokens_per_s']:,.0f} tokens/s in all (minting {data['mint_seconds']:.0f} s, "
            f"sending {data['send_seconds']:.0f} s); answers {data['statuses']}"
        ),
        *(f"note: {line}" for line in data["verify_endpoints"]),
        "note: tokens minted in this process by the service's own Minter on its keyring, not "
        "registered (no registry or audit row: the verify path reads neither)",
    ]
    if data["tokens"] < data["cache_entries_limit"]:
        lines.append(
            f"note: fewer tokens than the chain cache holds ({data['cache_entries_limit']:,}): "
            "RSS had no chance to flatten; use --tokens ≥ 200000 for the real figure"
        )
    return "\n".join(lines)
