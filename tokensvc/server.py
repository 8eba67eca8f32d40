"""Running the app: uvloop, one or several worker processes on one port (SO_REUSEPORT)."""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
import sys

from aiohttp import web

from tokensvc.config import Config, ConfigError
from tokensvc.logs import configure as configure_logging
from tokensvc.web.app import create_app


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every platform we ship
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _serve_one(config: Config, host: str, port: int, reuse_port: bool) -> None:
    configure_logging(config.log_level)
    web.run_app(
        create_app(config),
        host=host,
        port=port,
        reuse_port=reuse_port or None,
        access_log=None,  # one structured line per request comes from our own middleware later
        loop=_new_loop(),
        shutdown_timeout=10,
        print=lambda msg: print(msg, file=sys.stderr),
    )


def run(config: Config, *, host: str, port: int, workers: int = 1) -> None:
    """Serve until interrupted; with workers > 1 each process accepts on the same port."""
    if workers == 1:
        _serve_one(config, host, port, reuse_port=False)
        return
    if config.redis_url is None:
        raise ConfigError("--workers > 1 needs TOKENSVC_REDIS_URL (lockout state must be shared)")
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_serve_one, args=(config, host, port, True), daemon=False)
        for _ in range(workers)
    ]
    for process in processes:
        process.start()

    def stop(signum: int, frame: object) -> None:
        for process in processes:
            if process.is_alive():
                process.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for process in processes:
        process.join()
