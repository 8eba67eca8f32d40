"""The server half of `python -m loadtests instructions`, meant to run under callgrind.

Serves either the bare aiohttp handler of `loadtests.bare` or tokensvc's own app (built by
`create_app(Config.from_env())`, as `tokensvc serve` does, configured from the TOKENSVC_*
environment, with its verify listener on 127.0.0.1:VERIFY_PORT as `tokensvc serve` runs it) on
a uvloop loop, on 127.0.0.1:PORT, until a GET on `STOP_PATH` asks it to stop; then it shuts the
app down and exits, so callgrind writes its totals.

The stop route is added here, to the app this script built: it does not exist in the product.
For tokensvc, logging goes to /dev/null through tokensvc's own `logs.configure` (so the access
line is still formatted and written: its cost is counted), and the subject-generation refresh —
a fixed 2 s poll that is not configurable — is stretched to an hour here only, like the other
background polls the benchmark stretches through the environment: under callgrind the service
runs ~50× slower, so a timer would fire ~50× as often per request as it does at full speed.

    python -m loadtests.instrserver --target bare --port PORT
    python -m loadtests.instrserver --target tokensvc --port PORT --verify-port VERIFY_PORT
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


async def serve(app: web.Application, port: int, verify_port: int | None) -> None:
    """The app on `port` (with the stop route); for tokensvc, its verify listener on
    `verify_port` as well, as `tokensvc serve` runs it (the port services send /v1/verify to)."""
    stopping = asyncio.Event()

    async def stop(request: web.Request) -> web.Response:
        stopping.set()
        return web.Response(text="stopping\n")

    app.router.add_get(STOP_PATH, stop)
    # As `tokensvc serve` and loadtests.bare run their apps: aiohttp's access log off.
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()  # starts the app: tokensvc's verifier exists from here
    listener = None
    if verify_port is not None:
        from tokensvc.web.verifyport import start_verify_listener, stop_verify_listener

        listener = await start_verify_listener(app, "127.0.0.1", verify_port)
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print(f"ready on 127.0.0.1:{port}", flush=True)
    await stopping.wait()
    await asyncio.sleep(0.05)  # let the answer to the stop request go out
    if listener is not None:
        await stop_verify_listener(*listener)
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.instrserver", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--target", choices=("bare", "tokensvc"), required=True)
    parser.add_argument("--port", type=int, required=True, help="the app (and the stop route)")
    parser.add_argument("--verify-port", type=int, help="tokensvc: its verify listener")
    args = parser.parse_args(argv)
    if args.target == "tokensvc":
        if args.verify_port is None:
            parser.error("--target tokensvc needs --verify-port")
        app = tokensvc_app()
    else:
        app = bare_app()

    from loadtests.bare import _new_loop

    loop = _new_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(serve(app, args.port, args.verify_port))
    finally:
        loop.close()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
