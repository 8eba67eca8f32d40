"""`tokensvc serve` and `tokensvc migrate`."""

from __future__ import annotations

import errno
import socket

import click

from tokensvc.cli.common import ConfigFailure, config, run
from tokensvc.cli.errors import fail_on_errors
from tokensvc.errors import TokensvcError
from tokensvc.operations.config import ConfigError


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
    from keystore import KeystoreError
    from tokensvc.composition import preflight
    from tokensvc.web.server import run as run_server

    settings = config()
    try:
        settings = settings.listening(host=host, port=port)
        if verify_port is not None:
            settings = settings.listening_for_verify(verify_port)
    except ConfigError as exc:
        raise ConfigFailure(exc.message) from None
    ensure_can_listen(settings.host, settings.port)
    listen_verify = settings.verify_listen_port(settings.port)
    if listen_verify is not None:
        ensure_can_listen(
            settings.host, listen_verify, choose="TOKENSVC_VERIFY_PORT or --verify-port"
        )
    try:
        # Once, here, before any worker: a KEK that opens nothing is one line, not a traceback
        # from every spawned process.
        run(preflight(settings))
        run_server(settings, host=settings.host, port=settings.port, workers=workers)
    except ConfigError as exc:  # found only when serving starts (--workers, the TLS files)
        raise ConfigFailure(exc.message) from None
    except TokensvcError as exc:
        raise click.ClickException(exc.message) from None
    except KeystoreError as exc:
        raise click.ClickException(f"keystore: {exc}") from None
    except OSError as exc:  # the database or Redis unreachable, a port taken since the check
        raise click.ClickException(f"cannot start: {exc.strerror or exc}") from None


def ensure_can_listen(host: str, port: int, *, choose: str = "TOKENSVC_PORT or --port") -> None:
    """Fail with one line, before any process starts, when `host:port` cannot be bound.

    Without this a taken port was a 39-line traceback from deep in asyncio (or one per worker
    process). A probe socket is bound and closed at once on each address the host resolves to,
    as the server binds them; SO_REUSEADDR as asyncio sets it, so only a live listener counts.
    The server binding later still handles the rare race (`serve` catches its OSError).
    """
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigFailure(
            f"TOKENSVC_HOST (or --host): cannot resolve {host!r}: {exc.strerror}"
        ) from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                hint = " (another process listens there)" if exc.errno == errno.EADDRINUSE else ""
                raise click.ClickException(
                    f"cannot listen on {host} port {port}: {exc.strerror}{hint};"
                    f" choose another with {choose}"
                ) from None


@click.command()
@fail_on_errors
def migrate() -> None:
    """Bring the database schema up to date."""
    from keystore import create_engine
    from tokensvc.composition import prepare_embedded_database
    from tokensvc.storage.migrate import unknown_revisions, upgrade

    settings = config()

    async def go() -> list[str]:
        if settings.embedded:
            prepare_embedded_database(settings)
        engine = create_engine(settings.effective_database_url)
        try:
            await upgrade(engine)
            return await unknown_revisions(engine)
        finally:
            await engine.dispose()

    newer = run(go())
    if newer:
        # Left as it is, for a rolling update or a rollback, but not called up to date
        # (helper-69: it said so of a schema this release does not know).
        click.echo(
            f"database at {settings.public_database_url} is at revision {', '.join(newer)},"
            " which this release does not know (a newer release's?): nothing done"
        )
        return
    click.echo(f"database at {settings.public_database_url} is up to date")


COMMANDS = [serve, migrate]
