"""Tolerances for one floating-point result computed two ways, in units of its dtype.

Two computations of the same quantity agree only up to rounding, and rounding scales with the
dtype's machine epsilon and with the size of the numbers involved (for a log-softmax: the
largest logit, not the log-probability itself). ``ulps(dtype, n, scale)`` is n units in the
last place at magnitude ``scale``; every comparison across kernels, batch shapes or runtimes
says which dtype and scale it assumes, so no assertion asks for more than the dtype can give.
"""

from __future__ import annotations

import numpy as np


def ulps(dtype: type[np.floating] | np.dtype, n: float, scale: float = 1.0) -> float:
    """n machine epsilons of ``dtype`` at magnitude ``scale`` (an absolute tolerance)."""
    return float(n * np.finfo(dtype).eps * scale)


# float32 results that pass through a few dozen reductions (an MLP, a small transformer): a
# batched and a one-row evaluation may round ~64 ulps apart.
F32_ULPS = 64
# the tiny random test models reach logits of |z| ≈ 17 (measured on the seeds the tests use);
# a log-probability or entropy inherits the rounding of the logits it comes from
TINY_LOGIT_SCALE = 20.0
TINY_LOGPROB_TOL = ulps(np.float32, F32_ULPS, TINY_LOGIT_SCALE)  # ≈ 1.5e-4 nats
