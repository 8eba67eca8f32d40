"""The other lane: every request but /v1/verify, served by a second process.

Services call /v1/verify on every request they serve; logins, admin calls and scrapes are rare
by comparison, yet each costs far more event-loop time (a login: lockout round trips, a user
query, argon2, a mint). On one event loop the two share its time by arrival, so a closed-loop
flood of logins takes about half of it, whatever argon2 costs. Measured with `./dev bench storm`
on a 2-core host: a login storm against the serving process kept 0.41-0.56x of verify throughput
with p99 x10-20; the same storm against *another* process on the same host kept 0.91x, p99 x1.12.

So `tokensvc serve` (Redis lockout, no native TLS) runs the same app in its verify worker(s)
and in one lane process. The verify process owns the port (with `--workers N`, N of them share it,
each with its own socket pair to the lane). When a connection's first request that is not a plain
verify arrives while aiohttp's parser has read nothing on it (FastRequestHandler's raw state),
the connection itself, a duplicate of its socket, goes with the bytes read so far over a Unix
SOCK_SEQPACKET pair to the lane process, which serves the rest of it with the full app. The
kernel then shares the cores between the processes, and the lane runs at a lower priority.
The lane's handler takes the bytes read so far in connection_made, before its transport reads
a byte of the socket: the connection's bytes are parsed in the order they were sent, whenever
the rest of a request (a body sent in a second TCP segment) arrives.

Nothing is lost when the lane cannot take a connection (it is gone, the bytes do not fit one
message, our writes are still queued): the verify process serves it as before. A lane that is only
behind (its queue full) is waited for, up to LANE_WAIT, with the connection's reading paused: a
storm of new connections must not flow back onto the verify loop whenever the lane lags.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import socket
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tokensvc.web.fastverify import FastServer

log = logging.getLogger(__name__)

# The largest message one handoff may carry: the bytes read so far must fit with the fd.
MAX_HANDOFF_BYTES = 64 * 1024
# The lane's CPU priority: when it and a verify process want a core, verifies get it first.
LANE_NICE = 10
# How long a connection waits, reading paused, for a lane that is behind, and how often it asks.
LANE_WAIT = 1.0
LANE_RETRY = 0.01


class Offer(enum.Enum):
    HANDED = "handed"  # the lane has it: close our descriptor
    BUSY = "busy"  # the lane's queue is full: ask again shortly
    REFUSED = "refused"  # cannot move (too big, writes queued, no lane): serve it here


class Handoff:
    """The verify process's end: passes a connection, with what was read of it, to the lane."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._open = True
        self.handed = 0  # connections passed on, for tests and diagnostics

    def offer(self, transport: Any, data: bytes) -> Offer:
        """Pass `transport`'s socket and `data` on; HANDED means abort ours, the lane has it."""
        if not self._open or len(data) > MAX_HANDOFF_BYTES or transport.is_closing():
            return Offer.REFUSED
        if transport.get_write_buffer_size():
            return Offer.REFUSED  # answers still queued would be lost when our descriptor closes
        raw = transport.get_extra_info("socket")
        if raw is None:
            return Offer.REFUSED
        try:
            fd = os.dup(raw.fileno())
        except OSError:
            return Offer.REFUSED
        try:
            socket.send_fds(self._sock, [data], [fd])
        except BlockingIOError:
            return Offer.BUSY
        except OSError:
            self._open = False  # the lane is gone; every later connection stays here
            log.warning("the request lane process is gone; serving every request here")
            return Offer.REFUSED
        finally:
            os.close(fd)
        self.handed += 1
        return Offer.HANDED

    def close(self) -> None:
        self._open = False
        self._sock.close()


# The routes other services and proxies call on every request they serve: never moved.
HOT_PATHS = frozenset({b"/v1/verify", b"/v1/auth"})


def is_lane_request(data: bytes) -> bool:
    """True if `data` starts with a whole request line whose path is not a hot path.

    A verify the byte reader left (split across packets, a root key to read, unusual headers) is
    served here, and so is forward-auth, so a verifying client's connection is never moved; so
    is anything without a whole first line, which aiohttp's parser then judges.
    """
    end = data.find(b"\r\n", 0, 8192)
    if end <= 0:
        return False
    parts = data[:end].split(b" ")
    if len(parts) != 3:
        return False
    return parts[1].partition(b"?")[0] not in HOT_PATHS


async def receive_connections(server: FastServer, sock: socket.socket) -> None:
    """Serve each connection the verify process hands over, until its end of `sock` closes."""
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    closed = loop.create_future()
    adopting: set[asyncio.Task[None]] = set()

    def readable() -> None:
        while True:
            try:
                data, fds, flags, _addr = socket.recv_fds(sock, MAX_HANDOFF_BYTES, 1)
            except BlockingIOError:
                return
            except OSError:
                data, fds, flags = b"", [], 0
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                # Cut short (Handoff never sends more than fits): serving the rest of such a
                # connection would lose bytes of it, so it is closed instead.
                for fd in fds:
                    os.close(fd)
                continue
            if not fds:
                if data:
                    continue  # not a handoff (nothing else writes here): skip it
                if not closed.done():
                    closed.set_result(None)  # EOF: the verify process is stopping
                return
            task = loop.create_task(_adopt(server, fds[0], data))
            adopting.add(task)
            task.add_done_callback(adopting.discard)

    loop.add_reader(sock.fileno(), readable)
    try:
        await closed
    finally:
        loop.remove_reader(sock.fileno())
        sock.close()


async def _adopt(server: FastServer, fd: int, data: bytes) -> None:
    loop = asyncio.get_running_loop()
    try:
        conn = socket.socket(fileno=fd)
    except OSError:
        os.close(fd)
        return
    conn.setblocking(False)
    try:
        # The handler takes `data` in connection_made, before its transport reads a byte: fed
        # once this await returns, it would come after whatever the transport read meanwhile.
        _transport, protocol = await loop.connect_accepted_socket(server.adopting(data), conn)
    except OSError:
        with contextlib.suppress(OSError):
            conn.close()
        return
    protocol.adopted()
