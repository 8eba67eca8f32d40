"""Durations as people write them: `23h`, `1h30m`, `400d` (the form `parse_duration` reads)."""

from __future__ import annotations

from datetime import timedelta


def format_duration(value: timedelta | float) -> str:
    """`value` in the units `--ttl` takes: 82800 s → "23h", 5400 s → "1h30m"; whole seconds."""
    seconds = int(value.total_seconds() if isinstance(value, timedelta) else value)
    if seconds <= 0:
        return "0s"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    return "".join(f"{n}{unit}" for n, unit in parts if n)
