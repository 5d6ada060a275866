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


# -- shared SDEs ---------------------------------------------------------------------------------
# The three SDEs of Song et al. (2021); parametrise a test over them with the ``sde`` fixture, or import
# the tuple (``from conftest import SDES``) where a parametrisation needs the objects themselves.
import pytest  # noqa: E402

import scoresde as sd  # noqa: E402

SDES = (sd.VPSDE(), sd.SubVPSDE(), sd.VESDE())
#: ... and the discrete-chain DDPM (a short chain) and rectified-flow SDEs
ALL_SDES = (*SDES, sd.DDPMSchedule.linear(T=50).sde(), sd.RectifiedFlow())
#: the three by the short names the CLI and the studies use
SDES_BY_NAME = dict(zip(("vp", "subvp", "ve"), SDES, strict=True))


@pytest.fixture(params=SDES, ids=repr)
def sde(request):
    """VPSDE, SubVPSDE and VESDE with their default parameters."""
    return request.param
