"""Group-sequential boundaries: how wide an interval must be at each look at growing data so
that all looks together keep the planned error rate.

A contrast read at K looks (renderings of the report at growing seed counts) has a z
statistic Z_k at each. Under the canonical joint distribution (Jennison & Turnbull 2000,
*Group Sequential Methods*, ch. 3) the Z_k are normal with corr(Z_i, Z_j) = sqrt(t_i/t_j)
for t_i <= t_j, t the information fraction. Lan & DeMets (1983) spend the two-sided alpha
over the looks with a spending function alpha(t), alpha(1) = alpha: the boundary c_k is the
one at which P(|Z_j| < c_j for j < k and |Z_k| >= c_k) = alpha(t_k) - alpha(t_{k-1}).
Then P(any |Z_k| >= c_k) = alpha(t_K) whenever the truth is 0, and estimate +- c_k se is a
repeated confidence interval: all of them together cover the truth with 1 - alpha(t_K).

The probabilities are integrated on a grid (the recursion of Armitage, McPherson & Rowe
1969, as in ld98 by Reboussin, DeMets, Kim & Lan 2000): on the score scale S_k = Z_k
sqrt(t_k), a Brownian motion in t, the density of S_k on the continuation region is the
density of S_{k-1} there convolved with the independent increment N(0, t_k - t_{k-1}).
Simpson's rule on GRID points over each region; the boundaries agree with ldbounds/gsDesign
to 4 decimals (tests/test_sequential.py) and are deterministic, so a re-render gives the same
bytes.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize
from scipy import stats as sps

SPENDING = ("obrien_fleming", "pocock")
GRID = 801  # Simpson points per continuation region (odd)
NO_BOUNDARY = math.inf  # a look that may spend nothing: it can never reject


def spent(t: float, alpha: float, spending: str) -> float:
    """Two-sided alpha spent by information fraction t (0..1), alpha/2 on each side as
    ldbounds, gsDesign and rpact spend it: O'Brien-Fleming type, each side
    2 - 2 Phi(z_{1-alpha/4} / sqrt(t)); Pocock type alpha ln(1 + (e - 1) t)."""
    if t <= 0:
        return 0.0
    t = min(t, 1.0)
    if spending == "obrien_fleming":
        return float(4 * sps.norm.sf(sps.norm.isf(alpha / 4) / math.sqrt(t)))
    if spending == "pocock":
        return float(alpha * math.log1p((math.e - 1) * t))
    raise ValueError(f"unknown spending function {spending!r}")


def _simpson(m: int) -> np.ndarray:
    w = np.ones(m)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    return w / 3


def boundaries(times: list[float], alpha: float, spending: str) -> list[float]:
    """The two-sided z boundary c_k of each look at information fractions ``times`` (in the
    order taken, each in (0, 1]). A look spends spent(t_k) less what the looks before spent;
    one that adds no information, or finds nothing left to spend, gets NO_BOUNDARY."""
    out: list[float] = []
    grid = mass = None  # the continuation region of the last look on the score scale, density x Simpson weight
    t_grid, spent_so_far = 0.0, 0.0
    for t in times:
        t = min(float(t), 1.0)
        budget = spent(t, alpha, spending) - spent_so_far
        if t <= t_grid or budget <= 0:
            out.append(NO_BOUNDARY)
            continue
        sd = math.sqrt(t - t_grid)
        if grid is None:  # the first look: Z_1 is standard normal
            c = float(sps.norm.isf(budget / 2))
        else:
            def crossing(c: float) -> float:
                edge = c * math.sqrt(t)
                return float(mass @ (sps.norm.sf((edge - grid) / sd) + sps.norm.sf((edge + grid) / sd)))

            c = float(optimize.brentq(lambda c: crossing(c) - budget, 0.0, 40.0, xtol=1e-12))
        new = np.linspace(-c * math.sqrt(t), c * math.sqrt(t), GRID)
        density = (sps.norm.pdf(new, scale=sd) if grid is None
                   else sps.norm.pdf((new[:, None] - grid[None, :]) / sd) / sd @ mass)
        grid, mass = new, density * _simpson(GRID) * (new[1] - new[0])
        t_grid, spent_so_far = t, spent_so_far + budget
        out.append(c)
    return out


def t_quantile(c: float, df: float | None) -> float:
    """The t quantile (at ``df``) with the two-sided tail probability of the z boundary c:
    the repeated interval of a look with an estimated variance."""
    if c == NO_BOUNDARY:
        return NO_BOUNDARY
    if df is None:
        return c
    return float(sps.t.isf(sps.norm.sf(c), df))
