"""Seeds that depend only on what they are for: the same in every process, worker and run."""
from __future__ import annotations

import hashlib


def stable_seed(*parts) -> int:
    """A stable 63-bit seed from any values (independent of PYTHONHASHSEED and worker count)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)
