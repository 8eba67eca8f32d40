"""The revocation stream subscriber: GET /v1/revocations/stream (Server-Sent Events), applied to a
RevocationState, resumed with Last-Event-ID after a reconnect, with backoff.

Trust rule (docs in client/README.md): the cache may be used only while the stream is *live*:
connected, caught up with the cursor the server announced at connect, and with a message (an
event or the `: ping` heartbeat: a whole line, not any byte) received within `stale_after`
seconds. tokensvc sends neither while it cannot read its revocation log. Otherwise the client
falls back to /v1/verify per request or fails closed — never stale allows.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson

from tokensvc_client.metrics import ClientMetrics
from tokensvc_client.revocations import RevocationState
from tokensvc_client.sse import Event, EventStreamParser, split_lines

log = logging.getLogger("tokensvc_client.stream")

PATH = "/v1/revocations/stream"
#: The longest line a stream may hold pending (events are a few hundred bytes).
_MAX_LINE = 65536


class RevocationStream:
    """Keeps `state` current from tokensvc's stream; `live()` says whether the cache may be used."""

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        url: str,
        service_token: str,
        state: RevocationState,
        metrics: ClientMetrics,
        on_reset: Callable[[], None],
        on_key_revoked: Callable[[str], None],
        stale_after: float = 15.0,
        backoff: tuple[float, float] = (0.05, 10.0),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._session = session
        self._url = url.rstrip("/") + PATH
        self._token = service_token
        self.state = state
        self._metrics = metrics
        self._on_reset = on_reset
        self._on_key_revoked = on_key_revoked
        self.stale_after = stale_after
        self._backoff = backoff
        self._clock = clock
        self._connected = False
        self._target: str | None = None  # the server's newest event id when we connected
        self._caught_up = False
        # time.monotonic() of the last message received (an event, or a `:` heartbeat line):
        # bytes that complete neither (blank lines, a line never ended) prove nothing.
        self._last_byte = float("-inf")
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        metrics.stream_state_now = self.state_name

    # ---- what the client asks -------------------------------------------------------------

    def _retrust(self) -> None:
        """Set `state.trusted_until`, the time.monotonic() until which the stream is live (0.0:
        not connected, or not caught up): the last message's time + stale_after. Called after
        every change of _connected, _caught_up and _last_byte: a value the client's hot path
        reads as a plain attribute (a property here was a Python call per request)."""
        live = self._caught_up and self._connected
        self.state.trusted_until = self._last_byte + self.stale_after if live else 0.0

    def live(self) -> bool:
        """Connected, caught up, and heard from within `stale_after` seconds."""
        return time.monotonic() < self.state.trusted_until

    def state_name(self) -> str:
        if not self._connected:
            return "connecting"
        if time.monotonic() - self._last_byte >= self.stale_after:
            return "stale"
        return "live" if self._caught_up else "catching_up"

    async def wait_live(self, within: float) -> bool:
        """Wait until the stream is live (tests, startup); False on timeout."""
        deadline = time.monotonic() + within
        while not self.live():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.05))
            except TimeoutError:
                pass
        return True

    # ---- the subscription ---------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="tokensvc-revocation-stream")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._connected = False
        self._retrust()

    async def _run(self) -> None:
        low, high = self._backoff
        delay = low
        while True:
            started = time.monotonic()
            try:
                await self._subscribe_once()
            except asyncio.CancelledError:
                raise
            except (aiohttp.ClientError, TimeoutError, ValueError, OSError) as exc:
                log.warning("revocation stream interrupted: %s", type(exc).__name__)
            finally:
                self._connected = False
                self._caught_up = False
                self._retrust()
                self._changed.set()
            # A connection that lived a while starts the backoff over; a failing one doubles it.
            delay = (
                low if time.monotonic() - started > 2 * self.stale_after else min(high, delay * 2)
            )
            self._metrics.stream_reconnects += 1
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311 - jitter, not a secret

    async def _subscribe_once(self) -> None:
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "text/event-stream"}
        if self.state.cursor is not None:
            headers["Last-Event-ID"] = self.state.cursor
        # sock_read: a stream that says nothing (not even a ping) for stale_after is dead.
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.stale_after, sock_read=self.stale_after
        )
        async with self._session.get(self._url, headers=headers, timeout=timeout) as resp:
            if resp.status != 200:
                body = (await resp.text())[:200]
                log.error("revocation stream refused: %s %s", resp.status, body)
                return
            self._connected = True
            self._retrust()
            parser = EventStreamParser(self.state.cursor)
            rest = ""
            async for chunk in resp.content.iter_any():
                lines, rest = split_lines(rest + chunk.decode("utf-8", "replace"))
                if len(rest) > _MAX_LINE:
                    raise ValueError("revocation stream: a line longer than any event")
                for line in lines:
                    event = parser.feed_line(line)
                    if event is not None:
                        self._last_byte = time.monotonic()
                        self._handle(event)
                        self._retrust()
                    elif line.startswith(":"):  # the heartbeat
                        self._last_byte = time.monotonic()
                        self._retrust()
                self._changed.set()

    def _handle(self, event: Event) -> None:
        try:
            data: Any = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            log.warning("revocation stream: undecodable %s event", event.type[:20])
            return
        if not isinstance(data, dict):
            return
        state = self.state
        if event.type == "hello":
            cursor = data.get("cursor")
            if not isinstance(cursor, str):
                return
            self._target = cursor
            if state.cursor is None:
                # A fresh subscription starts where the hello's id says (else at the newest
                # event): nothing before concerns an empty cache, and no verdict older than
                # this may be cached (RevocationState.covers).
                state.advance(event.id or cursor)
                state.start = state.cursor
        elif event.type == "reset":
            # Our cursor is older than what the server keeps: events may be lost, so nothing
            # cached may be trusted. The state's facts are still true; the verdicts go.
            self._metrics.stream_resets += 1
            self._on_reset()
            state.advance(event.id)
            if self._target is not None and not state.reached(self._target):
                state.cursor = self._target
            state.start = state.cursor  # what came before is unknown: as a fresh start
        elif state.apply(event.type, data, now=self._clock()):
            self._metrics.stream_events += 1
            if event.type == "key":
                self._on_key_revoked(str(data["key_id"]))
            state.advance(event.id)
        else:
            # A revocation this client cannot apply (a kind a newer tokensvc sends, or data it
            # cannot read) may concern any cached verdict: drop them all, as for a reset, rather
            # than move past it and keep allowing what it revoked.
            log.warning(
                "revocation stream: cannot apply a %s event; cache dropped", event.type[:20]
            )
            self._on_reset()
            state.advance(event.id)
        if self._target is not None and state.reached(self._target):
            self._caught_up = True
