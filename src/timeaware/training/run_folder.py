"""One process per run folder: an advisory lock that the OS drops when its process dies.

Two trainings started with the same ``--out`` would interleave their metrics and overwrite each other's
checkpoints; the second is refused with one line. The lock is ``fcntl.flock`` on ``RUN/.lock``, released
by the kernel when the process ends in any way (SIGKILL included), so a crashed run never blocks
``--resume``. Under a distributed launch rank 0 alone holds it (it alone writes).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from ..paths import check_output, describe_os_error, is_run_folder
from ..resources import launch_rank
from .checkpoint import resolve_resume

LOCK = ".lock"


@contextlib.contextmanager
def claim_run_folder(out: str | Path, resume: bool | str | Path | None) -> Iterator[Path | None]:
    """Check ``out`` as a run folder, hold its lock for the block, and give the checkpoint to resume from.

    ``resume`` as in ``resolve_resume``. When the block fails before the run wrote anything, the lock file
    and the folders this call created are removed again (bad input leaves no trace).
    """
    out = check_output(out, "folder", run=True)
    if launch_rank() != 0:
        yield resolve_resume(out, resume)
        return
    created = [p for p in [out, *out.parents] if not p.exists()]
    out.mkdir(parents=True, exist_ok=True)
    new_lock = not (out / LOCK).exists()
    fd = _lock(out)
    try:
        yield resolve_resume(out, resume)
    except BaseException:
        if new_lock and not is_run_folder(out):
            (out / LOCK).unlink(missing_ok=True)
            for folder in created:  # innermost first; only those left empty
                with contextlib.suppress(OSError):
                    folder.rmdir()
        raise
    finally:
        os.close(fd)


def _not_a_file(path: Path) -> str:
    """'' for a regular file or nothing there, else what is there instead (a symlink, a FIFO …)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return ""
    if stat.S_ISREG(mode):
        return ""
    if stat.S_ISLNK(mode):
        return f"a symlink (to {os.readlink(path)})"
    return "a FIFO" if stat.S_ISFIFO(mode) else "a folder" if stat.S_ISDIR(mode) else "not a regular file"


def _lock(out: Path) -> int:
    """An open descriptor of ``out/.lock`` holding an exclusive flock; a one-line ValueError when it is taken."""
    path = out / LOCK
    for name in (LOCK, "metrics.jsonl", "state.json"):  # a link or FIFO here would be written through or hang
        kind = _not_a_file(out / name)
        if kind:
            raise ValueError(f"{out / name}: is {kind}; a run folder's {name} must be a regular file (remove it)")
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", errors="replace").strip()
            os.close(fd)
            raise ValueError(f"{out} is in use by another timeaware process{f' (pid {holder})' if holder else ''}; "
                             "wait for it to finish or choose another --out") from None
        except OSError as err:  # e.g. a file system without locks
            os.close(fd)
            raise ValueError(f"{out}: cannot lock the run folder ({describe_os_error(err)})") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # removed by a process that gave up on the folder: lock the file that is there now
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd
