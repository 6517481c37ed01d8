"""Least-squares solvers for the calibration (numpy only): errors are relative, losses robust.

Residuals are log(predicted / measured), so every row counts by its relative error whatever its size.
The loss is soft-L1 with scale `ROBUST_SCALE` (quadratic below ~10%, linear above), so a few rows a kernel
heuristic puts far off the trend (e.g. a different split-KV choice) do not pull the fit: what the
validation reports is the median and p90 of |error|, and the fit aims at those.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np

ROBUST_SCALE = 0.1


def robust_weights(residuals: np.ndarray, scale: float = ROBUST_SCALE) -> np.ndarray:
    """IRLS weights of the soft-L1 loss rho(r) = 2 s^2 (sqrt(1 + (r/s)^2) - 1)."""
    return 1.0 / np.sqrt(1.0 + (residuals / scale) ** 2)


def robust_cost(residuals: np.ndarray, scale: float = ROBUST_SCALE) -> float:
    return float(np.sum(2 * scale**2 * (np.sqrt(1 + (residuals / scale) ** 2) - 1)))


def _nnls_subsets(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """argmin ||sqrt(w) (x c - y)|| over c >= 0, by trying every column subset (few columns)."""
    sw = np.sqrt(w)[:, None]
    xw, yw = x * sw, y * sw[:, 0]
    ncol = x.shape[1]
    best, best_err = np.zeros(ncol), math.inf
    for k in range(1, ncol + 1):
        for cols in itertools.combinations(range(ncol), k):
            coef, *_ = np.linalg.lstsq(xw[:, cols], yw, rcond=None)
            if np.any(coef < 0):
                continue
            full = np.zeros(ncol)
            full[list(cols)] = coef
            err = float(np.sum((xw @ full - yw) ** 2))
            if err < best_err - 1e-15:
                best, best_err = full, err
    return best


def robust_nnls(features: np.ndarray, times: np.ndarray, offset=0.0, iters: int = 8) -> np.ndarray:
    """c >= 0 minimising the robust relative error of offset + features @ c against `times`.

    Relative: each row is divided by its measured time. IRLS on the soft-L1 loss of the relative error.
    """
    times = np.asarray(times, dtype=float)
    x = features / times[:, None]
    y = 1.0 - np.asarray(offset, dtype=float) / times
    w = np.ones_like(times)
    coef = _nnls_subsets(x, y, w)
    for _ in range(iters):
        w = robust_weights(x @ coef - y)
        coef = _nnls_subsets(x, y, w)
    return coef


def levenberg_marquardt(
    residual: Callable[[np.ndarray], np.ndarray], x0: np.ndarray, iters: int = 60, step: float = 1e-4
) -> np.ndarray:
    """Minimise the robust cost of `residual(x)` (IRLS-weighted Levenberg-Marquardt, numeric Jacobian)."""
    with np.errstate(over="ignore", invalid="ignore"):  # a trial step may overflow; its cost is then inf
        return _lm(residual, np.asarray(x0, dtype=float).copy(), iters, step)


def _lm(residual: Callable[[np.ndarray], np.ndarray], x: np.ndarray, iters: int, step: float) -> np.ndarray:
    lam = 1e-2
    r = residual(x)
    cost = robust_cost(r)
    for _ in range(iters):
        w = robust_weights(r)
        jac = np.empty((r.size, x.size))
        for j in range(x.size):
            dx = np.zeros_like(x)
            dx[j] = step
            jac[:, j] = (residual(x + dx) - r) / step
        jw = jac * w[:, None]
        a, g = jw.T @ jac, jw.T @ r
        improved = False
        for _ in range(12):
            try:
                delta = np.linalg.solve(a + lam * np.diag(np.diag(a) + 1e-12), -g)
            except np.linalg.LinAlgError:
                lam *= 10
                continue
            r_new = residual(x + delta)
            cost_new = robust_cost(r_new) if np.all(np.isfinite(r_new)) else math.inf
            if cost_new < cost:
                x, r, cost, lam, improved = x + delta, r_new, cost_new, max(lam / 3, 1e-9), True
                break
            lam *= 4
        if not improved or np.max(np.abs(delta)) < 1e-7:
            break
    return x
