"""The `tokensvc` command line: run and operate the service, and use it as a client.

Human-readable output by default, `--json` for scripts; a non-zero exit status on any failure.
One module per command group; every `--local` action goes through the same services as the API
(tokensvc.cli.common.local), so it is authorised and audited alike.
"""

from __future__ import annotations

import os
import sys

import click

from tokensvc.operations.config import metrics_dir_problem

# Before the command modules: importing them declares the metrics, which writes into
# PROMETHEUS_MULTIPROC_DIR at once, and a bad directory would be a traceback, not one line.
if (_problem := metrics_dir_problem(os.environ)) is not None:
    click.echo(f"Error: {_problem}", err=True)
    sys.exit(2)

from tokensvc.cli import audit, health, keys, lockout, mfa, server, session, tokens, users


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tokensvc")
def main() -> None:
    """tokensvc: macaroon tokens, root keys, passwords and lockout.

    \b
    Talks to the service at --url, else TOKENSVC_URL, else the server you last logged in to;
    only the token stored for that server is sent (TOKENSVC_TOKEN overrides it, for CI).
    --local commands act on the configured database directly. --json prints JSON for scripts.
    Shell completion (bash; zsh and fish alike):
      eval "$(_TOKENSVC_COMPLETE=bash_source tokensvc)"
    """


for _module in (server, health, session, tokens, keys, users, lockout, mfa, audit):
    for _command in _module.COMMANDS:
        main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
