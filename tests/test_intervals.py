"""harness/intervals.py: the confidence intervals that combine item noise and seed noise.

The coverage tests simulate whole experiments in the two-way layout the module assumes,
z[k, i] = mu + s_k + u_i + w_i + e_ki (seed k, item i; u shared by the methods, w
specific to a method and common to its seeds, e specific to a seed), with a known true
difference between two methods A and B, and count how often the 95% interval covers the
truth. "Truth" is what the interval estimates: the expectation over the seed distribution
and the item population of the seed-averaged metric on N_ITEMS items.

- ``mean``: the per-item value is z itself (rows [z, 1]); the truth is exact (mu).
- ``chrf``: per-item chrF++ sufficient statistics (6 character + 2 word orders of
  [hyp, ref, match]) from a per-item quality q = sigmoid(a + z): the reference has
  ~80 characters, the hypothesis a seed- and item-specific length around it, and each
  order's matches are (approximately) binomial in min(hyp, ref) n-grams with a probability
  that falls with the order. The metric is corpus chrF++ of the summed statistics, a nonlinear function, so
  the truth (E[corpus chrF++ of one seed on N_ITEMS items]; the average over seeds has the
  same expectation) is estimated once by simulating 1,000,000 single-seed corpora per side (A: 2,000,000)
  (``CHRF_TRUTH``, standard errors below 0.004 chrF points, under 1% of the smallest
  standard error of an estimate here) and checked against a fresh, smaller simulation in
  ``test_chrf_truth_matches_a_fresh_simulation``.

Designs: a cell's mean over seeds (``mean_interval``), a difference paired by seed
(the same seed labels, correlated seed effects), a Welch difference (other seed labels,
independent seed effects) and a difference against a fixed original (``b_fixed=True``,
one model without a seed effect). Everything runs on fixed RNG seeds.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
from sacrebleu.metrics import BLEU, CHRF
from scipy import stats

from harness import intervals
from harness.intervals import Interval, difference_interval, mean_interval, metric_from_sums, seeds_for_power

N_ITEMS = 60
IDS = [f"item{i}" for i in range(N_ITEMS)]
# per coverage case: binomial standard error of a 95% coverage 0.49 points; with 10,000
# experiments (other seeds) the cases below measured 95.2-96.7%, Welch at 3 seeds the highest
EXPERIMENTS = 2000
N_BOOT = 300  # bootstrap draws inside the simulated experiments (the default is larger; see below)
CHUNK = 250

# variance components (mean: in metric units; chrf: on the logit of the item quality)
MEAN = dict(delta=0.5, s=1.0, rho=0.5, u=3.0, w=2.5, e=2.0)
CHRF_PARAMS = dict(a=0.8, delta=0.05, s=0.08, rho=0.5, u=0.6, w=0.25, e=0.3, len_sd=0.1)
# E[corpus chrF++ on N_ITEMS items] of A (seed effect ~ N(0, s)), of a trained B and of a fixed B
# (seed effect 0); from _chrf_truth(1_000_000, seed=20240601), see the module docstring
CHRF_TRUTH = {"A": 44.0569, "B": 42.8658, "B0": 42.8651}  # standard errors 0.0021, 0.0030, 0.0023


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _matches(rng, n, p):
    """Matched n-grams of n candidates each matching with probability p: the binomial's
    normal approximation, rounded and clipped to 0..n (five times faster than rng.binomial)."""
    return np.clip(np.round(n * p + np.sqrt(n * p * (1 - p)) * rng.standard_normal(np.shape(n * p))), 0, n)


def _chrf_stats(rng, q, ref_chars, hyp_chars):
    """chrF++ sufficient statistics [..., 24] from the item quality and lengths [..., N]."""
    ref_words, hyp_words = np.maximum(1, np.round(ref_chars / 5)), np.maximum(1, np.round(hyp_chars / 5))
    out = []
    for n in range(1, 7):  # character orders
        ref, hyp = np.maximum(ref_chars - n + 1, 0), np.maximum(hyp_chars - n + 1, 0)
        out += [hyp, ref, _matches(rng, np.minimum(ref, hyp), q ** (0.5 + 0.5 * n))]
    for n in (1, 2):  # word orders
        ref, hyp = np.maximum(ref_words - n + 1, 0), np.maximum(hyp_words - n + 1, 0)
        out += [hyp, ref, _matches(rng, np.minimum(ref, hyp), q ** (1.0 + n))]
    return np.stack(np.broadcast_arrays(*out), axis=-1).astype(float)


def latent(rng, experiments: int, seeds: int, design: str, p: dict, seeds_b: int | None = None, items: int = N_ITEMS):
    """The latent per-item values z of A [experiments, seeds, items] and B [experiments,
    seeds_b or 1, items] in the two-way layout (A's mean p["delta"], B's 0). design:
    ``paired`` (B's seed effects correlated rho with A's, the same seeds), ``welch``
    (independent seeds), ``fixed`` (B one model, seed effect 0); ``cell`` simulates as welch.
    Welch only: ``seeds_b`` (default ``seeds``), B's seed sd ``s_b`` in p (default ``s``),
    and ``rho_shared`` in p: A's seed effects correlated that much with B's first ``seeds``
    (A computed from those seeds of B, as merge and wise are from vanilla's)."""
    shape_seed = (experiments, seeds, 1)
    s_a = p["s"] * rng.standard_normal(shape_seed)
    seeds_b = 1 if design == "fixed" else (seeds_b or seeds)
    if design == "paired":
        s_b = p["rho"] * s_a + math.sqrt(1 - p["rho"] ** 2) * p["s"] * rng.standard_normal(shape_seed)
    elif design == "fixed":
        s_b = np.zeros((experiments, 1, 1))
    else:
        sd_b, rho = p.get("s_b", p["s"]), p.get("rho_shared", 0.0)
        s_b = sd_b * rng.standard_normal((experiments, seeds_b, 1))
        if rho:
            s_b[:, :seeds] = rho * s_a * (sd_b / p["s"]) + math.sqrt(1 - rho ** 2) * sd_b * rng.standard_normal(shape_seed)
    u = p["u"] * rng.standard_normal((experiments, 1, items))
    z_a = p["delta"] + s_a + u + p["w"] * rng.standard_normal((experiments, 1, items)) \
        + p["e"] * rng.standard_normal((experiments, seeds, items))
    z_b = s_b + u + p["w"] * rng.standard_normal((experiments, 1, items)) \
        + p["e"] * rng.standard_normal((experiments, seeds_b, items))
    return z_a, z_b


def simulate(rng, kind: str, experiments: int, seeds: int, design: str, params: dict | None = None,
             seeds_b: int | None = None):
    """Per-item statistics of A [experiments, seeds, N, F] and B [experiments, seeds_b or 1, N, F]
    from ``latent`` (designs and params there): kind ``mean`` rows [z, 1], ``chrf`` the chrF++
    statistics of the item quality sigmoid(a + z)."""
    p = params or (MEAN if kind == "mean" else CHRF_PARAMS)
    z_a, z_b = latent(rng, experiments, seeds, design, p, seeds_b)
    if kind == "mean":
        return tuple(np.stack([z, np.ones_like(z)], axis=-1) for z in (z_a, z_b))
    ref_chars = 20 + rng.poisson(60, (experiments, 1, N_ITEMS)).astype(float)

    def side(z):
        hyp_chars = np.round(ref_chars * np.exp(p["len_sd"] * rng.standard_normal(z.shape)))
        return _chrf_stats(rng, _sigmoid(p["a"] + z), ref_chars, hyp_chars)

    return side(z_a), side(z_b)


def per_seed(kind: str, X: np.ndarray, prefix: str) -> dict[str, dict]:
    ids = IDS if X.shape[1] == N_ITEMS else [f"item{i}" for i in range(X.shape[1])]
    return {f"{prefix}{k}": {"kind": kind, "ids": ids, "rows": X[k]} for k in range(X.shape[0])}


def _chrf_truth(corpora: int, seed: int, chunk: int = 20_000) -> dict[str, tuple[float, float]]:
    """(mean, standard error) of one seed's corpus chrF++ for A, a trained B and a fixed B,
    and of the differences A - B and A - B0 (common item draws)."""
    rng = np.random.default_rng(seed)
    values = {"A": [], "B": [], "B0": [], "A-B": [], "A-B0": []}
    for _ in range(corpora // chunk):
        a, b = (metric_from_sums("chrf", X[:, 0].sum(axis=1)) for X in simulate(rng, "chrf", chunk, 1, "welch"))
        a0, b0 = (metric_from_sums("chrf", X[:, 0].sum(axis=1)) for X in simulate(rng, "chrf", chunk, 1, "fixed"))
        for name, v in (("A", np.concatenate([a, a0])), ("B", b), ("B0", b0), ("A-B", a - b), ("A-B0", a0 - b0)):
            values[name].append(v)
    return {name: (float(np.concatenate(v).mean()), float(np.concatenate(v).std(ddof=1) / math.sqrt(sum(map(len, v)))))
            for name, v in values.items()}


def _truth(kind: str, design: str) -> float:
    if kind == "mean":
        return MEAN["delta"]  # the cell is A (mean delta); every difference is delta
    t = CHRF_TRUTH
    return {"cell": t["A"], "paired": t["A"] - t["B"], "welch": t["A"] - t["B"], "fixed": t["A"] - t["B0"]}[design]


def coverage(kind: str, seeds: int, design: str, experiments: int = EXPERIMENTS, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    truth = _truth(kind, design)
    hits = 0
    for e in range(experiments):
        if e % CHUNK == 0:  # simulated a chunk at a time: large arrays are slow on a small machine
            A, B = simulate(rng, kind, min(CHUNK, experiments - e), seeds, design)
        a = per_seed(kind, A[e % CHUNK], "seed")
        if design == "cell":
            iv = mean_interval(a, n_boot=N_BOOT, seed=e)
            assert iv.seeds == seeds and iv.seed_variance and not iv.paired
        else:
            b = per_seed(kind, B[e % CHUNK], {"paired": "seed", "welch": "other", "fixed": "original"}[design])
            iv = difference_interval(a, b, b_fixed=design == "fixed", n_boot=N_BOOT, seed=e)
            assert iv.paired == (design == "paired") and iv.seed_variance
            assert iv.seeds_versus == (1 if design == "fixed" else seeds)
        hits += iv.low <= truth <= iv.high
    return hits / experiments


@pytest.mark.parametrize("design", ["cell", "paired", "welch", "fixed"])
@pytest.mark.parametrize("seeds", [3, 10])
@pytest.mark.parametrize("kind", ["mean", "chrf"])
def test_95_percent_interval_covers_the_truth(kind, seeds, design):
    case_seed = {"mean": 1, "chrf": 2}[kind] * 100 + seeds * 10 + ["cell", "paired", "welch", "fixed"].index(design)
    covered = coverage(kind, seeds, design, seed=case_seed)
    print(f"coverage {kind} {seeds} seeds {design}: {covered:.4f}")  # shown with pytest -s
    assert 0.93 <= covered <= 0.97, f"{kind} {seeds} seeds {design}: coverage {covered:.3f}"


@pytest.mark.parametrize("s_a, s_b, rho", [(1.0, 1.0, 0.0), (2.0, 1.0, 0.0), (0.5, 2.0, 0.0), (1.0, 1.0, 0.9)])
def test_welch_with_unequal_seed_counts_covers_the_truth(s_a, s_b, rho):
    """A 3-seed row against a 16-seed row (v2's 3-seed methods against vanilla) has other
    seed labels, so it is a Welch difference. With independent seed effects it covers at
    95%, whichever side has the larger seed spread; when A's seeds are computed from B's
    first three (rho 0.9) Welch ignores a positive covariance and covers more (conservative).
    In this test's 2,000 experiments: 96.1% at equal spreads, 95.0% when the 3-seed side's
    seed sd is twice the other's, 96.8% when it is a quarter (with plain Satterthwaite degrees
    of freedom, 10,000 experiments had measured 95.1%, 94.2% and 93.9% when that side's sd
    was 2 and 4 times the other's: its 2 df then carry the interval, see ``intervals._df``)."""
    rng = np.random.default_rng(int(100 * s_a + 10 * s_b + 1000 * rho))
    hits = 0
    for start in range(0, EXPERIMENTS, CHUNK):
        A, B = simulate(rng, "mean", CHUNK, 3, "welch", params=dict(MEAN, s=s_a, s_b=s_b, rho_shared=rho), seeds_b=16)
        for e in range(CHUNK):
            iv = difference_interval(per_seed("mean", A[e], "seed"), per_seed("mean", B[e], "seed"),
                                     n_boot=N_BOOT, seed=start + e)
            assert not iv.paired and iv.seeds == 3 and iv.seeds_versus == 16
            hits += iv.low <= MEAN["delta"] <= iv.high
    covered = hits / EXPERIMENTS
    print(f"coverage mean 3 vs 16 seeds, s_a {s_a}, s_b {s_b}, rho {rho}: {covered:.4f}")  # shown with pytest -s
    if rho:
        assert covered >= 0.96, covered
    else:
        assert 0.93 <= covered <= 0.97, covered


@pytest.mark.parametrize("kind", ["mean", "chrf"])
def test_fixed_model_interval_covers_its_truth(kind):
    """The original alone (B of the fixed design): item noise only, and that is complete."""
    rng = np.random.default_rng(7 if kind == "mean" else 8)
    _, B = simulate(rng, kind, EXPERIMENTS, 1, "fixed")
    truth = 0.0 if kind == "mean" else CHRF_TRUTH["B0"]
    hits = 0
    for e in range(EXPERIMENTS):
        iv = mean_interval(per_seed(kind, B[e], "original"), fixed=True, n_boot=N_BOOT, seed=e)
        hits += iv.low <= truth <= iv.high
    print(f"coverage {kind} fixed model alone: {hits / EXPERIMENTS:.4f}")  # shown with pytest -s
    assert 0.93 <= hits / EXPERIMENTS <= 0.97, f"{kind} fixed model: coverage {hits / EXPERIMENTS:.3f}"


# ---- coverage at the published settings -------------------------------------------------------
# The report's intervals: 200 items, the default 2000 bootstrap draws, v2's designs (27 vs 27
# seeds paired: radis - vanilla; 3 vs 27 unpaired: a 3-seed method - vanilla; 3 seeds against
# the fixed original) and the shapes of its metrics. Per-item values from the latent z of the
# two-way layout:
# - normal: z itself (the mean-kind cases above, at the published sizes);
# - lognormal: 0.1 exp(z), skewed like v2's per-item retention KL (coefficient of variation
#   0.55, skewness about 2; at twice the log-scale spread, skewness ~10, the 3-seed cases
#   measured 92-94%: a strongly skewed metric needs more than 3 seeds);
# - binary: 1[z + mu > 0] with few events: each experiment draws a base rate in 1-4% (a
#   refusal rate; averaging over rates smooths the binomial's saw-tooth coverage);
# - ratio: x of n instructions followed, n 1-3 per prompt, x ~ Binomial(n, Phi(z + mu)), the
#   metric sum x / sum n (IFEval's instruction level).
# 3000 experiments per case: the binomial standard error of a 95% coverage is 0.40 points,
# so a correct interval falls outside 94-96% in 1.3% of seeds of the simulation.

PUBLISHED_ITEMS = 200
PUBLISHED_DRAWS = 2000
PUBLISHED_EXPERIMENTS = 3000
SHAPES = {
    "normal": dict(MEAN, delta=0.5),
    "lognormal": dict(delta=0.15, s=0.1, rho=0.5, u=0.4, w=0.2, e=0.25, mu=0.0),
    "binary": dict(delta=0.15, s=0.3, rho=0.5, u=1.0, w=0.5, e=0.5, events=(0.01, 0.04)),
    "ratio": dict(delta=0.1, s=0.2, rho=0.5, u=0.8, w=0.4, e=0.5, mu=-0.9),
}


def _variance(p: dict, trained: bool) -> float:
    return (p["s"] ** 2 if trained else 0.0) + p["u"] ** 2 + p["w"] ** 2 + p["e"] ** 2


def shaped(rng, shape: str, z_a: np.ndarray, z_b: np.ndarray, b_trained: bool):
    """Item statistics [..., items, 2] of both sides and the truth (A's metric, A - B) of one
    experiment of ``shape`` from its latent values."""
    p = SHAPES[shape]
    va, vb = _variance(p, True), _variance(p, b_trained)
    if shape == "normal":
        rows = [np.stack([z, np.ones_like(z)], axis=-1) for z in (z_a, z_b)]
        return rows, p["delta"], p["delta"]
    if shape == "lognormal":
        rows = [np.stack([0.1 * np.exp(z), np.ones_like(z)], axis=-1) for z in (z_a, z_b)]
        a, b = 0.1 * math.exp(p["delta"] + va / 2), 0.1 * math.exp(vb / 2)
        return rows, a, a - b
    if shape == "binary":
        mu = float(stats.norm.ppf(rng.uniform(*p["events"]))) * math.sqrt(va)
        rows = [np.stack([(z + mu > 0).astype(float), np.ones_like(z)], axis=-1) for z in (z_a, z_b)]
        a = float(stats.norm.cdf((mu + p["delta"]) / math.sqrt(va)))
        return rows, a, a - float(stats.norm.cdf(mu / math.sqrt(vb)))
    n = rng.integers(1, 4, z_a.shape[-1]).astype(float)  # instructions per prompt, the same for every model
    rows = [np.stack([rng.binomial(n.astype(int), stats.norm.cdf(z + p["mu"])).astype(float), np.broadcast_to(n, z.shape)],
                     axis=-1) for z in (z_a, z_b)]
    a = float(stats.norm.cdf((p["mu"] + p["delta"]) / math.sqrt(1 + va)))
    return rows, a, a - float(stats.norm.cdf(p["mu"] / math.sqrt(1 + vb)))


def published_coverage(shape: str, design: str, seeds: int, seeds_b: int | None = None, level: float = 0.95,
                       experiments: int = PUBLISHED_EXPERIMENTS, seed: int = 0) -> float:
    """Share of simulated experiments whose interval (a row's for design ``cell``, else A - B)
    covers the truth, at the published items and bootstrap draws."""
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, experiments, CHUNK):
        z_a, z_b = latent(rng, min(CHUNK, experiments - start), seeds, "welch" if design == "cell" else design,
                          SHAPES[shape], seeds_b, items=PUBLISHED_ITEMS)
        for e in range(z_a.shape[0]):
            (A, B), truth_a, truth_diff = shaped(rng, shape, z_a[e], z_b[e], design != "fixed")
            a = per_seed("mean", A, "seed")
            if design == "cell":
                iv = mean_interval(a, n_boot=PUBLISHED_DRAWS, seed=start + e, level=level)
                hits += iv.low <= truth_a <= iv.high
                continue
            b = per_seed("mean", B, {"paired": "seed", "welch": "other", "fixed": "original"}[design])
            iv = difference_interval(a, b, b_fixed=design == "fixed", n_boot=PUBLISHED_DRAWS, seed=start + e, level=level)
            assert iv.paired == (design == "paired") and iv.seeds == seeds
            hits += iv.low <= truth_diff <= iv.high
    return hits / experiments


PUBLISHED_CASES = [  # shape, design, seeds of A, seeds of B (Welch), experiments
    ("normal", "paired", 27, None, 3000), ("normal", "welch", 3, 27, 3000),
    ("lognormal", "paired", 27, None, 3000), ("lognormal", "welch", 3, 27, 3000),
    # 3 seeds against the original with a skewed metric sits near 94.4% (four simulations: 94.2, 93.9, 95.3 in
    # 3000 experiments each, 94.2 in this test's 6000): twice the experiments keep the band meaningful
    ("lognormal", "fixed", 3, None, 6000),
    ("binary", "cell", 3, None, 3000), ("binary", "fixed", 3, None, 3000), ("binary", "paired", 27, None, 3000),
    ("ratio", "paired", 27, None, 3000), ("ratio", "welch", 3, 27, 3000),
]


@pytest.mark.slow
@pytest.mark.parametrize("shape, design, seeds, seeds_b, experiments", PUBLISHED_CASES)
def test_95_percent_interval_covers_the_truth_at_the_published_settings(shape, design, seeds, seeds_b, experiments):
    case = PUBLISHED_CASES.index((shape, design, seeds, seeds_b, experiments))
    covered = published_coverage(shape, design, seeds, seeds_b, experiments=experiments, seed=case)
    print(f"coverage {shape} {design} {seeds}{f' vs {seeds_b}' if seeds_b else ''} seeds: {covered:.4f}")  # pytest -s
    assert 0.94 <= covered <= 0.96, f"{shape} {design} {seeds} seeds: coverage {covered:.3f}"


@pytest.mark.slow
def test_adjusted_level_covers_at_the_published_settings():
    """The 99.375% level (alpha 0.05 over 8 looks, Bonferroni) at 27 vs 27 paired seeds: 3000
    experiments, so about 19 misses are expected (binomial sd 4.3)."""
    covered = published_coverage("normal", "paired", 27, level=1 - 0.05 / 8, experiments=3000, seed=40)
    print(f"coverage normal paired 27 seeds at 99.375%: {covered:.4f}")  # pytest -s
    assert 0.990 <= covered <= 0.9975, covered


LOOKS_AT = (3, 7, 13, 20, 27)  # seeds per side at each look; 27 planned


@pytest.mark.slow
@pytest.mark.parametrize("spending", ["obrien_fleming", "pocock"])
def test_repeated_intervals_cover_the_truth_at_every_look_together(spending):
    """A paired contrast read at 3, 7, 13, 20 and 27 seeds (v2's design, fewer looks): the
    probability that any look's adjusted interval misses the truth stays at most 5%, while
    plain 95% intervals at every look miss far more often. 1500 experiments at the published
    items and draws; information counted in seeds is conservative (the items are shared by
    all looks), so the simultaneous coverage may exceed 95%."""
    from harness.report.sequential import boundaries, t_quantile

    rng = np.random.default_rng(50 + len(spending))
    c = boundaries([k / LOOKS_AT[-1] for k in LOOKS_AT], 0.05, spending)
    experiments, adjusted, plain = 1500, 0, 0
    for start in range(0, experiments, CHUNK):
        z_a, z_b = latent(rng, CHUNK, LOOKS_AT[-1], "paired", SHAPES["normal"], items=PUBLISHED_ITEMS)
        for e in range(CHUNK):
            (A, B), _, truth = shaped(rng, "normal", z_a[e], z_b[e], True)
            covered_all = plain_all = True
            for k, boundary in zip(LOOKS_AT, c):
                iv = difference_interval(per_seed("mean", A[:k], "seed"), per_seed("mean", B[:k], "seed"),
                                         n_boot=PUBLISHED_DRAWS, seed=start + e)
                half = t_quantile(boundary, iv.df) * iv.se
                covered_all &= iv.estimate - half <= truth <= iv.estimate + half
                plain_all &= iv.low <= truth <= iv.high
            adjusted += covered_all
            plain += plain_all
    print(f"simultaneous coverage over {len(LOOKS_AT)} looks, {spending}: adjusted {adjusted / experiments:.4f}, "
          f"plain 95% {plain / experiments:.4f}")  # pytest -s
    assert 0.945 <= adjusted / experiments <= 0.985
    assert plain / experiments < 0.93


def test_chrf_truth_matches_a_fresh_simulation():
    """The stored truth is that of the simulator above (within 4 standard errors, ~0.04 chrF
    points, of 10,000 new corpora per side)."""
    fresh = _chrf_truth(10_000, seed=99, chunk=10_000)
    stored = {"A": CHRF_TRUTH["A"], "B": CHRF_TRUTH["B"], "B0": CHRF_TRUTH["B0"],
              "A-B": CHRF_TRUTH["A"] - CHRF_TRUTH["B"], "A-B0": CHRF_TRUTH["A"] - CHRF_TRUTH["B0"]}
    for name, (mean, se) in fresh.items():
        assert abs(mean - stored[name]) < 4 * se, (name, mean, se, stored[name])


def test_default_bootstrap_has_at_least_1000_draws():
    for function in (mean_interval, difference_interval):
        assert inspect.signature(function).parameters["n_boot"].default >= 1000


# ---- one seed, a fixed model -------------------------------------------------------------

def _small(kind: str, seeds: int, design: str = "welch", seed: int = 3):
    A, B = simulate(np.random.default_rng(seed), kind, 1, seeds, design)
    return A[0], B[0]


@pytest.mark.parametrize("kind", ["mean", "chrf"])
def test_one_seed_is_item_only_and_flagged(kind):
    A, _ = _small(kind, 1)
    one = mean_interval(per_seed(kind, A, "seed"), n_boot=500, seed=4)
    assert one.seed_variance is False and one.seed_var is None and one.seeds == 1
    assert one.method.endswith(intervals.ONE_SEED)
    with pytest.raises(ValueError):
        seeds_for_power(one)
    # item-only: the same interval as the same statistics read as a fixed model, and its variance
    # is the (n/(n-1)-scaled) bootstrap variance of the metric over items
    fixed = mean_interval(per_seed(kind, A, "seed"), fixed=True, n_boot=500, seed=4)
    assert fixed.seed_variance is True
    assert (one.estimate, one.low, one.high, one.item_var, one.df) == (fixed.estimate, fixed.low, fixed.high,
                                                                      fixed.item_var, fixed.df)
    assert one.se ** 2 == pytest.approx(one.item_var) and one.df == pytest.approx(N_ITEMS - 1)
    cov = intervals._item_covariance(kind, A, np.zeros(N_ITEMS, int), 500, 4)
    assert one.item_var == pytest.approx(cov[0, 0])
    assert one.estimate == pytest.approx(float(metric_from_sums(kind, A[0].sum(axis=0))))


def test_one_seed_on_either_side_of_a_difference_is_flagged():
    A, B = _small("mean", 3)
    three, one = per_seed("mean", A, "seed"), per_seed("mean", B[:1], "other")
    for a, b in ((three, one), (one, three), ({"seed0": three["seed0"]}, {"seed0": per_seed("mean", B, "seed")["seed0"]})):
        iv = difference_interval(a, b, n_boot=300)
        assert iv.seed_variance is False and iv.seed_var is None and iv.se ** 2 == pytest.approx(iv.item_var)
        assert iv.method.endswith(intervals.ONE_SEED)
    # against a fixed original, one seed on A is still flagged; 2+ seeds on A are not
    assert difference_interval({"seed0": three["seed0"]}, one, b_fixed=True, n_boot=300).seed_variance is False
    assert difference_interval(three, one, b_fixed=True, n_boot=300).seed_variance is True


@pytest.mark.parametrize("kind", ["mean", "chrf"])
def test_fixed_model(kind):
    A, B = _small(kind, 4, design="fixed")
    original = per_seed(kind, B, "original")
    iv = mean_interval(original, fixed=True, n_boot=500)
    assert iv.seed_variance is True and iv.seed_var is None and iv.seeds == 1 and "fixed model" in iv.method
    assert iv.se ** 2 == pytest.approx(iv.item_var) and iv.item_var > 0
    with pytest.raises(ValueError):
        mean_interval(per_seed(kind, A, "seed"), fixed=True)
    with pytest.raises(ValueError):
        difference_interval(per_seed(kind, A, "seed"), per_seed(kind, A, "seed"), b_fixed=True)
    diff = difference_interval(per_seed(kind, A, "seed"), original, b_fixed=True, n_boot=500)
    assert diff.seed_variance is True and not diff.paired and diff.seeds == 4 and diff.seeds_versus == 1
    assert len(diff.seed_var_per_seed) == 1 and "against a fixed model" in diff.method
    a_mean = metric_from_sums(kind, A.sum(axis=1)).mean()
    assert diff.estimate == pytest.approx(a_mean - iv.estimate)
    # the seed part is A's alone: S_A^2 / K_A
    assert diff.seed_var == pytest.approx(metric_from_sums(kind, A.sum(axis=1)).var(ddof=1) / 4)


def test_identical_sides_give_a_zero_width_paired_interval():
    A, _ = _small("mean", 3)
    iv = difference_interval(per_seed("mean", A, "seed"), per_seed("mean", A, "seed"), n_boot=200)
    # the bootstrap variance of d_k = 0 is 0 up to rounding (~1e-17), which counts as 0: exactly [0, 0]
    assert iv.paired and iv.estimate == 0 and iv.seed_var == 0 and iv.item_var == 0 and not iv.significant
    assert (iv.low, iv.high, iv.se, iv.df) == (0.0, 0.0, 0.0, None)


# ---- shares of 0/1 items with few events ------------------------------------------------------

def _share(events: int, items: int = 100, seeds: int = 1, prefix: str = "seed") -> dict[str, dict]:
    """``events`` of ``items`` 0/1 outcomes at every seed (the same items: greedy answers)."""
    rows = [[1.0 if i < events else 0.0, 1.0] for i in range(items)]
    return {f"{prefix}{k}": {"kind": "mean", "ids": [str(i) for i in range(items)], "rows": rows} for k in range(seeds)}


@pytest.mark.parametrize("events", [0, 2, 50])
@pytest.mark.parametrize("seeds", [1, 3])
def test_a_share_of_0_1_items_has_a_score_interval_inside_0_1(events, seeds):
    """The v2 original refused 2 of 100 AdvBench prompts: its interval had a negative lower
    bound. A share gets Wilson's score interval (one seed; with seeds, the seed part added),
    never of width 0 and never outside [0, 1]."""
    iv = mean_interval(_share(events, seeds=seeds), fixed=seeds == 1, share=True)
    p, q = events / 100, stats.t.ppf(0.975, 99)
    assert iv.estimate == pytest.approx(p) and 0 <= iv.low < iv.high <= 1 and iv.low <= p <= iv.high
    assert "score interval" in iv.method
    # Wilson with n - 1 (the bootstrap is scaled by n/(n-1)) and a t quantile; the bootstrap's ratio to
    # the binomial variance is 1 up to its noise
    center, half = (p + q * q / 198) / (1 + q * q / 99), q * math.sqrt(p * (1 - p) / 99 + q * q / (4 * 99 ** 2)) / (1 + q * q / 99)
    assert (iv.low, iv.high) == pytest.approx((max(center - half, 0.0), center + half), rel=0.03, abs=1e-12)
    if events == 0:
        assert iv.low == 0 and iv.high == pytest.approx(q * q / (99 + q * q))


@pytest.mark.parametrize("events", [0, 2, 50])
@pytest.mark.parametrize("design", ["fixed", "paired"])
def test_two_equal_shares_differ_by_an_interval_of_positive_width(events, design):
    """EWC - original refusal rate: the same 2 of 100 at every seed printed +0.000 [+0.000,
    +0.000]. The difference of two shares keeps at least one discordant item's variance per
    seed (Agresti & Min's pseudo-items): 1/(K (n + 2)^2)."""
    b = _share(events, prefix="original") if design == "fixed" else _share(events, seeds=3)
    iv = difference_interval(_share(events, seeds=3), b, b_fixed=design == "fixed", share=True)
    assert iv.estimate == 0 and iv.se == pytest.approx(1 / (102 * math.sqrt(3)))
    assert iv.low == -iv.high and iv.high == pytest.approx(stats.t.ppf(0.975, iv.df) * iv.se) and iv.high > 0.005
    # a real difference of 2 items: the interval holds it, and the floor does not widen it
    more = difference_interval(_share(events + 2, seeds=3), b, b_fixed=design == "fixed", share=True)
    assert more.estimate == pytest.approx(0.02) and more.low < 0.02 < more.high and more.se > iv.se


def test_a_metric_that_is_0_on_every_item_is_no_share():
    """The original's KL to itself is 0 on every item: the statistics alone cannot tell it
    from 0 refusals, so a share needs a 1 somewhere (the report decides per column)."""
    zero = _share(0, seeds=1)
    assert not intervals.is_share(list(zero.values())) and intervals.is_share(list(_share(1).values()))
    iv = mean_interval(zero, fixed=True)
    assert (iv.low, iv.high) == (0.0, 0.0)
    with pytest.raises(ValueError):
        mean_interval(per_seed("mean", _small("mean", 3)[0], "seed"), share=True)


# ---- seeds_for_power ---------------------------------------------------------------------

def _interval(delta: float, seed_var: float, item_var: float, item_df: float = N_ITEMS - 1) -> Interval:
    return Interval(estimate=delta, low=None, high=None, se=None, df=None, seed_var=None, item_var=item_var,
                    seeds=3, seeds_versus=3, paired=True, seed_variance=True, method="", n_items=N_ITEMS,
                    item_df=item_df, seed_var_per_seed=(seed_var,))


@pytest.mark.parametrize("effect, seeds", [(0.5, 34), (0.8, 15), (1.0, 10)])
def test_seeds_for_power_known_answer(effect, seeds):
    """Without item noise it is the paired t test: 80% power at two-sided 5% needs 34, 15 and
    10 pairs for effect sizes 0.5, 0.8 and 1 (Cohen's tables, G*Power)."""
    assert seeds_for_power(_interval(effect * 2.0, 4.0, 0.0)) == seeds
    assert seeds_for_power(_interval(-effect * 2.0, 4.0, 0.0)) == seeds


def test_seeds_for_power_is_monotone_and_knows_its_limits():
    base = seeds_for_power(_interval(1.0, 4.0, 0.01))
    assert seeds_for_power(_interval(1.5, 4.0, 0.01)) < base < seeds_for_power(_interval(0.7, 4.0, 0.01))
    assert seeds_for_power(_interval(1.0, 2.0, 0.01)) < base < seeds_for_power(_interval(1.0, 8.0, 0.01))
    assert base < seeds_for_power(_interval(1.0, 4.0, 0.05))  # item noise does not shrink with seeds
    assert seeds_for_power(_interval(1.0, 4.0, 0.01), power=0.9) > base
    assert seeds_for_power(_interval(0.0, 4.0, 0.01)) is None
    assert seeds_for_power(_interval(1.0, 4.0, 0.3)) is None  # delta/sqrt(item var) 1.8: never 80%
    assert seeds_for_power(_interval(1.0, 4.0, 0.01), max_seeds=base - 1) is None
    assert seeds_for_power(_interval(5.0, 0.01, 0.0)) == 2
    assert seeds_for_power(_interval(1.0, 0.0, 0.0)) == 2



@pytest.mark.parametrize("df", [2.0, 5.0, 16.0, 50.0, 300.0])
def test_power_is_a_probability_at_any_noncentrality(df):
    """scipy's noncentral t gives NaN for the wrong-sign tail from a noncentrality of about
    10 (radis - vanilla delta NLL has t of about 25); a NaN power would compare as "reached"
    in seeds_for_power by accident."""
    powers = [intervals._power(ncp, 1.0, df, 0.95) for ncp in (0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 25.0, 40.0, 60.0)]
    assert all(math.isfinite(p) and 0.0 <= p <= 1.0 for p in powers), powers
    assert powers == sorted(powers)
    assert powers[-4] > 0.99 and powers[-1] > 0.999999
    assert intervals._power(0.0, 1.0, df, 0.95) == pytest.approx(0.05, abs=1e-9)  # no effect: the test's level

POWER = dict(delta=1.2, s=1.0, rho=0.5, u=3.0, w=1.0, e=2.0)


def test_seeds_for_power_gives_about_80_percent_power():
    """At the seeds it asks for, with the true variance components, simulated paired experiments
    find the difference in about 80% of cases (fewer seeds: clearly less)."""
    p = POWER
    var_d = 2 * p["s"] ** 2 * (1 - p["rho"]) + 2 * p["e"] ** 2 / N_ITEMS  # per seed d_k, given the items
    iv = _interval(p["delta"], var_d, 2 * p["w"] ** 2 / N_ITEMS)
    k = seeds_for_power(iv)
    assert 3 <= k <= 30
    found = {}
    for seeds in (k, max(2, k // 2)):
        A, B = simulate(np.random.default_rng(seeds), "mean", 1000, seeds, "paired", params=p)
        found[seeds] = np.mean([difference_interval(per_seed("mean", A[e], "seed"), per_seed("mean", B[e], "seed"),
                                                    n_boot=N_BOOT, seed=e).significant for e in range(1000)])
    assert 0.75 <= found[k] <= 0.85, found
    assert found[max(2, k // 2)] < 0.72, found


# ---- metric_from_sums against sacrebleu ----------------------------------------------------

HYPS = [
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog",
    "He said that he would come tomorrow, but he never did.",
    "Hello",
    "This sentence has nothing in common.",
    "Les enfants jouent dans le jardin.",
    "",
    "the the the the",
]
REFS = [
    "The cat is sitting on the mat.",
    "The quick brown fox jumped over the lazy dog.",
    "He told me he would come tomorrow but he did not.",
    "Hello there, general Kenobi!",
    "Completely different words appear here.",
    "Les enfants jouaient dans le jardin.",
    "An empty hypothesis.",
    "the cat",
]
SUBSETS = [list(range(len(HYPS))), [0], [3], [4], [6], [7], [3, 7], [0, 1, 2], [1, 4, 5, 6]]


@pytest.mark.parametrize("metric, kind", [(CHRF(word_order=2), "chrf"), (BLEU(tokenize="13a"), "bleu:13a"),
                                          (BLEU(tokenize="none"), "bleu:none")])
def test_metric_from_sums_equals_sacrebleus_corpus_score(metric, kind):
    stats = np.asarray(metric._extract_corpus_statistics(HYPS, [REFS]), dtype=float)
    expected = [metric.corpus_score([HYPS[i] for i in s], [[REFS[i] for i in s]]).score for s in SUBSETS]
    sums = np.stack([stats[s].sum(axis=0) for s in SUBSETS])
    assert metric_from_sums(kind, sums) == pytest.approx(expected, abs=1e-9)  # vectorised
    for one, value in zip(sums, expected):
        assert float(metric_from_sums(kind, one)) == pytest.approx(value, abs=1e-9)
    # as the interval code uses it: the per-item rows of a cell, summed
    cell = {"only": {"kind": kind, "ids": [str(i) for i in range(len(HYPS))], "rows": stats.tolist()}}
    assert mean_interval(cell, fixed=True, n_boot=200).estimate == pytest.approx(expected[0], abs=1e-9)


def test_metric_from_sums_mean_and_unknown_kind():
    rows = np.array([[3.0, 4.0], [1.0, 1.0], [0.0, 5.0]])
    assert float(metric_from_sums("mean", rows.sum(axis=0))) == pytest.approx(0.4)
    assert metric_from_sums("mean", rows).tolist() == [0.75, 1.0, 0.0]
    with pytest.raises(ValueError):
        metric_from_sums("ter", rows)
