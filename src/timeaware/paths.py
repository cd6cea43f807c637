"""Where a command may write: one rule for every output path, checked before any work starts.

An output path is refused when writing it would destroy something or fail halfway: a device, FIFO or
socket; an existing file where a folder is wanted (or a folder, device ... where a file is wanted); a
dangling symlink; a path inside one of the project's own run or checkpoint folders (a fixed model written
over a checkpoint's weights, an evaluation over its ``state.json``); a folder that cannot be written or
has no room (found with a small probe write in the nearest existing folder, removed at once).
``describe_os_error`` turns any ``OSError`` into the one line the command line prints.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path
from typing import Literal

Kind = Literal["folder", "file"]
MIN_FREE = 1 << 20   # bytes a writing command needs at the least (more when it says how much)
PROBE = 4096         # bytes of the probe write


def is_run_folder(path: Path) -> bool:
    """A training run's folder (it has checkpoints or metrics), even when its ``latest`` pointer is gone."""
    return (path / "checkpoints").is_dir() or (path / "metrics.jsonl").is_file()


def is_checkpoint_folder(path: Path) -> bool:
    return (path / "state.json").is_file()


def check_output(path: str | os.PathLike[str], kind: Kind = "folder", *, flag: str = "--out", run: bool = False,
                 need: int = MIN_FREE, own: str | None = None) -> Path:
    """``path`` if a command may write it (a folder or one file), else a one-line ``ValueError``.

    ``run``: the folder is a training run's own (it may already hold that run; the caller decides what
    to do with it). ``need``: bytes that must be free where it is written. ``own``: the file that marks a
    folder as this command's earlier output (``sample``: grid.png): an existing folder must be empty or hold
    it, so that a folder of the user's other files is never written into.
    """
    path = Path(path)
    where = f"{flag} {path}"
    try:
        _check_names(path, where)
        _check_target(path, kind, where)
        if own is not None and path.is_dir() and not (path / own).exists():
            other = next(iter(sorted(path.iterdir())), None)
            if other is not None:
                raise ValueError(f"{where}: holds other files ({other.name} ...) and no {own}, so it is not an "
                                 "earlier output of this command; give a new or empty folder")
        _check_not_inside_a_run(path, kind, run, where)
        _probe(_nearest_existing(path, where), need, where)
    except OSError as err:
        raise ValueError(f"{where}: {describe_os_error(err)}") from None
    except RuntimeError as err:  # pathlib's symlink loop
        raise ValueError(f"{where}: {err}") from None
    return path


def describe_os_error(err: OSError) -> str:
    """One line naming the path and the cause, e.g. ``out/x.png: No space left on device (ENOSPC)``."""
    code = errno.errorcode.get(err.errno or 0)
    if err.filename is None or not err.strerror:
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        return f"{text} ({code})" if code and code not in text else text
    names = str(err.filename) + (f" -> {err.filename2}" if err.filename2 is not None else "")
    return f"{names}: {err.strerror}" + (f" ({code})" if code else "")


def _check_names(path: Path, where: str) -> None:
    """Before anything is looked up: a name longer than the file system allows would fail only when written."""
    limit = _name_max(Path(path.anchor or "."))
    long = [part for part in path.parts if len(os.fsencode(part)) > limit]
    if long:
        raise ValueError(f"{where[:80]}...: the name {long[0][:20]}... is longer than the {limit} bytes the file "
                         "system allows (ENAMETOOLONG)")


def _check_target(path: Path, kind: Kind, where: str) -> None:
    if path.is_symlink() and not path.exists():
        raise ValueError(f"{where}: is a dangling symlink (to {os.readlink(path)}); remove it or choose another path")
    if not path.exists():
        return
    mode = path.stat().st_mode
    if kind == "folder" and not stat.S_ISDIR(mode):
        raise ValueError(f"{where}: exists and is {_describe_mode(mode)}, not a folder; choose another path")
    if kind == "file" and not stat.S_ISREG(mode):
        raise ValueError(f"{where}: exists and is {_describe_mode(mode)}, not a regular file; choose another path")


def _check_not_inside_a_run(path: Path, kind: Kind, run: bool, where: str) -> None:
    full = path.resolve()
    own = [full] if kind == "folder" else []
    for folder in [*own, *full.parents]:
        if is_checkpoint_folder(folder):
            raise ValueError(f"{where}: is inside the checkpoint folder {folder}; writing there would replace its "
                             "files, choose a path outside it")
        if is_run_folder(folder) and not (run and folder == full):
            raise ValueError(f"{where}: is inside the run folder {folder}; writing there would mix with or replace "
                             "the run's files, choose a path outside it")


def _nearest_existing(path: Path, where: str) -> Path:
    for candidate in [path, *path.parents]:
        if candidate.exists():
            if not candidate.is_dir() and candidate != path:
                raise ValueError(f"{where}: {candidate} is {_describe_mode(candidate.stat().st_mode)}, not a folder")
            return candidate if candidate.is_dir() else candidate.parent
    return Path(".")


def _probe(folder: Path, need: int, where: str) -> None:
    """Fail now, not halfway, when ``folder`` is read-only, not ours to write or full."""
    fs = os.statvfs(folder)
    free = fs.f_bavail * fs.f_frsize
    if free < need:
        raise ValueError(f"{where}: only {free / 2**20:.1f} MiB free in {folder}, {need / 2**20:.1f} MiB needed "
                         "(ENOSPC); free some space or choose another path")
    fd, name = tempfile.mkstemp(prefix=".timeaware-probe-", dir=folder)
    try:
        os.write(fd, b"\0" * PROBE)
    finally:
        os.close(fd)
        os.unlink(name)


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _describe_mode(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISREG, "a file"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a special file"
