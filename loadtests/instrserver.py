"""The server half of `python -m loadtests instructions`, meant to run under callgrind.

Serves either the bare aiohttp handler of `loadtests.bare` or tokensvc's own app (built by
`create_app(Config.from_env())`, as `tokensvc serve` does, configured from the TOKENSVC_*
environment) on a uvloop loop, on 127.0.0.1:PORT, until a GET on `STOP_PATH` asks it to stop;
then it shuts the app down and exits, so callgrind writes its totals.

The stop route is added here, to the app this script built: it does not exist in the product.
For tokensvc, logging goes to /dev/null through tokensvc's own `logs.configure` (so the access
line is still formatted and written: its cost is counted), and the subject-generation refresh —
a fixed 2 s poll that is not configurable — is stretched to an hour here only, like the other
background polls the benchmark stretches through the environment: under callgrind the service
runs ~50× slower, so a timer would fire ~50× as often per request as it does at full speed.

    python -m loadtests.instrserver --target {bare,tokensvc} --port PORT
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import IO

from aiohttp import web

STOP_PATH = "/_loadtests/stop"
GENERATIONS_REFRESH_SECONDS = 3600.0

# Kept open for the life of the process: tokensvc's log handler writes to it.
_devnull: IO[str] | None = None


def _stretch_generation_refresh() -> None:
    """Make SubjectGenerations' default refresh_interval an hour (in this process only)."""
    from tokensvc.tokens import generations

    defaults = generations.SubjectGenerations.__init__.__kwdefaults__
    if not defaults or "refresh_interval" not in defaults:
        raise SystemExit(
            "instrserver: tokensvc.tokens.generations.SubjectGenerations has no refresh_interval "
            "keyword default any more; update loadtests/instrserver.py"
        )
    defaults["refresh_interval"] = GENERATIONS_REFRESH_SECONDS


def tokensvc_app() -> web.Application:
    global _devnull  # noqa: PLW0603 - one /dev/null for the process
    _stretch_generation_refresh()
    from tokensvc.operations.config import Config
    from tokensvc.operations.logs import configure
    from tokensvc.web.app import create_app

    config = Config.from_env()
    _devnull = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    configure(config.log_level, stream=_devnull)
    return create_app(config)


def bare_app() -> web.Application:
    from loadtests.bare import make_app

    return make_app()


async def serve(app: web.Application, port: int, runner_class: type[web.AppRunner]) -> None:
    stopping = asyncio.Event()

    async def stop(request: web.Request) -> web.Response:
        stopping.set()
        return web.Response(text="stopping\n")

    app.router.add_get(STOP_PATH, stop)
    # As `tokensvc serve` and loadtests.bare run their apps: aiohttp's access log off, and for
    # tokensvc its own runner (the fast /v1/verify path, tokensvc.web.fastverify).
    runner = runner_class(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print(f"ready on 127.0.0.1:{port}", flush=True)
    await stopping.wait()
    await asyncio.sleep(0.05)  # let the answer to the stop request go out
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.instrserver", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--target", choices=("bare", "tokensvc"), required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    if args.target == "tokensvc":
        from tokensvc.web.fastverify import AppRunner

        app, runner_class = tokensvc_app(), AppRunner
    else:
        app, runner_class = bare_app(), web.AppRunner

    from loadtests.bare import _new_loop

    loop = _new_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(serve(app, args.port, runner_class))
    finally:
        loop.close()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
