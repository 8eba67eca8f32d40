"""Keep the C allocator from holding on to argon2's working memory after each password hash."""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Final

# glibc's mallopt parameter (malloc.h): allocations of at least this many bytes are mmap()ed and
# given back to the system when freed.
_M_MMAP_THRESHOLD: Final = -3
MMAP_THRESHOLD: Final = 1 << 20


def return_large_blocks() -> bool:
    """Make every allocation of 1 MiB or more its own mapping, unmapped when freed.

    argon2 allocates its memory cost (19 MiB at the default profile) for every hash and frees it
    after. glibc maps the first such block and unmaps it on free, but then raises its mmap
    threshold to that size (the dynamic threshold), so every later one comes from the arena of
    the thread that hashes, and the arena keeps it: measured, `tokensvc serve` held 19 MiB more
    from its first logins on (141 -> 121 MiB at start). A fixed threshold turns that off; the
    price is mapping the block afresh per hash, small beside argon2's own sweep of it.

    True when set; False where the C library has no mallopt (musl, macOS): nothing changes.
    """
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
