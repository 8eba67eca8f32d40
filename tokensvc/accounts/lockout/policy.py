"""How many failures each counter tolerates, and how long the waits after that last."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LockoutPolicy:
    """Thresholds per counter scope, progressive waits, and how long failures are remembered.

    A counter with `n` failures is locked when `n >= threshold`, for
    `min(max_wait, base_wait * 2 ** (n - threshold))` seconds after its last failure. A counter
    is forgotten `window` seconds after its last failure plus that wait, so sitting out a lock
    at the cap does not also wipe the count (which would hand out `threshold` free guesses again).
    """

    identity_threshold: int = 10
    identity_ip_threshold: int = 5
    ip_threshold: int = 50
    base_wait: float = 1.0
    max_wait: float = 15 * 60.0
    window: float = 15 * 60.0
    trusted_ip_window: float = 30 * 24 * 3600.0
    #: How many recent successful IPs are kept per identity (the newest win).
    max_trusted_ips: int = 16
    #: How many identity+IP counters one identity's status and clear() can enumerate.
    max_tracked_pairs: int = 256

    def __post_init__(self) -> None:
        for name in ("identity_threshold", "identity_ip_threshold", "ip_threshold"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if not 0 < self.base_wait <= self.max_wait:
            raise ValueError("need 0 < base_wait <= max_wait")
        if self.window <= 0 or self.trusted_ip_window < 0:
            raise ValueError("window must be positive and trusted_ip_window not negative")
        if self.max_trusted_ips < 0 or self.max_tracked_pairs < 1:
            raise ValueError("max_trusted_ips must not be negative, max_tracked_pairs positive")

    def wait(self, failures: int, threshold: int) -> float:
        """Seconds a counter with `failures` stays locked after its last failure (0: open)."""
        if failures < threshold:
            return 0.0
        # Capping the exponent keeps 2 ** n finite; 2 ** 60 seconds is past any sane cap anyway.
        return min(self.max_wait, self.base_wait * 2.0 ** min(failures - threshold, 60))
