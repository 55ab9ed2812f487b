"""Robust rate estimate shared by the player and the run accounting."""

from __future__ import annotations

import numpy as np


def theil_sen(x, y, points: int = 300) -> float:
    """Median of the pairwise slopes dy/dx (on at most ``points`` evenly chosen samples).

    Used for replay speeds (bag time against wall time): a few late deliveries or
    publishes on a busy machine do not move it, unlike a slope from the two end points.
    """
    if len(x) < 2:
        return float("nan")
    pick = np.unique(np.linspace(0, len(x) - 1, min(points, len(x))).round().astype(int))
    xs = np.asarray(x, np.float64)[pick]
    ys = np.asarray(y, np.float64)[pick]
    i, j = np.triu_indices(len(xs), k=1)
    dx = xs[j] - xs[i]
    keep = dx != 0
    return float(np.median((ys[j] - ys[i])[keep] / dx[keep])) if keep.any() else float("nan")
