"""RaDis's rationale weight λ = 0.5 against the main run's λ = 1 and vanilla:
`python reports/smollm2-135m-de-en/ablation.py` (with the repository's environment).

Both runs score the same items with the same budget and seeds, so the harness's paired
bootstrap (`harness.differences.difference`: items and seeds resampled, 1000 draws) applies
across them. The two runs name both RaDis variants `radis`, so one leaderboard cannot hold
them side by side; this script compares them from the committed scores and per-item statistics
(`scores.csv`, `results/<label>/items/<suite>.json`) and prints a markdown table.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from harness.differences import difference, load_item_stats

HERE = Path(__file__).resolve().parent
METRICS = [("translation", "de-en/chrf++", 1), ("translation", "de-en/bleu", 2), ("ifeval", "prompt_strict", 3),
           ("ifeval", "inst_strict", 3), ("retention", "kl", 3), ("retention", "delta_nll", 3),
           ("translation", "de-en/words_raw", 1), ("safety", "refusal_rate", 3)]
VARIANTS = {"original": ("run", "original"), "vanilla": ("run", "vanilla"),  # name -> (run folder, method)
            "radis λ=1": ("run", "radis"), "radis λ=0.5": ("run-lambda05", "radis")}


def main() -> None:
    runs = {}
    for run in dict.fromkeys(run for run, _ in VARIANTS.values()):
        if not (HERE / run / "scores.csv").is_file():
            sys.exit(f"{HERE / run / 'scores.csv'} does not exist: run the configs first (see README.md).")
        scores = pd.read_csv(HERE / run / "scores.csv", dtype={"seed": str}, keep_default_na=False)
        runs[run] = (scores, load_item_stats([(HERE / run, scores)]))
    model = runs["run"][0]["model"].iloc[0]

    def mean(name, suite, metric):  # the leaderboard's cell: mean over the seeds' scores
        scores, _ = runs[VARIANTS[name][0]]
        rows = scores[(scores["method"] == VARIANTS[name][1]) & (scores["suite"] == suite) & (scores["metric"] == metric)]
        return pd.to_numeric(rows["value"]).mean()

    def stats(name, suite, metric):
        run, method = VARIANTS[name]
        return runs[run][1][model, method, suite, metric]

    print("| | " + " | ".join(f"{suite}/{metric}" for suite, metric, _ in METRICS) + " |")
    print("|---|" + "---:|" * len(METRICS))
    for name in VARIANTS:
        print(f"| {name} | " + " | ".join(f"{mean(name, s, m):.{d}f}" for s, m, d in METRICS) + " |")
    for a, b in (("radis λ=0.5", "radis λ=1"), ("radis λ=0.5", "vanilla"), ("radis λ=1", "vanilla")):
        cells = []
        for suite, metric, digits in METRICS:
            d = difference(stats(a, suite, metric), stats(b, suite, metric))
            cells.append(f"{d['difference']:+.{digits}f} [{d['ci_low']:+.{digits}f}, {d['ci_high']:+.{digits}f}]")
        print(f"| {a} − {b} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
