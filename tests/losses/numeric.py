"""Shared numerics for the objective tests."""

import numpy as np


def fd_grad(f, x, h=1e-5):
    """Central finite-difference gradient of scalar `f` at float64 array `x`."""
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        g[idx] = (f(xp) - f(xm)) / (2 * h)
    return g
