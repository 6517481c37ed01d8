"""Fits of a measured profile's points (model/profiles.py) that DeviceModel applies to other shapes and devices.

Dense points: ``t = bytes / bw_eff + flops / flops_eff`` (non-negative least squares on relative error);
attention: ``t = c0 + c1 * batch + kv_bytes / bw_eff``; link: latency + bytes / bandwidth; all-reduce:
per ring step + per byte on a link. See operators.py for how each is used.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from lamina_bench.model.profiles import Profile
from lamina_bench.model.roofline import (
    attention_layer_bytes,
    dense_layer_bytes,
    dense_layer_flops,
    ring_allreduce_bytes_per_link,
)


def nonneg_fit(features: np.ndarray, times_s: np.ndarray) -> np.ndarray:
    """Non-negative least squares on relative error, by trying every column subset (few columns)."""
    x = features / times_s[:, None]
    y = np.ones_like(times_s)
    ncol = features.shape[1]
    best, best_err = np.zeros(ncol), math.inf
    for k in range(1, ncol + 1):
        for cols in itertools.combinations(range(ncol), k):
            coef, *_ = np.linalg.lstsq(x[:, cols], y, rcond=None)
            if np.any(coef < 0):
                continue
            full = np.zeros(ncol)
            full[list(cols)] = coef
            err = float(np.sum((x @ full - y) ** 2))
            if err < best_err - 1e-15:
                best, best_err = full, err
    return best


def _interp_extrap(x, xp: np.ndarray, fp: np.ndarray):
    """Piecewise-linear interpolation; beyond the ends, the end segments' slopes (never below 0)."""
    y = np.interp(x, xp, fp)
    lo_slope = max((fp[1] - fp[0]) / (xp[1] - xp[0]), 0.0)
    hi_slope = max((fp[-1] - fp[-2]) / (xp[-1] - xp[-2]), 0.0)
    y = np.where(x < xp[0], fp[0] - lo_slope * (xp[0] - x), y)
    y = np.where(x > xp[-1], fp[-1] + hi_slope * (x - xp[-1]), y)
    return np.maximum(y, 0.0)


@dataclass(frozen=True)
class _ProfileFits:
    """Coefficients fitted once per profile (see module doc)."""

    dense: np.ndarray  # 1/bw_eff [s/B], 1/flops_eff [s/flop]
    attention: np.ndarray  # c0 [s], per sequence [s], 1/bw_eff [s/B]
    head_batch: np.ndarray | None
    head_time_s: np.ndarray | None
    dense_batch: np.ndarray
    dense_time_s: np.ndarray
    link: np.ndarray | None  # latency [s], 1/bw [s/B]
    allreduce: np.ndarray | None  # per ring step [s], 1/bw per link [s/B]


def _fit_profile(p: Profile) -> _ProfileFits:
    dense = sorted(p.dense, key=lambda q: q.batch)
    db = np.array([q.batch for q in dense], dtype=float)
    dt = np.array([q.time_s for q in dense])
    feats = np.stack(
        [dense_layer_bytes(p.model, p.dtype, db, p.tp), dense_layer_flops(p.model, db, p.tp)], axis=1
    )
    ab = np.array([q.batch for q in p.attention], dtype=float)
    actx = np.array([q.batch * q.context_len for q in p.attention], dtype=float)
    at = np.array([q.time_s for q in p.attention])
    afeats = np.stack([np.ones_like(ab), ab, attention_layer_bytes(p.model, p.dtype, ab, actx)], axis=1)
    head = sorted(p.head, key=lambda q: q.batch)
    link = allreduce = None
    if p.link:
        nb = np.array([q.nbytes for q in p.link], dtype=float)
        link = nonneg_fit(np.stack([np.ones_like(nb), nb], axis=1), np.array([q.time_s for q in p.link]))
    if p.allreduce:
        nb = np.array([q.nbytes for q in p.allreduce], dtype=float)
        ws = np.array([q.world_size for q in p.allreduce], dtype=float)
        feats_ar = np.stack([2.0 * (ws - 1), ring_allreduce_bytes_per_link(nb, ws)], axis=1)
        allreduce = nonneg_fit(feats_ar, np.array([q.time_s for q in p.allreduce]))
    return _ProfileFits(
        dense=nonneg_fit(feats, dt),
        attention=nonneg_fit(afeats, at),
        head_batch=np.array([q.batch for q in head], dtype=float) if len(head) >= 2 else None,
        head_time_s=np.array([q.time_s for q in head]) if len(head) >= 2 else None,
        dense_batch=db,
        dense_time_s=dt,
        link=link,
        allreduce=allreduce,
    )
