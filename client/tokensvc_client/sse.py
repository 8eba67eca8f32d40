"""A parser for `text/event-stream` (the WHATWG HTML "server-sent events" interpretation rules).

Hand-written rather than a dependency: the format is a dozen lines of rules, aiohttp (which the
package needs anyway) has no client for it, and the aiohttp SSE client libraries on PyPI are
unmaintained since 2021-2023. Lines arrive already split (aiohttp's `StreamResponse.content`
yields them); the parser turns them into events and tracks the last event id for resuming.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Event:
    """One dispatched event: its type (`message` by default), its data, and the last event id."""

    type: str
    data: str
    id: str | None


class EventStreamParser:
    """Feed it lines (without their line terminator); it returns an event when one is complete."""

    __slots__ = ("_data", "_type", "last_event_id", "retry_ms")

    def __init__(self, last_event_id: str | None = None) -> None:
        self._data: list[str] = []
        self._type = ""
        self.last_event_id = last_event_id
        self.retry_ms: int | None = None

    def feed_line(self, line: str) -> Event | None:
        """Process one line; the event it completes (a blank line dispatches), else None."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):  # a comment: the server's heartbeat
            return None
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "event":
            self._type = value
        elif field == "data":
            self._data.append(value)
        elif field == "id":
            if "\0" not in value:  # the spec ignores ids with NUL in them
                self.last_event_id = value
        elif field == "retry" and value.isdecimal():
            self.retry_ms = int(value)
        # Any other field is ignored, as the spec says.
        return None

    def _dispatch(self) -> Event | None:
        data, event_type = self._data, self._type
        self._data, self._type = [], ""
        if not data:  # no data lines: nothing is dispatched (the id, if any, still counts)
            return None
        return Event(event_type or "message", "\n".join(data), self.last_event_id)


def split_lines(buffer: str) -> tuple[list[str], str]:
    """Complete lines of `buffer` (CRLF, LF or CR terminated) and the incomplete rest.

    For callers that receive text in arbitrary chunks (tests, other transports); a trailing CR is
    kept in the rest, since an LF may follow in the next chunk.
    """
    lines: list[str] = []
    start = 0
    i = 0
    n = len(buffer)
    while i < n:
        ch = buffer[i]
        if ch == "\n":
            lines.append(buffer[start:i])
            start = i + 1
        elif ch == "\r":
            if i + 1 == n:
                break  # CR at the end: maybe half of a CRLF
            lines.append(buffer[start:i])
            if buffer[i + 1] == "\n":
                i += 1
            start = i + 1
        i += 1
    return lines, buffer[start:]
