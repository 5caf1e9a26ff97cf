"""Sharing long work between processes: one claim file per piece of work, holding the claimant's pid.

A claim whose process has died (killed, out of memory, the machine restarted) is taken over, so a stopped
run never blocks the command that resumes it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

FRESH_S = 10.0  # an empty claim younger than this is being written, not abandoned


def claim(path: Path) -> bool:
    """Atomically create the claim file `path` for this process; False while a live process holds it."""
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                text = path.read_text()
                if not text and time.time() - path.stat().st_mtime < FRESH_S:
                    return False  # just created: its writer has not written its pid yet
                pid = int(text or 0)
                if pid <= 0:  # os.kill(0, ...) would signal our own process group and "succeed"
                    raise ValueError(pid)
                os.kill(pid, 0)
                return False  # alive: someone else's work
            except (ValueError, ProcessLookupError, FileNotFoundError):
                path.unlink(missing_ok=True)  # stale (or empty and old: its writer died before writing its pid)
                continue
            except PermissionError:  # alive, under another user
                return False
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True
    return False


def release(path: Path) -> None:
    """Drop a claim this process holds (finished, or failed: either way the work is free again)."""
    path.unlink(missing_ok=True)
