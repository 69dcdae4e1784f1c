"""What flashparity writes: reports and outputs (`-o`, `run --out`, the HTML report, a dump's
manifest) the way a careful shell redirection would, but never half a file
(:func:`write_atomically`), and text for a terminal with nothing in it that a terminal would obey
(:func:`printable`)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import stat
import sys
import tempfile
from typing import BinaryIO, Callable

# Paths that name this process's open files rather than files: /dev/stdout is a link to
# /proc/self/fd/1, which may lead to a pipe, a terminal or a file the shell opened and writes to.
_FD_PATH = re.compile(r"^/(?:dev/fd|proc/self/fd|proc/thread-self/fd|proc/(\d+)/fd|proc/\d+/task/\d+/fd)/(\d+)$")
_STD_PATHS = {"/dev/stdout": 1, "/dev/stderr": 2}


def _open_descriptor(path: str, st: os.stat_result | None) -> int | None:
    """A descriptor to write `path` in place through, or None for a plain file: this process's own
    descriptor when `path` stands for it (/dev/stdout, /dev/fd/N, /proc/self/fd/N, a link to one, or
    the very file open as stdout or stderr), duplicated so that the shell's offset is shared; any
    other descriptor path (another process's /proc/PID/fd/N, one of ours open read-only) opened for
    appending, never replaced. Python's own buffers are flushed first, in the order written."""
    p = os.path.abspath(path)
    m = _FD_PATH.match(p)
    fd = _STD_PATHS.get(p)
    if m is not None and (p.startswith(("/dev/fd/", "/proc/self/fd/")) or m.group(1) == str(os.getpid())):
        fd = int(m.group(2))
    if fd is None and st is not None and st.st_ino != 0:
        for std in (1, 2):
            with contextlib.suppress(OSError):
                own = os.fstat(std)
                if (own.st_dev, own.st_ino) == (st.st_dev, st.st_ino):
                    fd = std
                    break
    if fd is not None:
        try:
            writable = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY
        except OSError:
            writable = False
        if not writable:  # (not open here, or open for reading only: the path itself is opened below)
            fd = None
    if fd is None and m is None:
        return None
    for stream in (sys.stdout, sys.stderr):  # (whatever Python buffered goes out first)
        with contextlib.suppress(Exception):
            if stream is not None:
                stream.flush()
    return os.dup(fd) if fd is not None else os.open(path, os.O_WRONLY | os.O_APPEND)


class _Stream:
    """A file object with nothing but write(): NumPy's np.save then streams through it in chunks
    instead of asking a pipe or terminal for a file position it does not have."""

    def __init__(self, fh: BinaryIO):
        self._fh = fh

    def write(self, data: bytes) -> int:
        return self._fh.write(data)


def write_atomically(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Write `path` with ``write(fh)``.

    * A regular file (or none yet) is written through a temporary file in its directory, flushed and
      renamed over it once complete: an error or an interrupt (Ctrl-C included) leaves the previous
      file, or none, never half a file. An existing file keeps its permission bits (and, where this
      process may set them, its owner and group); a new one gets what a plain open() would give it.
    * A symbolic link is followed: its target is the file written (and the link stays a link). A
      file with other hard links is replaced under this name only (the rename splits it from them).
    * This process's own output (/dev/stdout, /dev/stderr, /dev/fd/N, or the file that stdout or
      stderr is) is written through that descriptor, after what Python buffered for it: shell
      redirections keep their order and offset.
    * Anything else (a device such as /dev/null, a FIFO, a terminal) is opened and written in place,
      appending, as `>>` would: it is never replaced.
    `write` gets an object with `write()`; for anything but a regular file, nothing more (no seek).
    """
    try:
        st = os.stat(path)  # (follows links)
    except FileNotFoundError:
        st = None
    except NotADirectoryError:
        st = None  # (open() below says what is wrong)
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(21, "Is a directory", path)
    fd = _open_descriptor(path, st)
    if fd is None and st is not None and not stat.S_ISREG(st.st_mode):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    if fd is not None:
        with os.fdopen(fd, "wb") as fh:
            write(_Stream(fh))  # type: ignore[arg-type]
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
            new = os.stat(tmp)
            if new.st_uid != st.st_uid:
                with contextlib.suppress(OSError):  # (only root may give a file away)
                    os.chown(tmp, st.st_uid, -1)
            if new.st_gid != st.st_gid:
                with contextlib.suppress(OSError):  # (an owner may pass it to a group of theirs)
                    os.chown(tmp, -1, st.st_gid)
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
