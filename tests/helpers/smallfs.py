"""Small file systems made by a test: a size-limited tmpfs, else a loop-mounted ext4 image.

For tests of what happens when the disk fills (``test_full_disk.py``) or nears
a watermark (``test_retention.py``). Making none is a failure that says why,
not a skip: those guarantees are not tested otherwise.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from .externals import require_integration


def mount_small_fs(mountpoint: Path, size_mb: int, image: Path) -> str:
    """Mount a file system of ``size_mb`` at ``mountpoint``; return how ("tmpfs" or "loop")."""
    require_integration("mount (as root)")
    mountpoint.mkdir(parents=True, exist_ok=True)
    tmpfs = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if tmpfs.returncode == 0:
        return "tmpfs"
    with open(image, "wb") as fh:
        fh.truncate(size_mb * 1024 * 1024)
    mkfs = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True, text=True, check=False)
    loop = subprocess.run(
        ["mount", "-o", "loop", str(image), str(mountpoint)], capture_output=True, text=True, check=False
    )
    if mkfs.returncode == 0 and loop.returncode == 0:
        return "loop"
    pytest.fail(
        "this test needs a small file system and could make none: run it as root (or with CAP_SYS_ADMIN).\n"
        f"  mount -t tmpfs: {tmpfs.stderr.strip() or tmpfs.returncode}\n"
        f"  mkfs.ext4 + mount -o loop: {(mkfs.stderr + loop.stderr).strip() or loop.returncode}"
    )


@contextmanager
def small_file_systems(base: Path) -> Iterator[Callable[[str, int], Path]]:
    """``make(name, size_mb)`` mounts a small file system under ``base``; all are unmounted on exit."""
    mounted: list[Path] = []

    def make(name: str, size_mb: int) -> Path:
        point = base / name
        mount_small_fs(point, size_mb, base / f"{name}.img")
        mounted.append(point)
        return point

    try:
        yield make
    finally:
        for point in reversed(mounted):
            subprocess.run(["umount", "-l", str(point)], check=False)
