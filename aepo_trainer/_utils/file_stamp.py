"""A cheap "has this file changed?" check, shared by the labelling server's token file and its task files."""

from __future__ import annotations

import os

__all__ = ["file_stamp"]


def file_stamp(path) -> tuple | None:
    """`(mtime_ns, size, inode)` of `path`, or None when it does not exist: stat only, no read. The inode is part of
    it so that a file replaced atomically (write a copy, rename it over) is seen as changed even when its time and
    size are the same."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)
