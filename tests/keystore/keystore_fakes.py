"""Test doubles for the keystore tests: a settable clock and a log of SQL statements."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

# Monday 2025-01-06 00:00 UTC: the start of a generate interval under the default policy.
START = datetime(2025, 1, 6, tzinfo=UTC)


class FakeClock:
    """A clock that stands still until the test moves it."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta

    def set(self, now: datetime) -> None:
        self.now = now


class StatementLog:
    """Every SQL statement an engine sends, in order (BEGIN/COMMIT of SQLite included)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine.sync_engine
        self.statements: list[str] = []
        event.listen(self._engine, "before_cursor_execute", self._record)

    def _record(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        self.statements.append(statement)

    def count(self, verb: str, table: str = "root_keys") -> int:
        """How many statements starting with `verb` mention `table`."""
        return sum(
            1
            for statement in self.statements
            if statement.lstrip().upper().startswith(verb.upper()) and table in statement
        )

    def clear(self) -> None:
        self.statements.clear()

    def close(self) -> None:
        event.remove(self._engine, "before_cursor_execute", self._record)
