# -*- coding: utf-8 -*-
# Copyright: devbox.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""File helpers shared by the release store (releases.py) and the backup store (backup.py).

sha256 of a file, a copy that hashes what it copies, an fsynced write and a directory fsync, and a
path-prefix check. Plain Python (no ansible import).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import os

CHUNK = 1 << 20


def hash_file(path):
    """sha256 (hex) of the file at ``path``."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            chunk = f.read(CHUNK)
            if not chunk:
                return h.hexdigest()
            h.update(chunk)


def copy_hashed(src, dst, mode, fd=None, fsync=False):
    """Copy ``src`` to the new file ``dst`` (or into ``fd``, already open on it), set ``mode`` and return
    the sha256 of what was copied. ``dst`` is created with O_EXCL, so an existing file or a symlink in its
    place is an error; with ``fsync`` the data is on disk before it returns."""
    h = hashlib.sha256()
    with open(src, "rb") as fin:
        if fd is None:
            fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as fout:
            while True:
                chunk = fin.read(CHUNK)
                if not chunk:
                    break
                h.update(chunk)
                fout.write(chunk)
            if fsync:
                fout.flush()
                os.fsync(fout.fileno())
    os.chmod(dst, mode)
    return h.hexdigest()


def write_synced(path, data):
    """Write bytes ``data`` to ``path`` (created or truncated) and fsync it."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(path):
    """fsync a directory so the names created in it survive a crash (ignored where unsupported)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def inside(path, top):
    """True when the normalised ``path`` is ``top`` or below it (a string check: resolve links first)."""
    return path == top or path.startswith(top.rstrip("/") + "/")
