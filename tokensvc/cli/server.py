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
def serve(host: str | None, port: int | None, workers: int) -> None:
    """Run the HTTP service.

    With TOKENSVC_REDIS_URL set, the worker(s) answer /v1/verify and every other connection goes
    to one more, lower-priority process: the lane (TOKENSVC_VERIFY_PROCESS).
    """
    from keystore import KeystoreError
    from tokensvc.composition import preflight
    from tokensvc.web.server import run as run_server

    settings = config()
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
