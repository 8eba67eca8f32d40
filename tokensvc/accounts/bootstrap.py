"""First start: the `admin` user, from TOKENSVC_ADMIN_PASSWORD or (embedded mode) a generated one."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from tokensvc.accounts.users import ADMIN_ROLE, UserStore
from tokensvc.errors import Conflict
from tokensvc.operations.config import Config

log = logging.getLogger("tokensvc.accounts.bootstrap")

ADMIN_NAME = "admin"


async def ensure_admin(
    users: UserStore,
    create: Callable[[str, str, str], Awaitable[object]],
    config: Config,
    *,
    announce: bool = True,
) -> bool:
    """Create `admin` if missing; True if this call created it.

    `create(name, password, role)` is the user service's creation (the composition root passes
    it), so this door creates as every other does: audited, and a name tokens were issued to
    starts with none of them (red team: `admin` deleted, a token minted for the free name, then
    re-created at the next start, and the token spoke for the new admin).

    Whatever is said about it is said once per service, not once per process: what this call
    created only by the process whose insert won (the others get Conflict), and that no admin
    exists only where `announce` is set — `tokensvc serve` sets it in one of its processes.
    """
    if await users.get(ADMIN_NAME) is not None:
        return False
    password = config.admin_password
    generated = password is None
    if password is None:
        if not config.embedded:
            if not announce:
                return False
            log.warning(
                "no admin user exists; set TOKENSVC_ADMIN_PASSWORD (or _FILE) and restart, "
                "or create one with `tokensvc user add --admin`"
            )
            return False
        password = secrets.token_urlsafe(18)
    try:
        await create(ADMIN_NAME, password, ADMIN_ROLE)
    except Conflict:  # another replica or worker made it first
        return False
    if generated:
        # Straight to the terminal, never through logging: it must not land in log storage.
        command, hint = _cli_command()
        print(
            f"\ntokensvc: created user 'admin' with password: {password}\n"
            f"tokensvc: it is shown only this once; log in with `{command} login admin`"
            f" and change it with `{command} user passwd admin`{hint}.\n",
            file=sys.stderr,
            flush=True,
        )
    else:
        log.info("created the bootstrap admin user from TOKENSVC_ADMIN_PASSWORD")
    return True


def _cli_command() -> tuple[str, str]:
    """How the person who started the service can run the CLI: `tokensvc` when that is on their
    PATH, else the path of this very script (`./dev run` runs `.venv/bin/tokensvc`, which a
    fresh clone does not have on PATH), with how to put it there."""
    script = Path(sys.argv[0])
    if script.name != "tokensvc" or not script.is_file():
        return "tokensvc", ""
    found = shutil.which("tokensvc")
    if found and Path(found).resolve() == script.resolve():
        return "tokensvc", ""
    here = script.resolve()
    try:
        shown = str(here.relative_to(Path.cwd()))
    except ValueError:
        shown = str(here)
    if not (here.parent / "activate").is_file():
        return shown, ""
    activate = os.path.join(os.path.dirname(shown), "activate")
    return shown, f" (`source {activate}` puts `tokensvc` on PATH)"
