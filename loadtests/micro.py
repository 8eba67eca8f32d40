"""In-process micro-benchmark: tokensvc's verify path against pymacaroons and a bare HMAC chain.

All variants verify the *same* macaroons (a pool of distinct tokens minted by tokensvc's Minter on
a real Keyring over a throw-away SQLite file), cycled in the same order:

- `floor`: the HMAC-SHA256 chain alone (`hmac.digest` per step + `compare_digest`) over the
  already-parsed identifier and caveats, with the derived key at hand — what no verifier can beat
  in Python.
- `ours`: `Verifier.verify(token)` — decode the `tsv1_` string (checksum, base64, binary v2),
  decode the identifier, root key from the keyring's memory cache, HMAC chain, caveat checks
  through `caveats`, the subject's generation from a warm in-memory cache. Driven without an event loop (the coroutine never suspends on a cache hit),
  so this is the token work alone. `ours, plain v2` is the same on the plain base64url v2 bytes that
  pymacaroons gets; `ours, cold caveat cache` clears the caveat-decode LRU before every call, so
  every predicate is JSON-decoded again (the "uncached" figure; the clear itself is included).
- `ours, await`/`ours, task`: the same call awaited in a running event loop (uvloop if present),
  directly (what the HTTP handler does) and wrapped in a task per call.
- `pymacaroons`: `Macaroon.deserialize` + the identifier decoded and the key looked up as ours does +
  a fresh `Verifier` whose `satisfy_general` callback checks each predicate against the request
  context with the same `caveats` checker + `verify(m, root_key)`. `pymacaroons, accept-all` is its
  lower bound: a reused Verifier whose callback accepts everything, key given.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hmac
import shutil
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from loadtests.common import (
    VerifyContext,
    fmt,
    fmt_ratio,
    loadavg_note,
    machine_info,
    median,
    ratio,
    spread,
    table,
    write_results,
)

CONTEXT: VerifyContext = {"operation": "read", "resource": "/docs/1", "audience": "files"}

# name → what to mint; "3" is what Minter writes for an unrestricted token.
TOKEN_KINDS: dict[str, dict[str, Any]] = {
    "3": {"label": "3 caveats: subject, expiry, generation", "restrict": False},
    "6": {
        "label": "6 caveats: + operations, resources, audience (the HTTP benchmark's token)",
        "restrict": True,
    },
}

VARIANTS = [
    ("harness", "harness: loop + call of a no-op"),
    ("floor", "floor: HMAC-SHA256 chain only"),
    ("ours", "ours: Verifier.verify, tsv1 token"),
    ("ours_plain", "ours: plain base64url v2 token"),
    ("ours_cold", "ours: cold caveat-decode cache"),
    ("ours_hit", "ours: chain-cache hit (a hot token)"),
    ("ours_await", "ours: awaited in a running loop"),
    ("ours_task", "ours: one asyncio task per verify"),
    ("pymacaroons", "pymacaroons: deserialize + Verifier, same checks"),
    ("pymacaroons_min", "pymacaroons: deserialize + Verifier, accept-all"),
]

RATIOS = [
    ("pymacaroons / ours", "pymacaroons", "ours", "goal ≥ 5×"),
    (
        "pymacaroons / ours (cold caveat cache)",
        "pymacaroons",
        "ours_cold",
        "every caveat JSON-decoded again too",
    ),
    ("pymacaroons accept-all / ours", "pymacaroons_min", "ours", "pymacaroons' lower bound"),
    ("ours / floor", "ours", "floor", "goal ≤ 1.5× (the bare Python HMAC chain)"),
    ("ours plain v2 / ours tsv1", "ours_plain", "ours", "prefix + CRC32 cost (≈1 = free)"),
    ("ours await / ours", "ours_await", "ours", "asyncio overhead of awaiting"),
    ("ours task / ours", "ours_task", "ours", "overhead of a task per call"),
    ("ours hit / ours", "ours_hit", "ours", "chain-cache hit against uncached"),
]


@dataclass
class Pool:
    kind: str
    tsv1: list[str]
    plain: list[str]
    parsed: list[tuple[bytes, list[bytes], bytes]]  # identifier, cids, signature
    caveats: int


class SuspendedError(RuntimeError):
    pass


class WarmGenerations:
    """A `GenerationSource` (tokensvc.tokens.verification) with every subject at 0.

    The service's SubjectGenerations also answers verifies from an in-memory dict (refreshed in
    the background), so this costs what the real one does on the verify path.
    """

    def current(self, subject: str) -> int:
        return 0

    async def fetch(self, subject: str) -> int:
        return 0


def run_sync(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that is expected to finish without suspending, with no event loop involved."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise SuspendedError("verify suspended (root key not in the keyring cache?)")


def _time_sync(fn: Callable[[Any], Any], items: list[Any], iterations: int) -> float:
    """µs per call of fn(items[i % len(items)])."""
    n = len(items)
    gc.collect()
    start = time.perf_counter_ns()
    for i in range(iterations):
        fn(items[i % n])
    return (time.perf_counter_ns() - start) / iterations / 1000.0


async def _time_async(
    fn: Callable[[Any], Coroutine[Any, Any, Any]], items: list[Any], iterations: int, *, task: bool
) -> float:
    n = len(items)
    loop = asyncio.get_running_loop()
    gc.collect()
    start = time.perf_counter_ns()
    if task:
        for i in range(iterations):
            await loop.create_task(fn(items[i % n]))
    else:
        for i in range(iterations):
            await fn(items[i % n])
    return (time.perf_counter_ns() - start) / iterations / 1000.0


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


async def _bench(iterations: int, rounds: int, pool_size: int, kinds: list[str]) -> dict[str, Any]:
    from pymacaroons import Macaroon as PMMacaroon
    from pymacaroons import Verifier as PMVerifier

    from caveats import Context, check_predicates
    from keystore import KeyEncryptionKey, Keyring, create_engine
    from tokensvc.errors import InvalidToken
    from tokensvc.macaroons import chain
    from tokensvc.macaroons.identifier import decode_identifier
    from tokensvc.macaroons.tokenformat import decode_token
    from tokensvc.storage.migrate import upgrade
    from tokensvc.tokens.minting import Minter, MintRequest
    from tokensvc.tokens.verification import Limits, Verifier

    try:
        from caveats.checker import clear_decode_cache

        cache_clear: Callable[[], None] | None = clear_decode_cache
    except ImportError:
        cache_clear = None

    tmp = tempfile.mkdtemp(prefix="tokensvc-bench-micro-")
    engine = create_engine(f"sqlite+aiosqlite:///{tmp}/bench.db")
    try:
        await upgrade(engine)
        keyring = Keyring(engine, kek=KeyEncryptionKey.load(data_dir=tmp))
        generations = WarmGenerations()
        minter = Minter(
            keyring, generations=generations, location="bench", clock=lambda: datetime.now(UTC)
        )
        # The "uncached" figures: no chain cache, so every call decodes and runs every HMAC.
        verifier = Verifier(keyring, limits=Limits(cache_entries=0), generations=generations)
        cached_verifier = Verifier(keyring, limits=Limits(), generations=generations)
        limits = Limits()

        pools: dict[str, Pool] = {}
        for kind in kinds:
            restrict = TOKEN_KINDS[kind]["restrict"]
            tsv1: list[str] = []
            for _i in range(pool_size):
                minted = await minter.mint(
                    MintRequest(
                        subject="bench",
                        ttl=timedelta(hours=1),
                        operations=("read", "write") if restrict else (),
                        resources=("/docs/*",) if restrict else (),
                        audiences=("files",) if restrict else (),
                    )
                )
                tsv1.append(minted.token)
            parsed_macaroons = [
                decode_token(t, max_bytes=limits.max_token_bytes, max_caveats=limits.max_caveats)
                for t in tsv1
            ]
            # The plain form: base64url of the same binary v2 bytes, no prefix or checksum.
            plain = [t[len("tsv1_") :].rpartition(".")[0] for t in tsv1]
            pools[kind] = Pool(
                kind=kind,
                tsv1=tsv1,
                plain=plain,
                parsed=[
                    (m.identifier, [c.cid for c in m.caveats], m.signature)
                    for m in parsed_macaroons
                ],
                caveats=len(parsed_macaroons[0].caveats),
            )

        # Warm the key cache through the real path once (a miss may go to the database).
        first = next(iter(pools.values()))
        await verifier.verify(first.tsv1[0], **CONTEXT)
        key_id = decode_identifier(
            decode_token(first.tsv1[0], max_bytes=16384, max_caveats=128).identifier
        ).key_id
        root_key = keyring.get_cached(key_id)
        if root_key is None:
            raise RuntimeError("root key not cached after a verify; the benchmark needs the cache")
        derived = root_key.derived
        secret = root_key.secret.reveal()

        # ---- the variants ---------------------------------------------------------------------

        def harness(_token: str) -> None:
            return None

        def floor(item: tuple[bytes, list[bytes], bytes]) -> bool:
            identifier, cids, signature = item
            sig = hmac.digest(derived, identifier, "sha256")
            for cid in cids:
                sig = hmac.digest(sig, cid, "sha256")
            return hmac.compare_digest(sig, signature)

        def ours(token: str) -> Any:
            return run_sync(verifier.verify(token, **CONTEXT))

        def ours_hit(token: str) -> Any:
            return run_sync(cached_verifier.verify(token, **CONTEXT))

        def ours_cold(token: str) -> Any:
            assert cache_clear is not None
            cache_clear()
            return run_sync(verifier.verify(token, **CONTEXT))

        async def ours_async(token: str) -> Any:
            return await verifier.verify(token, **CONTEXT)

        def pymacaroons_full(token: str) -> bool:
            m = PMMacaroon.deserialize(token)
            # A pymacaroons-based service also has to find the root key from the identifier.
            ident = decode_identifier(m.identifier_bytes)
            key = keyring.get_cached(ident.key_id)
            assert key is not None
            ctx = Context(
                now=time.time(),
                operation=CONTEXT["operation"],
                resource=CONTEXT["resource"],
                audience=CONTEXT["audience"],
            )
            v = PMVerifier()
            v.satisfy_general(lambda predicate: not check_predicates((predicate,), ctx).failures)
            return bool(v.verify(m, key.secret.reveal()))

        accept_all = PMVerifier()
        accept_all.satisfy_general(lambda predicate: True)

        def pymacaroons_min(token: str) -> bool:
            return bool(accept_all.verify(PMMacaroon.deserialize(token), secret))

        def items_for(variant: str, pool: Pool) -> list[Any]:
            if variant == "floor":
                return pool.parsed
            if variant in ("ours_plain", "pymacaroons", "pymacaroons_min"):
                return pool.plain
            return pool.tsv1

        sync_fns: dict[str, Callable[[Any], Any]] = {
            "harness": harness,
            "floor": floor,
            "ours": ours,
            "ours_plain": ours,
            "ours_hit": ours_hit,
            "pymacaroons": pymacaroons_full,
            "pymacaroons_min": pymacaroons_min,
        }
        if cache_clear is not None:
            sync_fns["ours_cold"] = ours_cold
        variants = [v for v, _ in VARIANTS if v in sync_fns or v in ("ours_await", "ours_task")]

        # ---- sanity: every variant accepts the pool, and a tampered token is refused ----------
        for pool in pools.values():
            for variant in variants:
                items = items_for(variant, pool)
                if variant in ("ours_await", "ours_task"):
                    result = await ours_async(items[0])
                else:
                    result = sync_fns[variant](items[0])
                if variant != "harness" and not result:
                    raise RuntimeError(f"{variant} did not accept a good {pool.kind}-caveat token")
            ident, cids, sig = pool.parsed[0]
            if floor((ident, cids, bytes([sig[0] ^ 1]) + sig[1:])):
                raise RuntimeError("floor accepted a bad signature")
            tampered = _tamper(pool.plain[0])
            try:
                run_sync(verifier.verify(tampered, **CONTEXT))
                raise RuntimeError("ours accepted a tampered token")
            except InvalidToken:
                refused = True
            try:
                refused = not pymacaroons_full(tampered)
            except Exception:  # noqa: BLE001 - pymacaroons raises several kinds
                refused = True
            if not refused:
                raise RuntimeError("pymacaroons accepted a tampered token")

        # ---- measurement ----------------------------------------------------------------------
        async def measure(variant: str, pool: Pool, n: int) -> float:
            items = items_for(variant, pool)
            if variant == "ours_await":
                return await _time_async(ours_async, items, n, task=False)
            if variant == "ours_task":
                return await _time_async(ours_async, items, n, task=True)
            return _time_sync(sync_fns[variant], items, n)

        samples: dict[str, dict[str, list[float]]] = {k: {v: [] for v in variants} for k in pools}
        warm_n = max(1, iterations // 10)
        for pool in pools.values():
            for variant in variants:
                await measure(variant, pool, warm_n)
        for r in range(rounds):
            for pool in pools.values():
                # Rotate the order each round, so drift on a noisy machine hits every variant.
                order = variants[r % len(variants) :] + variants[: r % len(variants)]
                for variant in order:
                    samples[pool.kind][variant].append(await measure(variant, pool, iterations))
        # The goal's ratio again, drift-proof: floor and ours back to back in short chunks, so a
        # host that slows down for seconds (steal on a shared VM) slows both sides of each pair.
        chunk = max(200, iterations // 20)
        paired: dict[str, list[float]] = {}
        for pool in pools.values():
            floor_items, ours_items = items_for("floor", pool), items_for("ours", pool)
            paired[pool.kind] = [
                _time_sync(sync_fns["ours"], ours_items, chunk)
                / _time_sync(sync_fns["floor"], floor_items, chunk)
                for _ in range(rounds * 8)
            ]
    finally:
        await engine.dispose()
        shutil.rmtree(tmp, ignore_errors=True)

    results: dict[str, Any] = {}
    for kind, by_variant in samples.items():
        medians = {v: median(s) for v, s in by_variant.items()}
        results[kind] = {
            "label": TOKEN_KINDS[kind]["label"],
            "caveats": pools[kind].caveats,
            "token_bytes": len(pools[kind].tsv1[0]),
            "us_per_op_median": medians,
            "us_per_op_rounds": by_variant,
            "ratios": {
                name: ratio(medians.get(a, float("nan")), medians.get(b, float("nan")))
                for name, a, b, _ in RATIOS
            },
            "ours_floor_paired": {
                "median": median(paired[kind]),
                "min": min(paired[kind]),
                "max": max(paired[kind]),
                "pairs": len(paired[kind]),
                "calls_per_side": chunk,
            },
        }
    return {
        "params": {"iterations": iterations, "rounds": rounds, "pool": pool_size, "kinds": kinds},
        "cold_cache_variant": cache_clear is not None,
        "verify_path": "compiled" if chain.COMPILED else "pure Python",
        "results": results,
    }


def _tamper(plain: str) -> str:
    """Flip one bit of the signature (the last bytes of a v2 macaroon)."""
    import base64

    raw = bytearray(base64.urlsafe_b64decode(plain + "=" * (-len(plain) % 4)))
    raw[-1] ^= 1
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


def render(data: dict[str, Any]) -> str:
    p = data["params"]
    out = [
        (
            f"micro: in-process verify, µs/op = median of {p['rounds']} rounds × "
            f"{p['iterations']:,} calls per variant; tokens cycled over a pool of {p['pool']} "
            f"distinct tokens; verify path: {data.get('verify_path', 'unknown')}"
        ),
    ]
    labels = dict(VARIANTS)
    for res in data["results"].values():
        ours = res["us_per_op_median"].get("ours", float("nan"))
        rows = [
            [
                labels[variant],
                fmt(value),
                spread(res["us_per_op_rounds"][variant]),
                fmt_ratio(ratio(value, ours)),
            ]
            for variant, value in res["us_per_op_median"].items()
        ]
        out += [
            "",
            f"token: {res['label']} ({res['token_bytes']} characters as tsv1)",
            table(["variant", "µs/op", "min–max", "vs ours"], rows),
            "",
            table(
                ["ratio (of medians)", "value", "meaning"],
                [[name, fmt_ratio(res["ratios"][name]), note] for name, _, _, note in RATIOS],
                right={1},
            ),
        ]
        pair = res.get("ours_floor_paired")
        if pair:
            out.append(
                f"ours / floor, paired: {fmt_ratio(pair['median'])} (median of {pair['pairs']} "
                f"back-to-back pairs of {pair['calls_per_side']:,} calls each; "
                f"{pair['min']:.2f}–{pair['max']:.2f}): the goal's ratio with host drift cancelled"
            )
    if not data.get("cold_cache_variant"):
        out.append("(cold-cache variant skipped: caveats.checker._parse_cached not found)")
    out.append(
        "one process, one core; pymacaroons derives its key per call (its API takes the root key), "
        "ours gets the derived key from the keyring cache"
    )
    return "\n".join(out)


def run(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests micro", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--iterations", type=int, default=20000, help="calls per variant per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pool", type=int, default=256, help="distinct tokens cycled through")
    parser.add_argument(
        "--caveats", default="3,6", help="token kinds to run, comma-separated from: 3,6"
    )
    parser.add_argument("--no-save", action="store_true", help="do not write a results file")
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.caveats.split(",") if k.strip()]
    for k in kinds:
        if k not in TOKEN_KINDS:
            parser.error(f"--caveats: unknown kind {k!r} (choose from {', '.join(TOKEN_KINDS)})")
    if args.iterations < 1 or args.rounds < 1 or not 1 <= args.pool <= 100_000:
        parser.error("--iterations and --rounds must be ≥ 1, --pool in 1..100000")

    note = loadavg_note()
    print(f"micro: starting ({note})" if note else "micro: starting", flush=True)
    info = machine_info()
    loop = _new_loop()
    try:
        data = loop.run_until_complete(_bench(args.iterations, args.rounds, args.pool, kinds))
    finally:
        loop.close()
    data["machine"] = info
    data["loop"] = type(loop).__module__ + "." + type(loop).__name__
    print(render(data), flush=True)
    if not args.no_save:
        path = write_results("micro", data)
        print(f"results: {path}")
    return data
