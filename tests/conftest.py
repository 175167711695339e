"""Shared test settings: one CPU thread per process (these machines have two busy cores; torch's
default of one thread per core makes small networks many times slower), inherited by subprocesses."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
