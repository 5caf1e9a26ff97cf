"""Output paths: routed replaces only what it wrote, atomically, and never deletes anything else.

A folder is ours when it holds only the files routed writes in it and its marker file (config.json of a
checkpoint, state.json of a training state) says so. Anything else at an output path (a file, a link, a
user's folder, a checkpoint folder holding files of the user's) is refused, with or without --force;
--force only lets a command replace an output of its own kind. Deleting is by name: the files routed
writes, then an empty folder; never a recursive removal.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from routed.files import MB, describe_kind, read_json

MAX_NAME_BYTES = 100  # a name is also part of hidden siblings (.NAME.resume, .NAME.tmp-XXXXXXXX): below NAME_MAX
_NAME = re.compile(r"\w[\w.+-]*")  # letters and digits of any script, _ . + -


class OutputError(ValueError):
    """An output path that routed must not write: it holds something routed did not write, or a bad name."""


@dataclass(frozen=True)
class Kind:
    """A kind of folder routed writes: its files, and the marker file (with keys) that identifies it."""

    what: str
    files: frozenset[str]
    marker: str
    keys: frozenset[str]


CHECKPOINT = Kind(
    "a routed checkpoint",
    # the four a save writes, plus the sweeps, summary and diagnostics that `sweep --csv` and `reproduce --export` add
    frozenset({"config.json", "model.safetensors", "tokenizer.json", "history.json", "sweep.csv", "sweep_all.csv",
               "summary.json", "diagnostics.json"}),
    "config.json",
    frozenset({"model", "train", "corpus"}),
)
EXIT_ADAPTERS = Kind(
    "a folder of exit adapters",
    frozenset({"config.json", "adapters.safetensors", "history.json", "sweep.csv", "summary.json"}),
    "config.json",
    frozenset({"kind", "base", "exits"}),
)
HF_EXPORT = Kind(
    "a routed export to Hugging Face",
    frozenset({"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}),
    "config.json",
    frozenset({"routed_export"}),
)
TRAIN_STATE = Kind(
    "a routed training state",
    frozenset({"state.safetensors", "tokenizer.json", "state.json"}),
    "state.json",
    frozenset({"format_version", "step"}),
)


def check_name(name: str, what: str = "checkpoint name") -> str:
    """`name` if it is a plain name of at most MAX_NAME_BYTES bytes of letters, digits and _ . + -."""
    if not isinstance(name, str) or not name:
        raise OutputError(f"{what}: empty; give a name of letters, digits and _ . + -")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise OutputError(f"{what}: {name[:40]!r}... is {len(name.encode('utf-8', 'surrogatepass'))} bytes long; "
                          f"the limit is {MAX_NAME_BYTES}")
    if not _NAME.fullmatch(name):
        raise OutputError(f"{what}: {name!r} must be a plain folder name of letters, digits and _ . + - "
                          "(starting with a letter or digit)")
    return name


def output_folder(path: Path | str, what: str = "out") -> Path:
    """The absolute output path for `path` ("." and ".." resolved lexically), its last part a valid name."""
    folder = Path(os.path.abspath(os.fspath(path)))
    check_name(folder.name, what)
    return folder


def foreign_files(folder: Path, kind: Kind) -> list[str]:
    """Entries of `folder` that routed does not write in a folder of `kind` (links and subfolders included)."""
    return sorted(p.name for p in folder.iterdir() if p.name not in kind.files or not p.is_file() or p.is_symlink())


def ownership_problem(path: Path, kind: Kind) -> str | None:
    """Why the existing `path` is not a folder of `kind` that routed may replace; None when it is."""
    try:
        info = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):  # nothing there (a file as a parent is refused by the caller)
        return None
    if stat.S_ISLNK(info.st_mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(info.st_mode):
        return f"is {describe_kind(info.st_mode)}" if not stat.S_ISREG(info.st_mode) else "is a file"
    if not any(path.iterdir()):
        return None
    foreign = foreign_files(path, kind)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        return f"holds files routed did not write ({shown})"
    try:
        marker = read_json(path / kind.marker, MB, kind.marker)
    except ValueError as exc:
        return f"is not {kind.what} ({exc})"
    if not isinstance(marker, dict) or not kind.keys <= set(marker):
        return f"is not {kind.what} (its {kind.marker} is another program's)"
    return None


def check_replaceable(path: Path, kind: Kind, replace: bool, hint: str = "add --force to replace it",
                      what: str = "out") -> None:
    """OutputError unless writing `path` is safe: nothing there, an empty folder, or (with `replace`) ours."""
    problem = ownership_problem(path, kind)
    if problem is not None:
        raise OutputError(f"{what}: {path} {problem}; routed never replaces what it did not write: "
                          "choose another path")
    if not replace and path.is_dir() and any(path.iterdir()):
        raise OutputError(f"{what}: {path} already holds {kind.what}; {hint}")
    if path.parent.exists() and not path.parent.is_dir():
        raise OutputError(f"{what}: {path}: its parent {path.parent} is not a folder")


def check_writable(path: Path, what: str = "out") -> None:
    """OutputError unless something can be created where `path` will be (in its nearest existing ancestor),
    so that a run is refused before it starts rather than failing at its save. Nothing is left behind."""
    ancestor = path.parent
    while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    try:
        probe = tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=ancestor)
        os.rmdir(probe)
    except OSError as exc:
        raise OutputError(f"{what}: cannot write in {ancestor} ({exc.strerror or exc})") from None


def remove_owned(folder: Path, names) -> bool:
    """Delete the regular files named `names` in `folder`, then the folder if it is empty; True when gone."""
    for name in names:
        target = folder / name
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISREG(os.lstat(target).st_mode):
                target.unlink()
    try:
        folder.rmdir()
    except OSError:  # something else is in it (or it is already gone): left as it is
        return not os.path.lexists(folder)
    return True


def write_folder(path: Path, files: dict[str, bytes], kind: Kind = CHECKPOINT, replace: bool = True,
                 hint: str = "add --force to replace it") -> Path:
    """Replace folder `path` whole by one holding `files`, so that a crash at any moment (even SIGKILL)
    leaves either the old folder or the new one, and two writers of the same name never mix their files.

    Files are written and fsynced in a private temporary folder beside `path`, then swapped in under an
    exclusive lock on the parent folder. What is at `path` is replaced only when it is ours (see
    `check_replaceable`; with `replace` False, only an empty folder or nothing); else OutputError.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a checkpoint is readable like any saved file
    try:
        for name, data in files.items():
            _fsync_write(tmp / name, data)
        with folder_lock(path.parent):
            check_replaceable(path, kind, replace, hint, "save")
            if os.path.lexists(path) and not any(path.iterdir()):
                path.rmdir()  # an empty folder: nothing to keep
            if os.path.lexists(path):
                old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
                os.replace(path, old / "previous")
                os.replace(tmp, path)
                if remove_owned(old / "previous", kind.files):
                    old.rmdir()
            else:
                os.replace(tmp, path)
    except BaseException:
        remove_owned(tmp, files)
        raise
    return path


def write_file(path: Path, data: bytes) -> Path:
    """Write a file atomically through a private temporary file beside it (never a guessable name)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def check_output_file(path: Path, is_ours, replace: bool, what: str, hint: str = "add --force to replace it") -> None:
    """OutputError unless `path` is free, or (with `replace`) a regular file that `is_ours(path)` recognises."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        if path.parent.exists() and not path.parent.is_dir():
            raise OutputError(f"{what}: {path}: its parent {path.parent} is not a folder") from None
        return
    if not stat.S_ISREG(info.st_mode):
        raise OutputError(f"{what}: {path} is {describe_kind(info.st_mode)}; routed writes only regular files")
    if not is_ours(path):
        raise OutputError(f"{what}: {path} exists and was not written by routed; choose another path")
    if not replace:
        raise OutputError(f"{what}: {path} exists; {hint}")


@contextlib.contextmanager
def folder_lock(folder: Path):
    """An exclusive flock on a folder; the kernel releases it when the holder exits, even by SIGKILL."""
    import fcntl

    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def recover(path: Path) -> None:
    """After a crash between the two renames of `write_folder`, put the previous folder back."""
    if os.path.lexists(path) or not path.parent.is_dir() or not any(path.parent.glob(f".{path.name}.old-*/previous")):
        return
    with folder_lock(path.parent):  # no writer is between its renames while we hold it
        for old in path.parent.glob(f".{path.name}.old-*/previous"):
            if not os.path.lexists(path):
                os.replace(old, path)
                with contextlib.suppress(OSError):
                    old.parent.rmdir()


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
