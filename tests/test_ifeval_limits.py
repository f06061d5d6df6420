"""scripts/ifeval_limits.py: where a looping answer is cut, and the rank agreement of two scores."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

SPEC = importlib.util.spec_from_file_location("ifeval_limits", Path(__file__).resolve().parents[1] / "scripts" / "ifeval_limits.py")
limits = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(limits)


def test_a_loop_is_cut_after_its_first_occurrence():
    assert limits.loop_start([1, 2, 3, 4, 5, 6, 5, 6, 5, 6, 5, 6]) == 6
    assert limits.loop_start([9, 9, 9, 9]) == 1
    assert limits.loop_start([1, 2, 3, 4, 5, 6, 7, 8]) is None
    assert limits.loop_start([1, 2, 3, 1, 2, 3]) is None  # two occurrences are not yet a loop
    assert limits.loop_start([7, 1, 2, 3, 1, 2, 3, 1, 2, 3, 1]) == 4  # the cut block may end mid-repeat


def test_rank_agreement_is_one_for_the_same_ranking_and_minus_one_for_the_reverse():
    rng = np.random.default_rng(0)
    correct = (rng.random((5, 200)) < np.linspace(0.1, 0.9, 5)[:, None]).astype(float)
    m = np.stack([correct, np.ones_like(correct)], -1)
    rho, low, high = limits.rank_agreement(m, m)
    assert (rho, low, high) == pytest.approx((1.0, 1.0, 1.0))
    reverse = np.stack([1 - correct, np.ones_like(correct)], -1)
    assert limits.rank_agreement(reverse, m)[0] == pytest.approx(-1.0)
