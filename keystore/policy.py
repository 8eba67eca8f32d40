"""When root keys are made and how long they live."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

EPOCH: Final[datetime] = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class RotationPolicy:
    """Keys live `lifetime`; a new scheduled key is made every `generate_interval`.

    Time is cut into slots of `generate_interval` counted from the Unix epoch, so every replica
    agrees on which slot "now" belongs to without talking to the others.
    """

    lifetime: timedelta = timedelta(hours=24)
    generate_interval: timedelta = timedelta(hours=1)

    def __post_init__(self) -> None:
        if self.generate_interval <= timedelta(0):
            raise ValueError("generate_interval must be positive")
        if self.lifetime <= timedelta(0):
            raise ValueError("lifetime must be positive")
        if self.generate_interval >= self.lifetime:
            raise ValueError(
                "generate_interval must be shorter than lifetime, or no token could be minted"
            )

    @property
    def max_token_ttl(self) -> timedelta:
        """The longest TTL any current key can back (23 h by default)."""
        return self.lifetime - self.generate_interval

    def slot(self, now: datetime) -> int:
        """The number of the interval `now` falls in: floor(epoch seconds / interval seconds)."""
        # timedelta // timedelta is exact integer arithmetic on microseconds: no float rounding.
        return (_aware(now) - EPOCH) // self.generate_interval

    def slot_start(self, now: datetime) -> datetime:
        """The UTC instant the interval containing `now` began."""
        return EPOCH + self.slot(now) * self.generate_interval

    def slot_end(self, now: datetime) -> datetime:
        """The UTC instant the interval containing `now` ends (the next one begins)."""
        return self.slot_start(now) + self.generate_interval

    def expires_at(self, created_at: datetime) -> datetime:
        """When a key made at `created_at` stops being valid."""
        return _aware(created_at).astimezone(UTC) + self.lifetime


def _aware(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("naive datetime: the keystore only works with timezone-aware times")
    return moment
