"""The IFEval limit study of issue 30: does a row's IFEval at a short generation limit rank the
rows as lm-eval's limit of 1280 new tokens does?

    python scripts/ifeval_limits.py RUN_1280 [--short RUN_96] [--csv OUT.csv]

``RUN_1280`` is a run directory whose ``ifeval`` suite answered at 1280 new tokens (every row
at one seed); its per-item outputs hold each answer's token ids. Decoding is greedy, so the
answer at a limit L is the first L of those tokens, finished when the end of turn came before
L: every candidate below is read from the same answers, nothing is generated.

Candidates, each a score per row over the same prompts:
- ``strict@L``: prompt-level strict accuracy of the answers cut at L;
- ``finished@L``: the same over the answers that finished within L only;
- ``loop-aware``: the 1280-token answers, each one that repeats a block of tokens up to the
  limit cut after the block's first occurrence and scored as finished.
Each is compared with ``strict@1280`` by Spearman's ρ over the rows, with a 90% interval from
a bootstrap over prompts (the same draws for both scores); ``cost`` is the tokens generated
at that limit (answer tokens plus the end of turn), relative to 1280. Per limit it also prints
Spearman's ρ across rows between ``strict@L`` and the share of answers that finished within L:
whether a row's score tracks how often it stops, and whether a longer limit changes that.

``--short RUN_96``: a run that scored the same rows at 96 new tokens on a sample containing
these prompts; the answers read at L = 96 must equal its answers (a check that reading limits
off the long answers is exact), and the share that does is printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import stats as sps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.store import read_jsonl  # noqa: E402

LIMITS = (96, 128, 192, 256, 384, 512, 768, 1280)
DRAWS = 2000


def loop_start(ids: list[int], min_repeats: int = 3, max_period: int = 256) -> int | None:
    """Where an answer that runs to the limit starts repeating itself: the end of the first
    occurrence of the shortest block that repeats (at least ``min_repeats`` times in all) up
    to the end; None when it does not end in such a loop."""
    n = len(ids)
    for period in range(1, min(max_period, n // min_repeats) + 1):
        start = n - period
        while start > 0 and ids[start - 1] == ids[start - 1 + period]:
            start -= 1
        if (n - start) >= min_repeats * period:
            return start + period
    return None


def read_rows(run: Path) -> dict[str, list[dict]]:
    """cell -> the ifeval per-item outputs of every evaluated cell of a run."""
    rows = {}
    for path in sorted((run / "outputs").glob("*/ifeval.jsonl")):
        rows[path.parent.name] = read_jsonl(path)
    if not rows:
        raise SystemExit(f"{run} holds no ifeval outputs (outputs/<cell>/ifeval.jsonl)")
    return rows


def scores(run: Path, tokenizer, items: dict) -> tuple[list[str], dict[str, np.ndarray], dict[str, float], dict]:
    """Per candidate, a [rows, prompts] matrix of (correct, counted) pairs; the cost of each
    limit; and the answers read at each limit (cell -> id -> (text, finished))."""
    from suites.ifeval import score_response

    long = read_rows(run)
    cells = list(long)
    ids = [r["id"] for r in long[cells[0]]]
    out: dict[str, list] = {}
    cost = {L: 0 for L in LIMITS}
    texts: dict[int, dict] = {L: {} for L in LIMITS}
    memo: dict = {}

    def strict(item_id, text):
        if (item_id, text) not in memo:
            memo[item_id, text] = score_response(items[item_id], text).prompt_strict
        return memo[item_id, text]

    for cell in cells:
        by_id = {r["id"]: r for r in long[cell]}
        for L in LIMITS:
            row_s, row_f = [], []
            for item_id in ids:
                r = by_id[item_id]
                tokens = r["token_ids"]
                finished = r["finished"] and len(tokens) < L
                text = tokenizer.decode(tokens[:L], skip_special_tokens=True)
                texts[L].setdefault(cell, {})[item_id] = (text, finished)
                correct = strict(item_id, text)
                row_s.append((correct, 1.0))
                row_f.append((correct * finished, float(finished)))
                cost[L] += min(len(tokens) + 1, L) if r["finished"] else L
            out.setdefault(f"strict@{L}", []).append(row_s)
            out.setdefault(f"finished@{L}", []).append(row_f)
        row_loop = []
        for item_id in ids:
            r = by_id[item_id]
            tokens = r["token_ids"]
            cut = None if r["finished"] else loop_start(tokens)
            text = tokenizer.decode(tokens[:cut] if cut else tokens, skip_special_tokens=True)
            row_loop.append((strict(item_id, text), 1.0))
        out.setdefault("loop-aware", []).append(row_loop)
    matrices = {name: np.asarray(rows, dtype=float) for name, rows in out.items()}
    total = cost[1280]
    return cells, matrices, {L: cost[L] / total for L in LIMITS}, texts


def rank_agreement(candidate: np.ndarray, reference: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """Spearman's ρ between the rows' scores, and its 90% bootstrap interval over prompts."""
    def score(m, w=None):
        w = np.ones(m.shape[1]) if w is None else w
        with np.errstate(invalid="ignore", divide="ignore"):
            return (m[..., 0] * w).sum(-1) / (m[..., 1] * w).sum(-1)

    rho = sps.spearmanr(score(candidate), score(reference)).statistic
    rng = np.random.default_rng(seed)
    n = candidate.shape[1]
    draws = []
    for _ in range(DRAWS):
        w = np.bincount(rng.integers(0, n, n), minlength=n).astype(float)
        a, b = score(candidate, w), score(reference, w)
        if np.isfinite(a).all() and np.isfinite(b).all() and np.ptp(a) > 0 and np.ptp(b) > 0:
            draws.append(sps.spearmanr(a, b).statistic)
    low, high = np.nanquantile(draws, [0.05, 0.95])
    return float(rho), float(low), float(high)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--short", type=Path)
    parser.add_argument("--csv", type=Path)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from harness.data.sources import DataSource, sample
    from harness.model.loading import resolve_model
    from suites.ifeval import IFEVAL

    manifest = json.loads((args.run / "manifest.json").read_text())
    cfg = manifest["config"]
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(cfg["model"]).path)
    data = DataSource.open(cfg["data_dir"])
    size = cfg["suite_sizes"].get("ifeval", cfg["eval_size"])
    items = {it.id: it for it in sample(data.general(IFEVAL), size, cfg["data_seed"])}
    cells, matrices, cost, texts = scores(args.run, tokenizer, items)
    reference = matrices["strict@1280"]

    if args.short:
        short = read_rows(args.short)
        same = total = 0
        for cell in cells:
            by_id = {r["id"]: r for r in short.get(cell, [])}
            for item_id, (text, finished) in texts[96][cell].items():
                if item_id in by_id:
                    total += 1
                    same += by_id[item_id]["output"] == text and by_id[item_id]["finished"] == finished
        print(f"answers read at 96 tokens that equal {args.short}'s own 96-token answers: {same} of {total}")

    def mean(m):
        return m[..., 0].sum(-1) / m[..., 1].sum(-1)

    header = "| candidate | cost vs 1280 | ρ with strict@1280 [90%] | " + " | ".join(cells) + " |"
    lines = [header, "|---|---:|---:|" + "---:|" * len(cells)]
    records = []
    for name, m in matrices.items():
        rho, low, high = rank_agreement(m, reference)
        L = int(name.split("@")[1]) if "@" in name else 1280
        per_row = mean(m)
        lines.append(f"| {name} | {cost[L]:.2f} | {rho:+.2f} [{low:+.2f}, {high:+.2f}] | "
                     + " | ".join(f"{v:.3f}" for v in per_row) + " |")
        records.append({"candidate": name, "cost": cost[L], "rho": rho, "rho_low": low, "rho_high": high,
                        **{cell: float(v) for cell, v in zip(cells, per_row)}})
    finished = {L: [float(np.mean([f for _, f in texts[L][cell].values()])) for cell in cells] for L in LIMITS}
    for L in LIMITS:
        lines.append(f"| finished share @{L} | | | " + " | ".join(f"{v:.2f}" for v in finished[L]) + " |")
        records.append({"candidate": f"finished_share@{L}", **{cell: v for cell, v in zip(cells, finished[L])}})
    print("\n".join(lines))
    # does a row's score track how often it finishes, and does a longer limit change that?
    tracking = {L: float(sps.spearmanr(mean(matrices[f"strict@{L}"]), finished[L]).statistic) for L in LIMITS}
    print("Spearman's ρ across rows between strict@L and the finished share @L: "
          + ", ".join(f"{L} {rho:+.2f}" for L, rho in tracking.items()))
    records += [{"candidate": f"rho_strict_vs_finished@{L}", "rho": rho} for L, rho in tracking.items()]
    if args.csv:
        import pandas as pd

        pd.DataFrame(records).to_csv(args.csv, index=False, float_format="%.4f")


if __name__ == "__main__":
    main()
