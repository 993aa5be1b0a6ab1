"""Shared test settings: small, deterministic, single-threaded torch, and a bounded /tmp.

A run writes a ResNet-18 checkpoint (about 90 MB) in many tests. Kept, the suite's folders reach
10-20 GB, which filled a CI disk once. So a passing test's ``tmp_path`` is removed when it ends
(``tmp_path_retention_policy = "failed"`` in ``pyproject.toml``) and the module-scoped fixtures
share :func:`module_tmp`, removed when their module ends unless one of its tests failed.
"""

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from helpers_mounts import read_only_folder  # noqa: E402, F401  (a fixture for every test file)


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory, request) -> Iterator[Callable[[str], Path]]:
    """``module_tmp(name)`` makes a fresh folder; all of them go when the module's tests are done.

    They stay on disk, like a failed test's ``tmp_path``, when a test of the module failed.
    """
    made: list[Path] = []
    failed_before = request.session.testsfailed

    def make(name: str) -> Path:
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield make
    if request.session.testsfailed == failed_before:
        for path in made:
            shutil.rmtree(path, ignore_errors=True)
