"""Reading a file a setting names: regular files only, found out without waiting.

``open()`` on a FIFO waits for a writer, and a device may never end, so a
plain open of ``--config``, ``--admin-token-file``, ``--backend-ca``,
``--tls-cert``/``--tls-key`` or ``--sticky-secret-file`` could hang: ``--check``
would never return, and a reload would hold the change lock (and so ignore
SIGTERM) for as long as nobody wrote to the pipe. A file is therefore opened
with ``O_NONBLOCK`` (which never waits), checked with ``fstat``, and refused
with an ``OSError`` unless it is a regular file; only then is it read (a
regular file never blocks, ``O_NONBLOCK`` or not). A directory keeps its
usual error, "Is a directory".

Every reader of such a file goes through ``open_regular`` (the balancer's
settings, and ``traffic``'s targets, scenarios, logs and bodies).
"""

from __future__ import annotations

import errno
import os
import stat
from typing import BinaryIO

# What a file that is not a regular one is, for the message.
_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def open_regular(path: str) -> BinaryIO:
    """``path`` opened for reading in binary; ``OSError`` (its ``strerror`` says why) if it is no regular file."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _KINDS if test(mode)), "not a file")
            raise OSError(errno.EINVAL, f"not a regular file ({kind})", path)
        os.set_blocking(fd, True)
        return open(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str) -> bytes:
    """The bytes of the regular file ``path``; ``OSError`` if it cannot be read or is no regular file."""
    with open_regular(path) as file:
        return file.read()
