"""Fail unless every installed distribution is pinned, at its installed version, in the lock.

Reads `pip freeze` output on stdin; argv[1] is requirements-lock.txt. The Dockerfile runs it
after installing tokensvc, so an image never holds a dependency the lock does not pin (one
missing from the lock would come in at whatever version was newest that day). Standard library
only: it runs in the image's build stage before anything else is trusted.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)")


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def pins(lines: Iterable[str]) -> dict[str, str]:
    """Name → version of every `name==version` line (markers ignored)."""
    found = {}
    for line in lines:
        match = _PIN.match(line)
        if match:
            found[_name(match.group(1))] = match.group(2)
    return found


def unlocked(installed: Iterable[str], lock: Iterable[str]) -> list[str]:
    """The installed `name==version` lines the lock does not pin at that version."""
    locked = pins(lock)
    bad = []
    for name, version in pins(installed).items():
        if locked.get(name) != version:
            bad.append(f"{name}=={version} (lock: {locked.get(name, 'not pinned')})")
    return sorted(bad)


def main(argv: list[str]) -> int:
    with open(argv[1], encoding="utf-8") as lock:
        bad = unlocked(sys.stdin, lock)
    if bad:
        print("installed but not as requirements-lock.txt pins: " + ", ".join(bad), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
