"""Failed-login lockout: progressive waits per identity, identity + IP, and IP.

`LockoutStore` is the interface; `RedisLockoutStore` serves several workers and replicas,
`MemoryLockoutStore` the embedded single-process mode.
"""

from tokensvc.accounts.lockout.memory_store import MemoryLockoutStore
from tokensvc.accounts.lockout.policy import LockoutPolicy
from tokensvc.accounts.lockout.redis_store import RedisLockoutStore
from tokensvc.accounts.lockout.store import (
    AttemptStanding,
    CounterStatus,
    LockoutStatus,
    LockoutStore,
    judged_or_taken_back,
)
from tokensvc.operations.redisconn import redis_client_from_url

__all__ = [
    "AttemptStanding",
    "CounterStatus",
    "LockoutPolicy",
    "LockoutStatus",
    "LockoutStore",
    "MemoryLockoutStore",
    "RedisLockoutStore",
    "judged_or_taken_back",
    "redis_client_from_url",
]
