"""Running the app: uvloop; one process, or verify workers and their lane, or plain workers."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Coroutine, Iterator
from ssl import SSLContext
from typing import Any

from aiohttp import web
from prometheus_client import multiprocess

from keystore import KeystoreError
from tokensvc.errors import TokensvcError
from tokensvc.operations.config import Config, ConfigError
from tokensvc.operations.logs import configure as configure_logging
from tokensvc.web.app import create_app
from tokensvc.web.fastverify import AppRunner, FastServer
from tokensvc.web.lane import LANE_NICE, Handoff, receive_connections
from tokensvc.web.tls import ssl_context


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every platform we ship
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


async def freeze_startup_objects(app: web.Application) -> None:
    """Move everything alive once the app has started out of the garbage collector's sight.

    Modules, the app, its stores and caches (~120,000 objects) live as long as the process, yet a
    full collection walks them all: ~60 ms of a stalled event loop each time, which lands in the
    /v1/verify p99 whenever enough new objects survive (a stream of distinct tokens). Frozen, they
    are skipped and a full collection walks only what was made since. Not for tests, which start
    many apps in one process: only `tokensvc serve` does it.
    """
    gc.collect()
    gc.freeze()


def _serve_one(
    config: Config, host: str, port: int, reuse_port: bool, lane: socket.socket | None = None
) -> None:
    """Serve the port; with `lane`, hand connections that are not verifying to the lane."""
    configure_logging(config.log_level)
    app = create_app(config)
    app.on_startup.append(freeze_startup_objects)  # after every cleanup context has started
    handoff = Handoff(lane) if lane is not None else None
    # Built here, in the worker: an SSLContext cannot be handed to a spawned process.
    serving = _serve(
        app, host=host, port=port, ssl=ssl_context(config), reuse_port=reuse_port, handoff=handoff
    )
    _run_loop(serving)


# A spawned process that failed to start and said why on one line: the supervisor stops the
# others without adding a line of its own.
_REPORTED_START_FAILURE = 3


def _in_child(target: Any, *args: Any) -> None:
    """Run a spawned process's `target`; a start-up failure is one line, not a traceback each.

    The same failures `tokensvc serve` reports on one line when it serves in its own process
    (the database or Redis unreachable, a key that does not decrypt, a port taken).
    """
    try:
        target(*args)
    except (TokensvcError, KeystoreError, OSError) as exc:
        message = exc.message if isinstance(exc, TokensvcError) else str(exc)
        print(f"Error: cannot start: {message}", file=sys.stderr, flush=True)
        sys.exit(_REPORTED_START_FAILURE)


def _serve_lane(config: Config, lanes: list[socket.socket]) -> None:
    """The lane process: serve the connections the verify workers hand over (web.lane)."""
    configure_logging(config.log_level)
    with contextlib.suppress(OSError):
        os.nice(LANE_NICE)
    app = create_app(config)
    app.on_startup.append(freeze_startup_objects)
    _run_loop(_lane(app, lanes))


def _run_loop(serving: Coroutine[Any, Any, None]) -> None:
    # asyncio.Runner ends as web.run_app does: the serving task (and so the app's cleanup) is
    # cancelled and awaited, then every other task and async generator, before the loop closes.
    with (
        contextlib.suppress(web.GracefulExit, KeyboardInterrupt),
        asyncio.Runner(loop_factory=_new_loop) as runner,
    ):
        runner.run(serving)  # until SIGTERM/SIGINT raise GracefulExit


def _runner(app: web.Application, handoff: Handoff | None = None) -> AppRunner:
    return AppRunner(
        app,
        handoff=handoff,
        access_log=None,  # one structured line per request comes from our own request pipeline
        handle_signals=True,  # SIGINT/SIGTERM raise GracefulExit: in-flight requests drain
        shutdown_timeout=10,
        keepalive_timeout=75,  # web.run_app's default
    )


async def _lane(app: web.Application, lanes: list[socket.socket]) -> None:
    runner = _runner(app)
    await runner.setup()
    server = runner.server
    assert server is not None  # noqa: S101 - narrows the type; setup() made it
    try:
        if isinstance(server, FastServer):
            # One socket pair per verify worker; until every one of them has stopped.
            await asyncio.gather(*(receive_connections(server, lane) for lane in lanes))
        else:
            # This aiohttp lacks what the fast path needs (AppRunner said which): the verify
            # workers, on the same aiohttp, hand nothing over. Idle until a signal ends the loop.
            await asyncio.Event().wait()
    finally:
        await runner.cleanup()


async def _serve(
    app: web.Application,
    *,
    host: str,
    port: int,
    ssl: SSLContext | None,
    reuse_port: bool,
    handoff: Handoff | None = None,
) -> None:
    """web.run_app's serving, on tokensvc.web.fastverify's runner (the fast /v1/verify path)."""
    runner = _runner(app, handoff)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=ssl, reuse_port=reuse_port or None)
        await site.start()
        print(f"======== Running on {site.name} ========\n(Press CTRL+C to quit)", file=sys.stderr)
        await asyncio.Event().wait()  # until a signal ends the loop
    finally:
        await runner.cleanup()
        if handoff is not None:
            handoff.close()  # the lane reads EOF and stops too


def lane_enabled(config: Config) -> bool:
    """Whether `serve` runs a lane process beside its verify workers (see tokensvc.web.lane).

    It needs the fast path (whose raw state says when a connection can move), no native TLS (a
    TLS session cannot move between processes) and Redis (lockout counts must be shared by the
    processes).
    """
    return (
        config.verify_process
        and config.fast_verify
        and not config.tls
        and config.redis_url is not None
    )


def run(config: Config, *, host: str, port: int, workers: int = 1) -> None:
    """Serve until interrupted; with workers > 1 each process accepts on the same port.

    The kernel spreads connections over the workers (SO_REUSEPORT). Workers share nothing in
    memory, so whatever must be shared lives in the database or Redis; each keeps its own caches,
    which is why revocations and generations are refreshed in the background. Prometheus metrics
    are written to a multiprocess directory so a scrape of any worker adds up all of them.
    """
    ssl_context(config)  # a bad certificate fails here, before any worker starts
    context = multiprocessing.get_context("spawn")
    if lane_enabled(config):
        # N verify workers on the port (SO_REUSEPORT when N > 1), each with its own socket
        # pair to one lane process: logins and the admin API stay off every verify loop.
        pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(workers)]
        verify = [
            context.Process(
                target=_in_child, args=(_serve_one, config, host, port, workers > 1, ours)
            )
            for ours, _theirs in pairs
        ]
        lane = context.Process(target=_in_child, args=(_serve_lane, config, [t for _o, t in pairs]))
        with _multiprocess_metrics_dir():
            _supervise([*verify, lane], inherited=tuple(s for pair in pairs for s in pair))
        return
    if workers == 1:
        _serve_one(config, host, port, reuse_port=False)
        return
    if config.redis_url is None:
        raise ConfigError("--workers > 1 needs TOKENSVC_REDIS_URL (lockout state must be shared)")
    with _multiprocess_metrics_dir():
        _supervise(
            [
                context.Process(target=_in_child, args=(_serve_one, config, host, port, True))
                for _ in range(workers)
            ]
        )


@contextlib.contextmanager
def _multiprocess_metrics_dir() -> Iterator[None]:
    """PROMETHEUS_MULTIPROC_DIR for the workers: the operator's, or a fresh one removed at exit."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        yield
        return
    # Set before any worker imports prometheus_client (workers are spawned, so they read it fresh).
    path = tempfile.mkdtemp(prefix="tokensvc-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    try:
        yield
    finally:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        shutil.rmtree(path, ignore_errors=True)


def _supervise(
    processes: list[multiprocessing.process.BaseProcess], inherited: tuple[socket.socket, ...] = ()
) -> None:
    """Start the processes; stop all of them when one dies or a signal arrives."""
    for process in processes:
        process.start()
    for sock in inherited:
        sock.close()  # the children have their copies; the lane must see EOF when ours close
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for process in processes:
            if process.is_alive():
                process.terminate()  # SIGTERM: aiohttp drains requests in flight, then exits

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # A worker that dies on its own takes the service down with a non-zero status, so the
    # process supervisor (systemd, Kubernetes) restarts the whole set in a known state.
    reaped: set[int] = set()
    while any(p.is_alive() for p in processes):
        for process in processes:
            process.join(timeout=0.5)
            if process.exitcode is not None and process.pid not in reaped:
                reaped.add(process.pid)  # type: ignore[arg-type]
                # The parent imported prometheus_client before the directory was set, so call
                # the multiprocess helper directly: it reads the directory at call time.
                multiprocess.mark_process_dead(process.pid)  # type: ignore[no-untyped-call]
            if not stopping and process.exitcode not in (None, 0):
                if process.exitcode == _REPORTED_START_FAILURE:
                    stop(signal.SIGTERM, None)  # it said why; the others follow it quietly
                    continue
                print(
                    f"tokensvc: worker {process.pid} exited with {process.exitcode}; stopping",
                    file=sys.stderr,
                )
                stop(signal.SIGTERM, None)
    if not stopping or any(p.exitcode not in (0, -signal.SIGTERM) for p in processes):
        sys.exit(1)
