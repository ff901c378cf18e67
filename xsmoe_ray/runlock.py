"""One job per run directory: an exclusive lock on ``run.out`` (or a sweep's) for the whole job;
and :func:`wait_lock`, the blocking form for short critical sections (a cache build, a study record).

Two jobs writing one run directory would train into the same checkpoint folder and delete each
other's checkpoints (``num_to_keep``), and which results survive would depend on timing. The lock
is ``flock`` on ``<dir>/.xsmoe.lock``: held while the job runs, released by the kernel on any exit
(a crash or ``kill -9`` included), so a stale lock cannot outlive its process. The file records the
holder (host, pid, start time, command) for the refusal message. It guards directories on this
machine's file systems; a URI ``run.out`` is locked through its local directory (``run.local_dir``).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".xsmoe.lock"


class RunLockedError(RuntimeError):
    """Another job holds the run directory."""


@contextmanager
def run_lock(directory: str | Path):
    """Hold the run directory's lock for the ``with`` block; refuse at once when another job has it."""
    path = Path(directory) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLockedError(f"{directory} is in use by another job ({_holder(path)}); wait for it to "
                                 "finish or choose another run.out") from None
        holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(holder).encode())
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextmanager
def wait_lock(path: str | Path):
    """Hold an exclusive ``flock`` on ``path`` for the ``with`` block, waiting for any other holder
    (another process doing the same read-modify-write); released by the kernel on any exit."""
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _holder(path: Path) -> str:
    try:
        h = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "holder unknown"
    return f"pid {h.get('pid')} on {h.get('host')} since {h.get('since')}: {h.get('command')}"
