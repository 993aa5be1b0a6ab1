"""Tiny tmpfs mounts for the full-disk and read-only tests (root only; skipped elsewhere)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def mount_tmpfs(folder: Path, options: str) -> None:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")


def unmount(folder: Path) -> None:
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.fixture
def read_only_folder(tmp_path: Path):
    """A folder nobody can write: a read-only tmpfs as root, mode 0555 otherwise."""
    folder = tmp_path / "ro"
    if os.geteuid() == 0:
        mount_tmpfs(folder, "ro,size=1m")
        yield folder
        unmount(folder)
    else:
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
