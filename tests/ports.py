"""Free TCP ports for the servers tests start (tokensvc, redis-server, PostgreSQL, nginx, peers).

A port the kernel hands out for `bind(("127.0.0.1", 0))` comes from the ephemeral range, the
same range every outgoing connection takes its local port from: between the look and the
server's bind, a test client's connection to PostgreSQL or Redis could take it (CI runs failed
so). These ports come from below that range, where only listeners bind, at random so parallel
workers seldom try the same one; a port something already listens on is skipped.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_LOWEST = 10_000


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default; elsewhere the fallback below still works


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, outside the ephemeral range."""
    highest = _ephemeral_start()
    for _ in range(100) if highest - _LOWEST > 1000 else ():
        port = random.randrange(_LOWEST, highest)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:  # no room below the ephemeral range: the kernel's choice
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
