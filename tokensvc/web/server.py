"""Running the app: uvloop; the API and the verify listener, in one process or in several.

`tokensvc serve` listens on two ports: the service port, where the aiohttp application answers
the whole API (/v1/verify included), and the verify port (tokensvc.web.verifyport), where an
httptools protocol answers POST /v1/verify only, without aiohttp's per-request machinery.

With Redis configured (the production shape), each runs in processes of its own: one API process
at a lower CPU priority and `--workers` verify processes sharing the verify port (SO_REUSEPORT).
A login storm then costs the API process's time, not the verify loops'; the kernel gives the
cores to verify first. No connection, and no byte of one, ever moves between processes: each
process reads only the sockets it accepted itself. Without Redis (the embedded default), one
process serves both ports (its lockout state and revocations are then in one place), or with
`--workers N` needs Redis like any multi-process shape.
"""

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
from collections.abc import Coroutine, Iterator
from ssl import SSLContext
from typing import Any

from aiohttp import web
from prometheus_client import multiprocess

from keystore import KeystoreError
from tokensvc.errors import TokensvcError
from tokensvc.operations.config import Config, ConfigError
from tokensvc.operations.logs import configure as configure_logging
from tokensvc.operations.memory import return_large_blocks
from tokensvc.web.app import create_app
from tokensvc.web.tls import ssl_context
from tokensvc.web.verifyport import start_verify_listener, stop_verify_listener

# The API process's CPU priority beside the verify processes: when both want a core, verifies
# get it first (a login storm then slows logins, not the services that verify).
API_NICE = 10


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every platform we ship
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _title(what: str) -> None:
    """Name this process in `ps` and top: `tokensvc: verify :8081`, not `python -c …`."""
    try:
        import setproctitle
    except ImportError:  # pragma: no cover - a dependency; a title is a convenience only
        return
    setproctitle.setproctitle(f"tokensvc: {what}")


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


def _serve_process(
    config: Config,
    host: str,
    *,
    port: int | None,
    verify_port: int | None,
    reuse_port: bool,
    nice: int = 0,
    announce: bool = True,
) -> None:
    """One process: the API on `port` and/or the verify listener on `verify_port`.

    `announce`: this is the one process of the service that logs once-per-service notices.
    """
    configure_logging(config.log_level)
    return_large_blocks()  # before any password is hashed here
    if nice:
        with contextlib.suppress(OSError):
            os.nice(nice)
    roles = [f"api :{port}"] if port is not None else []
    roles += [f"verify :{verify_port}"] if verify_port is not None else []
    _title(", ".join(roles))
    # Only a process that serves logins creates the bootstrap admin (and says so once).
    app = create_app(config, bootstrap=port is not None, announce=announce)
    app.on_startup.append(freeze_startup_objects)  # after every cleanup context has started
    # Built here, in the worker: an SSLContext cannot be handed to a spawned process.
    serving = _serve(
        app,
        host=host,
        port=port,
        verify_port=verify_port,
        ssl=ssl_context(config),
        reuse_port=reuse_port,
    )
    _run_loop(serving)


# A spawned process that failed to start and said why on one line: the supervisor stops the
# others without adding a line of its own.
_REPORTED_START_FAILURE = 3


def _in_child(target: Any, *args: Any, **kwargs: Any) -> None:
    """Run a spawned process's `target`; a start-up failure is one line, not a traceback each.

    The same failures `tokensvc serve` reports on one line when it serves in its own process
    (the database or Redis unreachable, a key that does not decrypt, a port taken).
    """
    try:
        target(*args, **kwargs)
    except (TokensvcError, KeystoreError, OSError) as exc:
        message = exc.message if isinstance(exc, TokensvcError) else str(exc)
        print(f"Error: cannot start: {message}", file=sys.stderr, flush=True)
        sys.exit(_REPORTED_START_FAILURE)


def _run_loop(serving: Coroutine[Any, Any, None]) -> None:
    """Serve until SIGTERM/SIGINT (AppRunner's handlers raise GracefulExit), then end as
    web.run_app does: the serving task alone is cancelled first, and its cleanup
    (AppRunner.cleanup) lets the requests in flight finish, up to the shutdown timeout; only
    then are the remaining tasks cancelled and the loop closed.

    Red team (helper-39): `asyncio.Runner.run` let GracefulExit out of the loop, and leaving
    the Runner cancelled every task at once, the handlers in flight with the serving task: a
    SIGTERM cut requests off (499) instead of draining them.
    """
    with asyncio.Runner(loop_factory=_new_loop) as runner:
        loop = runner.get_loop()
        main = loop.create_task(serving)
        try:
            loop.run_until_complete(main)
        except (web.GracefulExit, KeyboardInterrupt):
            pass
        finally:
            main.cancel()
            # A second signal while draining ends the drain: the Runner then cancels the rest.
            with contextlib.suppress(asyncio.CancelledError, web.GracefulExit, KeyboardInterrupt):
                loop.run_until_complete(main)


async def _serve(
    app: web.Application,
    *,
    host: str,
    port: int | None,
    verify_port: int | None,
    ssl: SSLContext | None,
    reuse_port: bool,
) -> None:
    """web.run_app's serving, plus the verify listener on the app's verifier."""
    runner = web.AppRunner(
        app,
        access_log=None,  # one structured line per request comes from our own request pipeline
        handle_signals=True,  # SIGINT/SIGTERM raise GracefulExit: in-flight requests drain
        shutdown_timeout=10,
        keepalive_timeout=75,  # web.run_app's default
    )
    await runner.setup()  # starts the app: its verifier exists from here
    listener = None
    try:
        if verify_port is not None:
            listener = await start_verify_listener(
                app, host, verify_port, ssl=ssl, reuse_port=reuse_port
            )
            scheme = "https" if ssl is not None else "http"
            print(
                f"======== Verifying on {scheme}://{host}:{verify_port}/v1/verify ========",
                file=sys.stderr,
            )
        if port is not None:
            site = web.TCPSite(runner, host, port, ssl_context=ssl, reuse_port=reuse_port or None)
            await site.start()
            print(f"======== Running on {site.name} ========", file=sys.stderr)
        print("(Press CTRL+C to quit)", file=sys.stderr)
        await asyncio.Event().wait()  # until a signal ends the loop
    finally:
        if listener is not None:
            await stop_verify_listener(*listener)
        await runner.cleanup()


def split_processes(config: Config, verify_port: int | None) -> bool:
    """Whether `serve` runs the verify listener in processes apart from the API's.

    It needs a verify port, and Redis: lockout counts and revocations are then shared across
    the processes at once (without Redis, a revocation reaches another process only at its next
    poll, TOKENSVC_REVOCATION_REFRESH_INTERVAL).
    """
    return verify_port is not None and config.verify_process and config.redis_url is not None


def run(config: Config, *, host: str, port: int, workers: int = 1) -> None:
    """Serve until interrupted.

    Workers share nothing in memory, so whatever must be shared lives in the database or Redis;
    each keeps its own caches, which is why revocations and generations are refreshed in the
    background. Prometheus metrics are written to a multiprocess directory so a scrape of any
    worker adds up all of them.
    """
    ssl_context(config)  # a bad certificate fails here, before any worker starts
    verify_port = config.verify_listen_port(port)
    if verify_port == port:
        raise ConfigError("TOKENSVC_VERIFY_PORT must differ from the service port")
    context = multiprocessing.get_context("spawn")
    if split_processes(config, verify_port):
        api = context.Process(
            target=_in_child,
            args=(_serve_process, config, host),
            kwargs={"port": port, "verify_port": None, "reuse_port": False, "nice": API_NICE},
        )
        verifiers = [
            context.Process(
                target=_in_child,
                args=(_serve_process, config, host),
                kwargs={"port": None, "verify_port": verify_port, "reuse_port": workers > 1},
            )
            for _ in range(workers)
        ]
        with _multiprocess_metrics_dir():
            _supervise([api, *verifiers])
        return
    if workers == 1:
        _serve_process(config, host, port=port, verify_port=verify_port, reuse_port=False)
        return
    if config.redis_url is None:
        raise ConfigError("--workers > 1 needs TOKENSVC_REDIS_URL (lockout state must be shared)")
    with _multiprocess_metrics_dir():
        _supervise(
            [
                context.Process(
                    target=_in_child,
                    args=(_serve_process, config, host),
                    kwargs={
                        "port": port,
                        "verify_port": verify_port,
                        "reuse_port": True,
                        "announce": index == 0,
                    },
                )
                for index in range(workers)
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


def _supervise(processes: list[multiprocessing.process.BaseProcess]) -> None:
    """Start the processes; stop all of them when one dies or a signal arrives."""
    _title("supervisor")
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
