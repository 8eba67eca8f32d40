"""`tokensvc serve` and `tokensvc migrate`."""

from __future__ import annotations

import click

from tokensvc.cli.common import config, run
from tokensvc.errors import TokensvcError


@click.command()
@click.option("--host", default=None, help="Address to bind (default TOKENSVC_HOST or 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default TOKENSVC_PORT or 8080).")
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Processes sharing the port (SO_REUSEPORT); more than 1 needs TOKENSVC_REDIS_URL.",
)
@click.option(
    "--verify-port",
    default=None,
    metavar="PORT|off",
    help="Port of the verify listener, POST /v1/verify only (default TOKENSVC_VERIFY_PORT or"
    " the service port + 1; off: none).",
)
def serve(host: str | None, port: int | None, workers: int, verify_port: str | None) -> None:
    """Run the HTTP service: the API on --port, POST /v1/verify also on --verify-port.

    With TOKENSVC_REDIS_URL set, --workers processes serve the verify port and one more,
    lower-priority process the API (TOKENSVC_VERIFY_PROCESS=false: every process serves both).
    Without it, one process serves both ports.
    """
    import dataclasses

    from keystore import KeystoreError
    from tokensvc.composition import preflight
    from tokensvc.web.server import run as run_server

    settings = config()
    if verify_port == "off":
        settings = dataclasses.replace(settings, verify_listener=False)
    elif verify_port is not None:
        if not verify_port.isdigit() or not 0 < int(verify_port) < 65536:
            raise click.BadParameter(
                "a port between 1 and 65535, or off", param_hint="--verify-port"
            )
        settings = dataclasses.replace(settings, verify_port=int(verify_port), verify_listener=True)
    try:
        # Once, here, before any worker: a KEK that opens nothing is one line, not a traceback
        # from every spawned process.
        run(preflight(settings))
        run_server(
            settings, host=host or settings.host, port=port or settings.port, workers=workers
        )
    except TokensvcError as exc:
        raise click.ClickException(exc.message) from None
    except KeystoreError as exc:
        raise click.ClickException(f"keystore: {exc}") from None


@click.command()
def migrate() -> None:
    """Bring the database schema up to date."""
    from keystore import create_engine
    from tokensvc.composition import prepare_embedded_database
    from tokensvc.storage.migrate import upgrade

    settings = config()

    async def go() -> None:
        if settings.embedded:
            prepare_embedded_database(settings)
        engine = create_engine(settings.effective_database_url)
        try:
            await upgrade(engine)
        finally:
            await engine.dispose()

    run(go())
    click.echo(f"database at {settings.public_database_url} is up to date")


COMMANDS = [serve, migrate]
