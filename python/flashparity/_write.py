"""What flashparity writes: reports and outputs (`-o`, `run --out`, the HTML report, a dump's
manifest) the way a careful shell redirection would, but never half a file
(:func:`write_atomically`), and text for a terminal with nothing in it that a terminal would obey
(:func:`printable`)."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from typing import BinaryIO, Callable

# Paths that name a process's open files rather than files: /dev/stdout is a link to
# /proc/self/fd/1, which may lead to a pipe, a terminal or a file the shell opened (and is writing
# to); written in place, never replaced.
_STREAM_PATHS = ("/dev/stdout", "/dev/stderr", "/dev/fd/", "/proc/")


def _names_a_stream(path: str) -> bool:
    p = os.path.abspath(path)
    return p.startswith(_STREAM_PATHS) or p in ("/dev/stdout", "/dev/stderr")


def write_atomically(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Write `path` with ``write(fh)``.

    * A regular file (or none yet) is written through a temporary file in its directory, flushed and
      renamed over it once complete: an error or an interrupt (Ctrl-C included) leaves the previous
      file, or none, never half a file. An existing file keeps its permission bits (and, where this
      process may set them, its owner and group); a new one gets what a plain open() would give it.
    * A symbolic link is followed: its target is the file written (and the link stays a link).
    * Anything else (a device such as /dev/null, a FIFO, a terminal, /dev/stdout or /dev/fd/N) is
      opened and written in place, appending, as `>>` would: it is never replaced.
    """
    try:
        st = os.stat(path)  # (follows links)
    except FileNotFoundError:
        st = None
    except NotADirectoryError:
        st = None  # (open() below says what is wrong)
    if (st is not None and not stat.S_ISREG(st.st_mode)) or _names_a_stream(path):
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(21, "Is a directory", path)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        return
    target = os.path.realpath(path)  # a link's target (a dangling link: the file it names)
    directory = os.path.dirname(target)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(target) + ".", suffix=".partial", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        if st is not None:
            os.chmod(tmp, stat.S_IMODE(st.st_mode))
            if (st.st_uid, st.st_gid) != (os.getuid(), os.getgid()):
                with contextlib.suppress(OSError):  # (only root may give a file away)
                    os.chown(tmp, st.st_uid, st.st_gid)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def printable(text: str) -> str:
    """`text` for a terminal: every control or other non-printable character (ESC, CR, a newline, a
    right-to-left override) shown as its Python escape, so that a tensor name from an untrusted file
    cannot move the cursor, erase or fake a line, or hide what follows. JSON output stays exact."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
