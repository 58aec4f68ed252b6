"""Storage faults for tests: a small tmpfs that fills up (or turns read-only) mid-run, then gets its space back.

The tmpfs is mounted by the test (the suite runs as root here and in CI); where mounting is not allowed (a container
without CAP_SYS_ADMIN, a non-root user) the test skips and says why. A full disk is produced by a ballast file written
until the filesystem refuses (`fill`), so the moment it fills is chosen by the test (e.g. right after the n-th
annotation batch is committed), not left to byte arithmetic; `free` deletes the ballast, as a user would.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


class SmallDisk:
    """A tmpfs of `size` bytes at `root`."""

    def __init__(self, root: Path, size: int):
        self.root = root
        self.size = size
        self.ballast = root / "ballast.bin"

    def fill(self) -> None:
        """Write the ballast until the disk refuses: every later write that needs a new block fails (ENOSPC)."""
        with open(self.ballast, "ab", buffering=0) as f:
            for block in (1 << 16, 1 << 12, 1):
                try:
                    while True:
                        f.write(b"\0" * block)
                except OSError as error:
                    if error.errno != errno.ENOSPC:
                        raise

    def free(self) -> None:
        self.ballast.unlink(missing_ok=True)

    def read_only(self) -> None:
        _mount("-o", "remount,ro", str(self.root))

    def writable(self) -> None:
        _mount("-o", "remount,rw", str(self.root))


def _mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True)
    if result.returncode:
        raise OSError(result.stderr.strip() or f"mount {' '.join(args)} failed")


@contextmanager
def small_tmpfs(root: Path, size: int = 4 << 20) -> Iterator[SmallDisk]:
    """A tmpfs of `size` bytes mounted at the empty folder `root`, unmounted afterwards (lazily: the test's own SQLite
    connections may still hold files open). Skips the test where mounting is not allowed."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill up needs root; this test runs as a normal user")
    try:
        _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(root))
    except OSError as error:
        pytest.skip(f"cannot mount a tmpfs here ({error}): a container without CAP_SYS_ADMIN forbids it")
    try:
        yield SmallDisk(root, size)
    finally:
        subprocess.run(["umount", "-l", str(root)], capture_output=True)
