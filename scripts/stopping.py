"""How each row's retention drift splits into stopping and content (issue 30), read from a
run's scores.csv: nothing is computed anew but means and rank correlations.

    python scripts/stopping.py reports/smollm2-135m-stopping-or-content/run

Prints one markdown table, a row per leaderboard row (mean over its seeds): retention KL and
its stop and content parts, the stop part's share of the KL, the row's own finished share
and answer length on the retention prompts, the on-task KL and its stop part, IFEval's
finished share; then, for every row with at least five seeds, Spearman's ρ across its seeds
between retention KL and the finished share, and between retention KL and the answer length
(descriptive: a rank correlation over seeds, not a test).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
from scipy import stats as sps

COLUMNS = [("retention", "kl"), ("retention", "kl_stop"), ("retention", "kl_content"), ("retention", "finished"),
           ("retention", "length"), ("task_kl", "kl"), ("task_kl", "kl_stop"), ("ifeval", "finished")]


def per_seed(scores: pd.DataFrame) -> pd.DataFrame:
    """A row per (row label, seed), a column per suite/metric."""
    scores = scores[scores["value"] != ""].copy()
    scores["value"] = scores["value"].astype(float)
    scores["key"] = scores["suite"] + "/" + scores["metric"]
    return scores.pivot_table(index=["method", "seed"], columns="key", values="value", aggfunc="first")


def main(run: Path) -> None:
    table = per_seed(pd.read_csv(run / "scores.csv", dtype=str, keep_default_na=False))
    means = table.groupby(level="method", sort=False).mean()
    seeds = table.groupby(level="method", sort=False).size()
    header = ["row", "seeds", "retention KL", "stop", "content", "stop share", "finished", "length", "task KL",
              "task stop", "IFEval finished"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for row, values in means.iterrows():
        get = lambda suite, metric: values.get(f"{suite}/{metric}", float("nan"))  # noqa: E731
        kl, stop = get("retention", "kl"), get("retention", "kl_stop")
        cells = [f"{get(s, m):.4f}" if m in ("kl", "kl_stop", "kl_content") else f"{get(s, m):.2f}" if m == "finished"
                 else f"{get(s, m):.1f}" for s, m in COLUMNS]
        share = f"{stop / kl:.2f}" if kl > 0 else "—"
        lines.append("| " + " | ".join([row, str(seeds[row]), *cells[:3], share, *cells[3:]]) + " |")
    print("\n".join(lines))
    print()
    for row, group in table.groupby(level="method", sort=False):
        if len(group) < 5:
            continue
        kl = group["retention/kl"]
        for other, name in (("retention/finished", "finished share"), ("retention/length", "answer length")):
            rho = sps.spearmanr(kl, group[other]).statistic
            print(f"{row}: Spearman's ρ across its {len(group)} seeds, retention KL vs {name}: {rho:+.2f}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python scripts/stopping.py RUN_DIR")
    main(Path(sys.argv[1]))
