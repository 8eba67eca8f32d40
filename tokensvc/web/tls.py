"""Native TLS: the server's SSLContext from the configured certificate and key files."""

from __future__ import annotations

import ssl

from tokensvc.operations.config import Config, ConfigError


def ssl_context(config: Config) -> ssl.SSLContext | None:
    """A server context (TLS 1.2 or newer) when cert and key files are configured, else None."""
    if config.tls_cert_file is None or config.tls_key_file is None:
        return None
    # create_default_context brings the stdlib's vetted cipher list and disables compression.
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_RENEGOTIATION
    try:
        context.load_cert_chain(certfile=config.tls_cert_file, keyfile=config.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        # The message names the files, never their contents.
        raise ConfigError(
            "cannot load TOKENSVC_TLS_CERT_FILE/TOKENSVC_TLS_KEY_FILE "
            f"({config.tls_cert_file}, {config.tls_key_file}): {exc}"
        ) from None
    return context
