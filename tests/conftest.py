"""Shared test settings: small, deterministic, single-threaded torch."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

torch.set_num_threads(1)

from helpers_mounts import read_only_folder  # noqa: E402, F401  (a fixture for every test file)
