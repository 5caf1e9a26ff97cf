"""Reading files we did not write: regular files only, a size bound on every read, JSON of bounded depth.

A FIFO, a socket or a device (/dev/zero) would block or never end; a file larger than its bound would be
read whole into memory. Both are refused before a byte is read, with the caller's error class.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

MB = 2**20
MAX_JSON_DEPTH = 64  # our JSON files nest 3-4 levels; a hostile one may nest thousands


def describe_kind(mode: int) -> str:
    """What a file that is not a regular file is, in words (for error messages)."""
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a regular file"


def regular_size(path: Path | str, limit: int, what: str, error: type[Exception] = ValueError) -> int:
    """The size of `path` in bytes; `error` if it is missing, not a regular file, or larger than `limit`."""
    try:
        info = os.stat(path)  # follows a link: the file it names must itself be regular
    except FileNotFoundError:
        raise error(f"{what}: {str(path)!r} does not exist") from None
    except OSError as exc:
        raise error(f"{what}: {str(path)!r} cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{what}: {str(path)!r} is {describe_kind(info.st_mode)}, not a regular file")
    if info.st_size > limit:
        raise error(f"{what}: {str(path)!r} is {info.st_size / MB:,.1f} MB, more than the limit of {limit / MB:,.1f} MB")
    return info.st_size


def read_regular(path: Path | str, limit: int, what: str, error: type[Exception] = ValueError) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; `error` otherwise (never blocks on a FIFO)."""
    regular_size(path, limit, what, error)
    try:
        # O_NONBLOCK: should the path be swapped for a FIFO after the check, open() still returns at once
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise error(f"{what}: {str(path)!r} cannot be read ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):  # the file opened is the file checked
            raise error(f"{what}: {str(path)!r} is {describe_kind(info.st_mode)}, not a regular file")
        data = f.read(limit + 1)
    if len(data) > limit:  # it grew since the check
        raise error(f"{what}: {str(path)!r} is larger than the limit of {limit / MB:,.1f} MB")
    return data


def parse_json(data: bytes, what: str, error: type[Exception] = ValueError):
    """JSON from bytes: UTF-8, at most MAX_JSON_DEPTH levels deep; `error` otherwise.

    NaN and Infinity are read as Python writes them; the fields that hold numbers check their values.
    """
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise error(f"{what}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise error(f"{what}: nested more than {MAX_JSON_DEPTH} levels deep") from None
    except ValueError as exc:  # JSONDecodeError, and ints past Python's digit limit
        raise error(f"{what}: not valid JSON ({str(exc).splitlines()[0][:200]})") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise error(f"{what}: nested more than {MAX_JSON_DEPTH} levels deep")
    return value


def read_json(path: Path | str, limit: int, what: str, error: type[Exception] = ValueError):
    """`parse_json` of a regular file of at most `limit` bytes."""
    return parse_json(read_regular(path, limit, what, error), what, error)


def _depth(value) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_JSON_DEPTH:
            return depth
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest
