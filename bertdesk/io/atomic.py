"""Atomic file writes: a reader sees the old file or the new one, never half."""

import os
import tempfile
from pathlib import Path


def atomic_write(path, write_fn, mode="wb"):
    """Call `write_fn(file)` on a temporary file next to `path`, fsync it, then
    rename it over `path`. On any error the temporary file is removed and the
    old `path` is left untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:  # named by the file asked for, not the temporary one's made-up name
        raise OSError(e.errno, e.strerror, str(path)) from None
    try:
        # text as given: no "\n" -> "\r\n" on Windows (a CSV's own "\r\n" rows
        # would become "\r\r\n", and line breaks inside its cells change)
        text = {} if "b" in mode else {"encoding": "utf-8", "newline": ""}
        with os.fdopen(fd, mode, **text) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path, text):
    atomic_write(path, lambda f: f.write(text), mode="w")

