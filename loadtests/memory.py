"""Memory: verify N distinct tokens in one process and watch its RSS (is every cache bounded?).

One process, no HTTP: a Keyring on a throw-away SQLite file gives the current root key; tokens are
minted lazily in batches (`chain.sign` over the three caveats the service writes — subject,
expiry, generation — each with its own subject, + `encode_token`), so the token list never
exists as a whole; each is verified once through `tokensvc.tokens.verification.Verifier` with the
default `Limits` (chain cache bounded at its default size, 50,000) and a generation source that
keeps nothing per subject. RSS (VmRSS from /proc/self/status) is sampled every `--sample-every`
tokens. Reported: RSS at start, max and end, and the growth after the chain cache filled — which
should be near zero if every cache on the verify path is bounded.

What this does not cover: the service's SubjectGenerations (it keeps only raised generations),
aiohttp's per-request memory, and the database driver.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from loadtests.common import Deadline, loadavg_note, machine_info, table, write_results
from loadtests.micro import WarmGenerations, run_sync

CONTEXT = {"operation": "read", "resource": "/docs/1", "audience": "files"}


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
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    if not (
        1 <= args.tokens <= 20_000_000 and args.sample_every >= 1 and 1 <= args.batch <= 100_000
    ):
        parser.error("--tokens in 1..20,000,000, --sample-every ≥ 1, --batch in 1..100,000")
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
