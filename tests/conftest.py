"""Test-session settings.

The suite is dominated by small tensor operations (2-D mixtures, batches of a few thousand), for
which torch's intra-op thread pool brings no speed-up on 2 cores and, when anything else runs on the
machine, spin-waiting threads make single calls 10-1000x slower (measured here). One thread keeps the
suite fast and its timing predictable; results do not depend on it (the kill/resume test pins its
subprocesses to one thread as well).
"""

import os

import torch

torch.set_num_threads(1)

# `scoresde sample` keeps SW2 floors in the user's cache directory; tests never write there
# (tests/test_cli.py points SCORESDE_CACHE_DIR at a temporary directory where it tests the cache)
os.environ["SCORESDE_NO_CACHE"] = "1"
