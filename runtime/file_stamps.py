"""Files by their sha256 (``sha256_of``), and bundle files hashed once per change, not once per start (``matches``).

The sha256 of an int8 bundle's 100 MB of graphs took 0.10 s of a 0.54 s load on an x86 host, and a Raspberry Pi 4
(no SHA instructions) hashes several times slower. A file whose sha256 matched its manifest is recorded with its
stat (device, inode, size, mtime and ctime, in nanoseconds) under the user cache; while that stat is unchanged the
file holds the bytes that matched, and is not hashed again. Every write to a file, and every change of its mtime,
sets its ctime to now, which no user can set back: an edit, a truncation or a copy over it is hashed again. Where
the cache cannot be written the file is simply hashed on every load.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

RACY_NS = 2_000_000_000


def sha256_of(paths: list[Path], chunk: int = 1 << 22) -> str:
    """One digest over the bytes of several files in order (a model split into parts hashes as one)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                digest.update(block)
    return digest.hexdigest()


def _stamp_path(file: Path) -> Path:
    from edge_asr.runtime.bundle_cache import cache_root

    key = hashlib.sha256(str(file.resolve()).encode()).hexdigest()[:32]
    return cache_root() / "verified" / f"{key}.json"


def _stat_of(file: Path) -> list[int]:
    stat = file.stat()
    return [stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]


def matches(file: Path, sha256: str) -> bool:
    """Whether ``file``'s bytes have the sha256 ``sha256``: known from its stamp while it is unchanged, else
    hashed and stamped when they match (module docstring)."""
    before = _stat_of(file)
    stamp = _stamp_path(file)
    try:
        if json.loads(stamp.read_text()) == {"sha256": sha256, "stat": before}:
            return True
    except (OSError, ValueError):
        pass
    if sha256_of([file]) != sha256:
        return False
    # Stamped only when it was not written while hashed, nor in the RACY_NS before: a write in the same clock tick
    # as the stat would leave every time as it was (git's "racy" files); such a file is hashed again next time.
    if _stat_of(file) == before and time.time_ns() - max(before[3:]) > RACY_NS:
        try:
            stamp.parent.mkdir(parents=True, exist_ok=True)
            partial = stamp.with_suffix(f".{os.getpid()}.tmp")
            partial.write_text(json.dumps({"sha256": sha256, "stat": before}))
            partial.replace(stamp)
        except OSError:
            pass  # a cache that cannot be written: the file is hashed again next time
    return True
