"""A small Server-Sent Events reader for tests of GET /v1/revocations/stream."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any


@dataclass
class Event:
    kind: str  # the `event:` field; "ping" for a `: ping` comment
    data: dict[str, Any]
    id: str | None


class SSEReader:
    """Reads events from an aiohttp client response, one `next()` at a time."""

    def __init__(self, response: Any) -> None:
        self.response = response

    async def next(self, within: float = 5.0) -> Event:
        return await asyncio.wait_for(self._next(), within)

    async def _next(self) -> Event:
        kind, data, event_id = "message", "", None
        while True:
            raw = await self.response.content.readline()
            if not raw:
                raise EOFError("stream ended")
            line = raw.decode().rstrip("\n")
            if line == "":
                if data:
                    return Event(kind, json.loads(data), event_id)
                continue
            if line.startswith(":"):
                if line[1:].strip() == "ping":
                    return Event("ping", {}, None)
                continue
            field, _, value = line.partition(": ")
            if field == "event":
                kind = value
            elif field == "data":
                data += value
            elif field == "id":
                event_id = value

    async def next_event(self, within: float = 5.0) -> Event:
        """The next event that is not a ping."""
        while True:
            event = await self.next(within)
            if event.kind != "ping":
                return event
