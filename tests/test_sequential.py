"""harness/report/sequential.py: Lan-DeMets boundaries against published values and against an
independent integration of the canonical joint distribution."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from harness.report.sequential import NO_BOUNDARY, boundaries, spent, t_quantile

# Two-sided alpha 0.05, K equally spaced looks, alpha/2 spent on each side: the tables of the
# ld98 program (Reboussin, DeMets, Kim & Lan 2000) as R's ldbounds and gsDesign print them.
OBRIEN_FLEMING = {
    1: [1.9600],
    2: [2.9626, 1.9686],
    3: [3.7103, 2.5114, 1.9930],
    4: [4.3326, 2.9631, 2.3590, 2.0141],
    5: [4.8769, 3.3569, 2.6803, 2.2898, 2.0310],
}
POCOCK_5 = [2.4380, 2.4268, 2.4101, 2.3966, 2.3859]


@pytest.mark.parametrize("k", sorted(OBRIEN_FLEMING))
def test_obrien_fleming_type_boundaries_match_the_published_tables(k):
    found = boundaries([i / k for i in range(1, k + 1)], 0.05, "obrien_fleming")
    assert found == pytest.approx(OBRIEN_FLEMING[k], abs=2e-4)


def test_pocock_type_boundaries_match_the_published_table():
    assert boundaries([i / 5 for i in range(1, 6)], 0.05, "pocock") == pytest.approx(POCOCK_5, abs=2e-4)


@pytest.mark.parametrize("spending", ["obrien_fleming", "pocock"])
def test_each_look_spends_what_the_function_allows(spending):
    """scipy's multivariate normal (Genz's integration, corr sqrt(t_i/t_j)) agrees that the
    first k boundaries are crossed with probability spent(t_k), at v2's unequal seed counts."""
    t = np.array([3, 7, 13, 20, 27]) / 27
    c = np.array(boundaries(list(t), 0.05, spending))
    corr = np.sqrt(np.minimum.outer(t, t) / np.maximum.outer(t, t))
    for k in range(1, len(t) + 1):
        inside = stats.multivariate_normal(np.zeros(k), corr[:k, :k]).cdf(c[:k], lower_limit=-c[:k],
                                                                           rng=np.random.default_rng(0))
        assert 1 - inside == pytest.approx(spent(t[k - 1], 0.05, spending), abs=2e-5)


def test_spending_reaches_alpha_at_full_information_and_stops_there():
    assert spent(1.0, 0.05, "obrien_fleming") == pytest.approx(0.05) and spent(2.0, 0.05, "pocock") == pytest.approx(0.05)
    assert spent(0.0, 0.05, "obrien_fleming") == 0
    # a look that adds no information, or comes after the whole alpha is spent, can reject nothing
    assert boundaries([0.5, 0.5, 1.0, 1.0], 0.05, "obrien_fleming") == pytest.approx([2.9626, NO_BOUNDARY, 1.9686, NO_BOUNDARY],
                                                                                     abs=2e-4)


def test_the_more_looks_the_wider_the_last_boundary():
    one = boundaries([1.0], 0.05, "obrien_fleming")[-1]
    three = boundaries([1 / 3, 2 / 3, 1.0], 0.05, "obrien_fleming")[-1]
    fifteen = boundaries([k / 15 for k in range(1, 16)], 0.05, "obrien_fleming")[-1]
    assert one == pytest.approx(1.96, abs=1e-3) and one < three < fifteen < 2.2


def test_a_boundary_becomes_a_t_quantile_with_the_same_tail():
    c = 2.5
    assert t_quantile(c, None) == c and t_quantile(NO_BOUNDARY, 5.0) == NO_BOUNDARY
    q = t_quantile(c, 4.0)
    assert stats.t.sf(q, 4.0) == pytest.approx(stats.norm.sf(c)) and q > c
    assert t_quantile(1.959964, 1e7) == pytest.approx(1.96, abs=1e-4) and math.isfinite(t_quantile(6.6, 2.0))
