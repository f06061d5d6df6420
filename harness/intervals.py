"""Confidence intervals that combine test-item noise and training-seed noise.

Every seed of a method is scored on the same test items, so a score behaves like a
two-way random-effects layout, x[k, i] = mu + s_k + u_i + e_ki (seed k, item i). The
seed-averaged metric varies by sigma_s^2/K + sigma_u^2/N + sigma_e^2/(KN) around its
target, the expectation over the seed distribution and the item population. The interval
estimates the two parts separately and adds them:

- seed part: S^2/K, with S^2 the sample variance over seeds of the per-seed metric on all
  items; it also carries the seed-specific item noise sigma_e^2/N, once. df K-1.
- common item part (sigma_u^2/N): a bootstrap over items with ``n_boot`` draws; each draw
  resamples the items once, the same draw for every seed and for both sides of a
  difference, and each seed's metric is recomputed on the drawn items (corpus metrics from
  summed sufficient statistics). The average bootstrap covariance between two different
  seeds is the part all seeds share (the same as (K V_avg - mean_k var_k)/(K-1) with V_avg
  the variance of the seed average), clamped at 0. The bootstrap variance is scaled by
  n/(n-1), which makes it unbiased for a mean. df N-1.
- total V = seed part + item part, interval estimate ± t(df) sqrt(V). The df is not plain
  Welch-Satterthwaite, 1/df = sum_j (v_j/V)^2/df_j: the seed part enters with its share of
  V to the first power, (v_seed/V)/df_seed, and within it two sides combine with the power
  g = 1 + min df/max df of their shares (``_df``). With 3 seeds plain Satterthwaite covers
  only ~92%, and Welch 3 vs 27 seeds 93-94%, because the shares are themselves estimated
  from few seeds.

Variants: a fixed model (the original: no seeds) has only item noise, and its item-only
interval is complete. A difference A - B with the same seed labels on both sides is paired
by seed (the formula above on d_k = A_k - B_k, per seed and per draw); otherwise the seed
part is Welch's S_A^2/K_A + S_B^2/K_B and the item part is the bootstrap variance of
(seed-average A - seed-average B) less each side's seed-specific item noise (already in its
seed part). With a single seed on a trained side the seed variance cannot be estimated: the
interval is item-only and flagged ``seed_variance=False`` (too narrow).

Shares of 0/1 items (kind mean, rows [0 or 1, 1]: a refusal, a prompt passed; ``share``)
with few events break the symmetric interval: 2 refusals of 100 at every seed gave a
negative lower bound, and two rows with the same refusals an interval of width 0. A share
gets a score (Wilson-type) interval, every p with (p_hat - p)^2 <= q^2 (seed part + r p
(1 - p)/(n - 1)), r the item part over its binomial value at p_hat, cut to [0, 1]
(``_score_bounds``); a difference of two keeps at least one discordant item's variance per
seed, 1/(K (n+2)^2) (Agresti & Min's pseudo-items, ``_binary_floor``). Simulated coverage at
1-4% events and 200 items: 94.5-95.8% for a 3-seed row, 3 seeds against the original and 27
vs 27 paired (tests/test_intervals.py); 94% for 3 vs 27 unpaired; a 27-seed row's own
interval covers about 93% when the events vary between seeds, because the few items that
ever have one make its item part skewed (not tested: the report's claims are differences).

Rounding residue is no data: variances below VARIANCE_RESIDUE times the square of the
metric's size and estimates below RESIDUE times it count as 0 (``_interval``), so that two
identical rows give exactly [0, 0] on every machine, whatever order BLAS sums in.

With per-item ``groups`` (e.g. translation directions) the metric is the mean over groups
of each group's metric and the bootstrap resamples within each group; groups are then
independent, so the item covariance is the sum of the groups' covariances / G^2.

The per-item statistics are ``{"kind", "ids", "rows"[, "groups"]}``: kind ``mean`` is
sum(x)/sum(n) over rows [x, n], ``chrf`` is sacrebleu's chrF++ (CHRF(word_order=2)) and
``bleu:<tokenize>`` sacrebleu's BLEU, both of summed sufficient statistics. Only items
present in every seed of both sides count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps  # scipy comes with unbabel-comet, a pinned dependency

CHRF_BETA = 2
BLEU_LOG_ZERO = -9999999999  # sacrebleu's floor for log(0)
# Rounding residue, not data: an estimate below RESIDUE x the metric's size (the per-seed values'
# largest magnitude), a variance below VARIANCE_RESIDUE x its square (a standard error under 1e-6 of
# the metric: the bootstrap of two identical rows leaves ~1e-17 relative, whose sign depends on the
# BLAS summation order of the machine)
RESIDUE = 1e-9
VARIANCE_RESIDUE = 1e-12


@dataclass
class Interval:
    """An estimate with its confidence interval and how it was built."""

    estimate: float
    low: float | None  # None: not estimable (fewer than two items)
    high: float | None
    se: float | None
    df: float | None  # None with a zero variance (interval [estimate, estimate]) or one item
    seed_var: float | None  # the seed part of the variance of the estimate (already /K); None: not estimated
    item_var: float  # the common item part of the variance of the estimate
    seeds: int
    seeds_versus: int | None  # B's seeds in a difference (1 for a fixed B); None for one method
    paired: bool  # paired by seed
    seed_variance: bool  # False: a trained side has one seed, seed variance not estimated (too narrow)
    method: str  # how the interval was built, for the report
    n_items: int  # items scored in every seed of both sides
    item_df: float  # df of the item part: items less groups
    seed_var_per_seed: tuple[float, ...] = ()  # each side's variance over seeds (of d_k when paired): for power

    @property
    def significant(self) -> bool:
        """The interval excludes 0."""
        return self.low is not None and (self.low > 0 or self.high < 0)


def metric_from_sums(kind: str, sums: np.ndarray) -> np.ndarray:
    """The metric of summed per-item vectors (the vector on the last axis), vectorised
    over the leading axes; equal to sacrebleu's corpus score for ``chrf``/``bleu:*``."""
    sums = np.asarray(sums, dtype=float)
    if kind == "mean":
        with np.errstate(invalid="ignore", divide="ignore"):
            return sums[..., 0] / sums[..., 1]
    if kind == "chrf":
        return _chrf(sums)
    if kind.startswith("bleu:"):
        return _bleu(sums)
    raise ValueError(f"unknown item statistic kind {kind!r}")


def _chrf(sums: np.ndarray) -> np.ndarray:
    """sacrebleu's CHRF._compute_f_score without eps smoothing: F-beta of precision and
    recall averaged over the orders that both hypothesis and reference have; sums are
    [hyp, ref, match] per order."""
    hyp, ref, match = sums[..., 0::3], sums[..., 1::3], sums[..., 2::3]
    used = (hyp > 0) & (ref > 0)
    n_used = np.maximum(used.sum(axis=-1), 1)  # no order used: both averages stay 0
    avg_prec = (np.where(used, match, 0.0) / np.maximum(hyp, 1)).sum(axis=-1) / n_used
    avg_rec = (np.where(used, match, 0.0) / np.maximum(ref, 1)).sum(axis=-1) / n_used
    factor = CHRF_BETA ** 2
    denom = factor * avg_prec + avg_rec
    return np.where(denom > 0, 100 * (1 + factor) * avg_prec * avg_rec / np.where(denom > 0, denom, 1.0), 0.0)


def _bleu(sums: np.ndarray) -> np.ndarray:
    """sacrebleu's BLEU.compute_bleu with its corpus defaults (exp smoothing, no effective
    order): [sys_len, ref_len, correct_1..n, total_1..n]."""
    order = (sums.shape[-1] - 2) // 2
    sys_len, ref_len = sums[..., 0], sums[..., 1]
    correct, total = sums[..., 2:2 + order], sums[..., 2 + order:]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        bp = np.where(sys_len < ref_len, np.where(sys_len > 0, np.exp(1 - ref_len / sys_len), 0.0), 1.0)
        zero = correct == 0
        smooth = 2.0 ** np.cumsum(zero, axis=-1)  # exp smoothing halves again at each zero-match order
        precisions = np.where(zero, 100.0 / (smooth * total), 100.0 * correct / total)
        logs = np.where(total > 0, np.log(np.where(total > 0, precisions, 1.0)), BLEU_LOG_ZERO)
        # the first order without n-grams stops the loop: it and every later order stay at log(0)
        logs = np.where(np.cumsum(total == 0, axis=-1) > 0, BLEU_LOG_ZERO, logs)
        score = bp * np.exp(logs.sum(axis=-1) / order)
    return np.where(zero.all(axis=-1), 0.0, score)


def _align(sides: list[dict[str, dict]]):
    """(kind, common ids, group index per item, stats arrays per side) or None."""
    all_stats = [s for side in sides for s in side.values()]
    if not all_stats or any(not side for side in sides):
        return None
    kinds = {s["kind"] for s in all_stats}
    if len(kinds) != 1:
        return None
    common = set(all_stats[0]["ids"]).intersection(*(s["ids"] for s in all_stats[1:]))
    first = all_stats[0]
    ids = [i for i in dict.fromkeys(first["ids"]) if i in common]
    if not ids:
        return None
    labels = dict(zip(first["ids"], first.get("groups") or [""] * len(first["ids"])))
    names = list(dict.fromkeys(labels[i] for i in ids))
    group = np.asarray([names.index(labels[i]) for i in ids])
    arrays = [np.asarray([_rows(s, ids) for s in side.values()], dtype=float) for side in sides]
    return kinds.pop(), ids, group, arrays


def _rows(stats: dict, ids: list[str]):
    if list(stats["ids"]) == ids:  # the usual case: every unit scored the same items
        return stats["rows"]
    by_id = dict(zip(stats["ids"], stats["rows"]))
    return [by_id[i] for i in ids]


def _grouped_metric(kind: str, X: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Per-seed metric: the mean over groups of each group's metric of summed stats."""
    return np.mean([metric_from_sums(kind, X[:, group == g].sum(axis=1)) for g in np.unique(group)], axis=0)


def _item_covariance(kind: str, X: np.ndarray, group: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Bootstrap covariance over items of the per-seed metrics, [seeds, seeds] for the
    rows of ``X`` [seeds, items, features]; resampled within each group, every row with the
    same draws."""
    rng = np.random.default_rng(seed)
    groups = np.unique(group)
    rows, _, features = X.shape
    cov = np.zeros((rows, rows))
    for g in groups:
        members = np.flatnonzero(group == g)
        n = members.size
        if n < 2:
            continue  # one item: nothing to resample
        picks = rng.integers(0, n, (n_boot, n)) + n * np.arange(n_boot)[:, None]
        weights = np.bincount(picks.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(float)
        Xg = X[:, members].transpose(1, 0, 2).reshape(n, rows * features)
        values = metric_from_sums(kind, (weights @ Xg).reshape(n_boot, rows, features))  # [draws, seeds]
        values = values[np.isfinite(values).all(axis=1)]
        if values.shape[0] < 2:
            continue
        cov += np.atleast_2d(np.cov(values, rowvar=False)) * n / (n - 1)
    return cov / groups.size ** 2


def _off_diagonal_mean(cov: np.ndarray) -> float:
    k = cov.shape[0]
    return float((cov.sum() - np.trace(cov)) / (k * (k - 1)))


def _seed_specific(cov: np.ndarray) -> float:
    """The seed-specific item noise in a seed average: the mean diagonal less the mean
    off-diagonal covariance, over K."""
    k = cov.shape[0]
    return float((np.trace(cov) / k - _off_diagonal_mean(cov)) / k)


def _df(seed_parts: list[tuple[float, float]], item_var: float, item_df: float) -> float | None:
    """Degrees of freedom of the total variance; None when it is 0. Welch-Satterthwaite
    gives 1/df = sum_j (v_j/V)^2/df_j, which assumes the shares v_j/V are known. Estimated
    from few seeds they are not, and a share estimated too small gets a large df just when
    the interval is already too narrow. So:

    - the seed part enters with its share to the first power, (v_seed/V)/df_seed (without it
      coverage is 92% at 3 seeds when the seed part is most of V);
    - within the seed part, 1/df_seed = sum_j (v_j/v_seed)^g/df_j with g = 1 + min df_j/max
      df_j: Satterthwaite (g = 2) for sides with equal seed counts, whose shares err alike,
      moving to the first power (g -> 1) when one side has far fewer seeds than the other
      (Welch 3 vs 27 seeds covered 93-94% with g = 2, 94-95.5% with this g).

    Both equal Satterthwaite when one part is all of V. In the normal model (200 items,
    tests/test_intervals.py) coverage is 94-96.5% at 3 seeds and 95-96% at 10 and 27 for any
    mix of the parts; 94% where a 3-seed side's spread is 2-4 times the other's."""
    seed_var = sum(v for v, _ in seed_parts)
    total = seed_var + item_var
    if total <= 0:
        return None
    inverse = (item_var / total) ** 2 / item_df
    if seed_var > 0:
        dfs = [df for _, df in seed_parts]
        power = 1 + min(dfs) / max(dfs)
        inverse += sum((v / seed_var) ** power / df for v, df in seed_parts if v > 0) * seed_var / total
    return 1 / inverse


def _interval(estimate: float, seed_parts: list[tuple[float, float]], item_var: float, item_df: float, n_items: int,
              level: float, scale: float, **info) -> Interval:
    """The interval from the seed parts (each side's variance of the estimate, df) and the
    common item part; no seed parts: item noise only. Variances below VARIANCE_RESIDUE scale^2
    and an estimate below RESIDUE scale are rounding residue and count as 0, so the report
    is the same on every machine."""
    seed_parts = [(v if v >= VARIANCE_RESIDUE * scale ** 2 else 0.0, df) for v, df in seed_parts]
    item_var = item_var if item_var >= VARIANCE_RESIDUE * scale ** 2 else 0.0
    estimate = settled(estimate, scale)
    seed_var = sum(v for v, _ in seed_parts) if seed_parts else None
    var = (seed_var or 0.0) + item_var
    df = _df(seed_parts, item_var, item_df)
    low = high = se = None
    if n_items < 2:
        df = None
    elif df is None:  # no variance at all, e.g. identical sides
        low = high = estimate
        se = 0.0
    else:
        se = math.sqrt(var)
        half = float(sps.t.ppf(0.5 + level / 2, df)) * se
        low, high = estimate - half, estimate + half
    return Interval(estimate=estimate, low=low, high=high, se=se, df=df, seed_var=seed_var, item_var=item_var,
                    n_items=n_items, item_df=item_df, **info)


def settled(value: float, scale: float) -> float:
    """``value``, or 0 when it is rounding residue for a metric of size ``scale``."""
    return value if abs(value) >= RESIDUE * scale else 0.0


def _scale(*values: np.ndarray) -> float:
    """The size of the metric's numbers, against which rounding residue is measured."""
    top = max(float(np.abs(v).max()) for v in values)
    return top if top > 0 else 1.0


def _binary(kind: str, arrays: list[np.ndarray], share: bool | None) -> bool:
    """A share of 0/1 items (kind mean, rows [0 or 1, 1]: a refusal, a prompt passed). The
    statistics alone cannot tell a share without events from a metric that is 0 on every item
    (the original's KL to itself), so ``share`` None counts only statistics with a 1 among
    them; the report decides per column."""
    zero_one = kind == "mean" and all(np.all(X[..., 1] == 1) and np.all((X[..., 0] == 0) | (X[..., 0] == 1)) for X in arrays)
    if share and not zero_one:
        raise ValueError("share=True needs kind 'mean' statistics with rows [0 or 1, 1]")
    return zero_one and (share if share is not None else any(np.any(X[..., 0] == 1) for X in arrays))


def is_share(statistics: list[dict]) -> bool:
    """Whether item statistics (of one metric, any rows and seeds) hold a share of 0/1 items:
    kind mean, every row [0 or 1, 1], and at least one 1 among them."""
    if not statistics or any(st["kind"] != "mean" for st in statistics):
        return False
    rows = [np.asarray(st["rows"], dtype=float).reshape(-1, 2) for st in statistics]
    return _binary("mean", rows, None)


def _score_bounds(iv: Interval, n: int, level: float) -> tuple[float, float]:
    """The interval of a share of 0/1 items as a score (Wilson) interval: every p with
    (p_hat - p)^2 <= q^2 (seed part + r p (1 - p) / (n - 1)), where r is the item part over
    its binomial value at p_hat (1 without events or without non-events), cut to [0, 1]. With
    one seed it is Wilson's interval (with a t quantile), never empty and never of width 0."""
    p = iv.estimate
    binomial = p * (1 - p) / (n - 1)
    r = iv.item_var / binomial if binomial > 0 else 1.0
    q = float(sps.t.ppf(0.5 + level / 2, iv.df if iv.df is not None else iv.item_df))
    c = q * q * r / (n - 1)
    b, cc = 2 * p + c, p * p - q * q * (iv.seed_var or 0.0)
    root = math.sqrt(max(b * b - 4 * (1 + c) * cc, 0.0))
    return max(0.0, (b - root) / (2 * (1 + c))), min(1.0, (b + root) / (2 * (1 + c)))


def _binary_floor(group: np.ndarray, seeds: float) -> float:
    """The least variance of a difference of two shares of 0/1 items: Agresti & Min's (2005)
    half pseudo-item in each cell of every seed's 2 x 2 table, i.e. one discordant item's
    worth, 1/(n+2)^2, per group of n items (over G^2 for the mean over groups), averaged over
    the seeds (K_A against a fixed original, else the harmonic mean of the two sides' seeds).
    Without it two rows that agree on every item (the same 2 refusals of 100 at every seed)
    get an interval of width 0; with it the simulated coverage of few-event differences is
    95% (tests/test_intervals.py)."""
    sizes = np.bincount(group)
    return float(np.sum(1 / (sizes[sizes > 0] + 2.0) ** 2) / np.count_nonzero(sizes) ** 2) / seeds


def _describe(n_boot: int, groups: int, tail: str) -> str:
    strata = f", stratified by {groups} groups" if groups > 1 else ""
    return f"item bootstrap ({n_boot}{strata}) + {tail}"


ONE_SEED = "no seed part: one seed, seed variance not estimated"


def mean_interval(per_seed: dict[str, dict], *, fixed: bool = False, share: bool | None = None, n_boot: int = 2000,
                  seed: int = 0, level: float = 0.95) -> Interval | None:
    """A method's metric averaged over its seeds (seed label -> item statistics) with its
    interval; ``fixed``: one untrained model (the original), item noise only. None when
    no item is scored in every seed or the kinds differ. A share of 0/1 items (``share``, see
    ``_binary``) gets a score interval inside [0, 1] (``_score_bounds``)."""
    if fixed and len(per_seed) != 1:
        raise ValueError("a fixed model has exactly one set of item statistics")
    aligned = _align([per_seed])
    if aligned is None:
        return None
    kind, ids, group, (X,) = aligned
    values = _grouped_metric(kind, X, group)
    estimate = float(values.mean())
    if not math.isfinite(estimate):
        return None
    cov = _item_covariance(kind, X, group, n_boot, seed)
    k, n_groups = len(values), int(np.unique(group).size)
    binary = _binary(kind, [X], share)
    tail = " (score interval of a 0/1 share)" if binary else ""
    args = dict(item_df=float(max(len(ids) - n_groups, 1)), n_items=len(ids), level=level, scale=_scale(values),
                seeds=k, seeds_versus=None, paired=False)
    if fixed or k == 1:
        iv = _interval(estimate, [], float(cov[0, 0]), seed_variance=fixed,
                       method=_describe(n_boot, n_groups, ("nothing else: a fixed model" if fixed else ONE_SEED) + tail), **args)
    else:
        s2 = float(values.var(ddof=1))
        iv = _interval(estimate, [(s2 / k, k - 1)], max(_off_diagonal_mean(cov), 0.0), seed_variance=True,
                       seed_var_per_seed=(s2,), method=_describe(n_boot, n_groups, f"seed t ({k} seeds){tail}"), **args)
    if binary and len(ids) >= 2:
        iv.low, iv.high = _score_bounds(iv, len(ids), level)
    return iv


def difference_interval(a: dict[str, dict], b: dict[str, dict], *, b_fixed: bool = False, share: bool | None = None,
                        n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> Interval | None:
    """A's seed-averaged metric minus B's with its interval: paired by seed when both have
    the same seed labels, Welch otherwise; ``b_fixed``: B is one untrained model (the
    original), item noise only. None when no item is scored in every seed of both or the
    kinds differ. Two shares of 0/1 items (``share``, see ``_binary``) have a variance of at
    least one discordant item's (``_binary_floor``)."""
    if b_fixed and len(b) != 1:
        raise ValueError("a fixed model has exactly one set of item statistics")
    paired = not b_fixed and set(a) == set(b)
    if paired:  # the same seed order on both sides
        b = {label: b[label] for label in a}
    aligned = _align([a, b])
    if aligned is None:
        return None
    kind, ids, group, (XA, XB) = aligned
    va, vb = _grouped_metric(kind, XA, group), _grouped_metric(kind, XB, group)
    estimate = float(va.mean() - vb.mean())
    if not math.isfinite(estimate):
        return None
    ka, kb = len(va), len(vb)
    cov = _item_covariance(kind, np.concatenate([XA, XB]), group, n_boot, seed)  # [ka + kb, ka + kb]
    n_groups = int(np.unique(group).size)
    args = dict(item_df=float(max(len(ids) - n_groups, 1)), n_items=len(ids), level=level, scale=_scale(va, vb),
                seeds=ka, seeds_versus=kb, paired=paired)
    seeds_per_side = ka if b_fixed else 2 / (1 / ka + 1 / kb)
    floor = _binary_floor(group, seeds_per_side) if _binary(kind, [XA, XB], share) else 0.0  # the item part rises to it
    contrast = np.concatenate([np.full(ka, 1 / ka), np.full(kb, -1 / kb)])
    whole = float(contrast @ cov @ contrast)  # the item variance of the observed difference

    if ka == 1 or (kb == 1 and not b_fixed):
        return _interval(estimate, [], max(whole, floor), seed_variance=False, method=_describe(n_boot, n_groups, ONE_SEED),
                         **args)
    if paired:
        to_d = np.hstack([np.eye(ka), -np.eye(ka)])
        s2 = float((va - vb).var(ddof=1))
        return _interval(estimate, [(s2 / ka, ka - 1)], max(_off_diagonal_mean(to_d @ cov @ to_d.T), floor - s2 / ka, 0.0),
                         seed_variance=True, seed_var_per_seed=(s2,),
                         method=_describe(n_boot, n_groups, f"seed t ({ka} seeds), paired by seed"), **args)
    # Welch: each trained side's seed-specific item noise is in its seed part already
    s2a = float(va.var(ddof=1))
    item = whole - _seed_specific(cov[:ka, :ka])
    seed_parts, per_seed = [(s2a / ka, ka - 1)], (s2a,)
    if b_fixed:
        tail = f"seed t ({ka} seeds) against a fixed model"
    else:
        s2b = float(vb.var(ddof=1))
        item -= _seed_specific(cov[ka:, ka:])
        seed_parts, per_seed = seed_parts + [(s2b / kb, kb - 1)], (s2a, s2b)
        tail = f"Welch seed t ({ka} vs {kb} seeds)"
    return _interval(estimate, seed_parts, max(item, floor - sum(v for v, _ in seed_parts), 0.0), seed_variance=True,
                     seed_var_per_seed=per_seed, method=_describe(n_boot, n_groups, tail), **args)


def _power(delta: float, se: float, df: float, level: float) -> float:
    """Two-sided power of the t test at noncentrality |delta|/se. scipy's noncentral t
    returns NaN for the wrong-sign tail P(T < -crit) once the noncentrality is large
    (from about 10); that tail lies between 0 and P(T < crit), which is tiny there, so it
    counts as 0."""
    crit = sps.t.ppf(0.5 + level / 2, df)
    ncp = abs(delta) / se
    wrong_sign = float(sps.nct.cdf(-crit, df, ncp))
    if not math.isfinite(wrong_sign):
        wrong_sign = 0.0
    return float(sps.nct.sf(crit, df, ncp)) + wrong_sign


def seeds_for_power(iv: Interval, *, power: float = 0.8, level: float = 0.95, max_seeds: int = 1000) -> int | None:
    """The fewest seeds per method (2..max_seeds, the same on every trained side) that give
    ``power`` to detect ``iv.estimate`` at ``iv``'s variance components: the seed part
    shrinks as 1/K, the common item part does not. None when no K up to max_seeds
    suffices, in particular when even infinitely many seeds cannot (item noise alone too
    big: more items are needed). Needs an interval with an estimated seed variance."""
    if not iv.seed_variance or not iv.seed_var_per_seed:
        raise ValueError("power needs an interval with an estimated seed variance")
    if iv.estimate == 0:
        return None

    def achieved(k: int) -> float:
        parts = [(v / k, k - 1) for v in iv.seed_var_per_seed]
        var = sum(v for v, _ in parts) + iv.item_var
        if var == 0:
            return 1.0
        return _power(iv.estimate, math.sqrt(var), _df(parts, iv.item_var, iv.item_df), level)

    low, high = 2, max_seeds  # power grows with K: bisect for the first K that reaches it
    if achieved(high) < power:
        return None
    while low < high:
        mid = (low + high) // 2
        low, high = (mid + 1, high) if achieved(mid) < power else (low, mid)
    return low


# Percentile bootstraps of one model's metric (a suite's own interval of a unit) ----------------
def bootstrap_ci(values, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float | None, float | None]:
    """Percentile bootstrap CI of the mean; ``(None, None)`` for fewer than two values."""
    arr = np.asarray(list(values), dtype=float)
    if arr.size < 2:
        return None, None
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, arr.size, size=(n_boot, arr.size))].mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def bootstrap_ci_of(items, statistic_fn, n_boot: int = 200, seed: int = 0,
                    level: float = 0.95) -> tuple[float | None, float | None]:
    """Percentile bootstrap CI of a corpus-level statistic (BLEU, chrF, ...).

    ``statistic_fn`` maps a resampled list of ``items`` (drawn with replacement, same
    size) to a number. Pass per-sentence sufficient statistics as items so each
    resample is a cheap sum rather than a fresh scoring pass. ``(None, None)`` for
    fewer than two items.
    """
    items = list(items)
    if len(items) < 2:
        return None, None
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(items), size=(n_boot, len(items)))
    values = np.array([statistic_fn([items[i] for i in row]) for row in draws], dtype=float)
    alpha = (1 - level) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))
