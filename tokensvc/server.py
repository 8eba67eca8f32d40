"""Running the app: uvloop, one or several worker processes on one port (SO_REUSEPORT)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from ssl import SSLContext

from aiohttp import web
from prometheus_client import multiprocess

from tokensvc.config import Config, ConfigError
from tokensvc.logs import configure as configure_logging
from tokensvc.tls import ssl_context
from tokensvc.web.app import create_app
from tokensvc.web.fastverify import AppRunner


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


def _serve_one(config: Config, host: str, port: int, reuse_port: bool) -> None:
    configure_logging(config.log_level)
    app = create_app(config)
    app.on_startup.append(freeze_startup_objects)  # after every cleanup context has started
    # Built here, in the worker: an SSLContext cannot be handed to a spawned process.
    serving = _serve(app, host=host, port=port, ssl=ssl_context(config), reuse_port=reuse_port)
    # asyncio.Runner ends as web.run_app does: the serving task (and so the app's cleanup) is
    # cancelled and awaited, then every other task and async generator, before the loop closes.
    with (
        contextlib.suppress(web.GracefulExit, KeyboardInterrupt),
        asyncio.Runner(loop_factory=_new_loop) as runner,
    ):
        runner.run(serving)  # until SIGTERM/SIGINT raise GracefulExit


async def _serve(
    app: web.Application, *, host: str, port: int, ssl: SSLContext | None, reuse_port: bool
) -> None:
    """web.run_app's serving, on tokensvc.web.fastverify's runner (the fast /v1/verify path)."""
    runner = AppRunner(
        app,
        access_log=None,  # one structured line per request comes from our own request pipeline
        handle_signals=True,  # SIGINT/SIGTERM raise GracefulExit: in-flight requests drain
        shutdown_timeout=10,
        keepalive_timeout=75,  # web.run_app's default
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=ssl, reuse_port=reuse_port or None)
        await site.start()
        print(f"======== Running on {site.name} ========\n(Press CTRL+C to quit)", file=sys.stderr)
        await asyncio.Event().wait()  # until a signal ends the loop
    finally:
        await runner.cleanup()


def run(config: Config, *, host: str, port: int, workers: int = 1) -> None:
    """Serve until interrupted; with workers > 1 each process accepts on the same port.

    The kernel spreads connections over the workers (SO_REUSEPORT). Workers share nothing in
    memory, so whatever must be shared lives in the database or Redis; each keeps its own caches,
    which is why revocations and generations are refreshed in the background. Prometheus metrics
    are written to a multiprocess directory so a scrape of any worker adds up all of them.
    """
    ssl_context(config)  # a bad certificate fails here, before any worker starts
    if workers == 1:
        _serve_one(config, host, port, reuse_port=False)
        return
    if config.redis_url is None:
        raise ConfigError("--workers > 1 needs TOKENSVC_REDIS_URL (lockout state must be shared)")
    with _multiprocess_metrics_dir():
        _supervise(config, host, port, workers)


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


def _supervise(config: Config, host: str, port: int, workers: int) -> None:
    """Start the workers; stop all of them when one dies or a signal arrives."""
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_serve_one, args=(config, host, port, True), daemon=False)
        for _ in range(workers)
    ]
    for process in processes:
        process.start()
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
                print(
                    f"tokensvc: worker {process.pid} exited with {process.exitcode}; stopping",
                    file=sys.stderr,
                )
                stop(signal.SIGTERM, None)
    if not stopping or any(p.exitcode not in (0, -signal.SIGTERM) for p in processes):
        sys.exit(1)
