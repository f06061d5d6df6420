"""RaDis's rationale weight λ = 0.5 against the main run's λ = 1 and vanilla:
`python reports/smollm2-135m-de-en/ablation.py` (with the repository's environment).

Both runs score the same items with the same budget and seeds, so the harness's paired
bootstrap (`harness.differences.difference`: items and seeds resampled, 1000 draws) applies
across them. The two runs name both RaDis variants `radis`, so one leaderboard cannot hold
them side by side; this script compares them from the committed per-item statistics
(`results/<label>/items/<suite>.json`) and prints a markdown table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from harness.differences import difference, finalize

HERE = Path(__file__).resolve().parent
METRICS = [("translation", "de-en/chrf++", 1), ("translation", "de-en/bleu", 2), ("ifeval", "prompt_strict", 3),
           ("ifeval", "inst_strict", 3), ("retention", "kl", 3), ("retention", "delta_nll", 3),
           ("translation", "de-en/words_raw", 1), ("safety", "refusal_rate", 3)]
SEEDS = (0, 1, 2)
VARIANTS = {  # name -> (run directory, result labels)
    "original": ("run", ["original"]),
    "vanilla": ("run", [f"vanilla-seed{s}" for s in SEEDS]),
    "radis λ=1": ("run", [f"radis-seed{s}" for s in SEEDS]),
    "radis λ=0.5": ("run-lambda05", [f"radis-seed{s}" for s in SEEDS]),
}


def item_stats(run: str, labels: list[str], suite: str, metric: str) -> list[dict]:
    stats = []
    for label in labels:
        path = HERE / run / "results" / label / "items" / f"{suite}.json"
        if not path.is_file():
            sys.exit(f"{path} does not exist: run the configs first (see README.md).")
        stats.append(json.loads(path.read_text(encoding="utf-8"))[metric])
    return stats


def mean_over_seeds(stats: list[dict]) -> float:
    return float(np.mean([finalize(s["kind"], np.asarray(s["rows"], dtype=float).sum(axis=0)) for s in stats]))


def main() -> None:
    stats = {(name, suite, metric): item_stats(run, labels, suite, metric)
             for name, (run, labels) in VARIANTS.items() for suite, metric, _ in METRICS}
    print("| | " + " | ".join(f"{suite}/{metric}" for suite, metric, _ in METRICS) + " |")
    print("|---|" + "---:|" * len(METRICS))
    for name in VARIANTS:
        cells = [f"{mean_over_seeds(stats[name, suite, metric]):.{digits}f}" for suite, metric, digits in METRICS]
        print(f"| {name} | " + " | ".join(cells) + " |")
    for a, b in (("radis λ=0.5", "radis λ=1"), ("radis λ=0.5", "vanilla"), ("radis λ=1", "vanilla")):
        cells = []
        for suite, metric, digits in METRICS:
            d = difference(stats[a, suite, metric], stats[b, suite, metric])
            cells.append(f"{d['difference']:+.{digits}f} [{d['ci_low']:+.{digits}f}, {d['ci_high']:+.{digits}f}]")
        print(f"| {a} − {b} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
