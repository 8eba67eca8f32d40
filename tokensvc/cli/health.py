"""`tokensvc healthcheck`: is the service in this container (or on this host) answering?

Made for Docker's HEALTHCHECK and exec probes: it reads the same variables as `tokensvc serve`
(TOKENSVC_HOST, TOKENSVC_PORT, TOKENSVC_TLS_CERT_FILE), so one command works with and without
native TLS. Under TLS it trusts exactly the configured certificate (not a CA, and not the host
name it names, which 127.0.0.1 would not match): the answer comes from whoever holds that
certificate's key, that is, from this service. It reads no other setting, so a health check
does not fail for a reason that has nothing to do with the service answering.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl

import click

#: Addresses that mean "every interface": the check connects to loopback instead.
_ANY_V4 = {"", "0.0.0.0", "*"}  # noqa: S104 - matched, never bound
_ANY_V6 = {"::", "[::]"}


def _target(host: str) -> str:
    if host in _ANY_V4:
        return "127.0.0.1"
    if host in _ANY_V6:
        return "::1"
    return host.strip("[]")


def _tls_context(cert_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cert_file)
    # The server's own (leaf) certificate is the trust anchor; OpenSSL otherwise wants a chain
    # up to a self-signed root. The host name is not checked: see the module docstring.
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    context.check_hostname = False
    return context


@click.command()
@click.option("--ready", is_flag=True, help="Ask /readyz (can verify) instead of /healthz (alive).")
@click.option(
    "--timeout",
    type=click.FloatRange(0.1, 60),
    default=4.0,
    show_default=True,
    help="Seconds to wait for the answer.",
)
def healthcheck(ready: bool, timeout: float) -> None:
    """Exit 0 if the local service answers /healthz (or /readyz with --ready), else 1.

    The address, port and TLS certificate are TOKENSVC_HOST, TOKENSVC_PORT and
    TOKENSVC_TLS_CERT_FILE, as `tokensvc serve` reads them.
    """
    # An empty variable counts as unset, as everywhere in the configuration.
    host = _target(os.environ.get("TOKENSVC_HOST") or "127.0.0.1")
    port_text = os.environ.get("TOKENSVC_PORT") or "8080"
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise click.ClickException(f"TOKENSVC_PORT must be a port number, got {port_text!r}")
    cert_file = os.environ.get("TOKENSVC_TLS_CERT_FILE")
    path = "/readyz" if ready else "/healthz"
    connection: http.client.HTTPConnection
    try:
        if cert_file:
            connection = http.client.HTTPSConnection(
                host, int(port_text), timeout=timeout, context=_tls_context(cert_file)
            )
        else:
            connection = http.client.HTTPConnection(host, int(port_text), timeout=timeout)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read(4096)
        finally:
            connection.close()
    except (OSError, http.client.HTTPException) as exc:  # ssl.SSLError is an OSError
        scheme = "https" if cert_file else "http"
        raise click.ClickException(
            f"{scheme}://{host}:{port_text}{path}: {type(exc).__name__}: {exc}"
        ) from None
    if response.status != 200:
        raise click.ClickException(f"{path} answered {response.status}: {_status_of(body)}")
    click.echo(f"{path}: {_status_of(body)}")


def _status_of(body: bytes) -> str:
    try:
        return str(json.loads(body).get("status", "?"))
    except (ValueError, AttributeError):
        return "?"


COMMANDS = [healthcheck]
