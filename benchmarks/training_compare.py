"""The trainer against itself before issue 36's speed-ups, in one process.

Trains the embedded model (fp32, LoRA r16 alpha 32 on every linear layer) ``--repeats``
times each way on the same ``steps x batch`` ALMA de->en pairs (the published shapes: batch
8, max length 256), alternating the old code (``OLD``, put back into
``harness.model.training`` for those runs) and the new, each on a fresh copy of the model.
Prints each run's trained tokens/s and share of the machine's limit (the FLOPs
counted by ``harness.model.compute`` per second against a 1024^3 fp32 matmul measured in
this process just before the run), the per-step losses of the first pair and their largest
relative difference, and the median ratio of the new runs' speed to the old runs' (pairs
run back to back, in alternating order, so a busy machine slows both alike).

    python benchmarks/training_compare.py --data-dir ../shared/data            # 8 steps x 8, 3 pairs
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import tempfile
from pathlib import Path

from _common import data_source, embedded_model, matmul_gflops, params_of
from training import examples_for


def old_weighted_nll(logits, input_ids, weights):
    """``harness.model.examples.weighted_nll`` before issue 36: the last position's logits cut off."""
    import torch

    logits = logits[:, :-1].float()
    nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), input_ids[:, 1:].reshape(-1), reduction="none"
    ).view_as(input_ids[:, 1:])
    w = weights[:, 1:].to(nll.dtype)
    return (w * nll).sum(), w.sum()


def old_adamw(params, budget):
    """The optimiser before issue 36: torch's default AdamW (on a CPU, a loop over the parameters)."""
    import torch

    return torch.optim.AdamW(params, lr=budget.learning_rate, weight_decay=budget.weight_decay)


# the trainer's code before issue 36, put back for the old runs
OLD = {"fast_lora": lambda model, fused=None: contextlib.nullcontext(), "weighted_nll": old_weighted_nll,
       "packable": lambda model: False, "adamw": old_adamw}


def run(model, tokenizer, examples, args, new: bool) -> dict:
    import harness.model.training as training
    from harness.config.settings import Budget, LoRASettings

    budget = Budget(steps=args.steps, batch_size=args.batch_size, learning_rate=2e-4, max_length=args.max_length,
                    save_every=0)
    kept = {name: getattr(training, name) for name in OLD}
    if not new:
        for name, old in OLD.items():
            setattr(training, name, old)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            stats = training.train(copy.deepcopy(model), tokenizer, examples, budget, LoRASettings(), Path(tmp), seed=0,
                                   label="new" if new else "old").stats
    finally:
        for name, value in kept.items():
            setattr(training, name, value)
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()

    _, model, tokenizer = embedded_model()
    n_params = params_of(model)
    examples = examples_for(data_source(args.data_dir), args.steps * args.batch_size, seed=0)
    runs: dict[bool, list] = {False: [], True: []}
    for repeat in range(args.repeats):
        for new in (False, True) if repeat % 2 == 0 else (True, False):
            peak = matmul_gflops(seconds=1.0)
            stats = run(model, tokenizer, examples, args, new)
            rate = stats["flops"]["steps"]["total"] / stats["wall_s"] / 1e9
            runs[new].append(stats)
            print(f"{'new' if new else 'old'}: {stats['total_tokens']} tokens ({100 * stats['padding_share']:.1f}% "
                  f"padding) in {stats['wall_s']:.1f}s = {stats['total_tokens'] / stats['wall_s']:.1f} tok/s; "
                  f"{stats['flops']['steps']['total'] / stats['total_tokens'] / n_params:.2f} FLOPs/param/token, "
                  f"{rate:.0f} GFLOP/s = {100 * rate / peak:.1f}% of the 1024^3 peak ({peak:.0f} GFLOP/s)", flush=True)
    old, new = runs[False][0], runs[True][0]
    worst = max(abs(a - b) / abs(a) for a, b in zip(old["losses"], new["losses"]))
    for step, (a, b) in enumerate(zip(old["losses"], new["losses"])):
        print(f"  step {step}: old {a:.9f}  new {b:.9f}")
    same_flops = all(o["flops"]["steps"] == n["flops"]["steps"] for o, n in zip(runs[False], runs[True]))
    ratios = [o["wall_s"] / n["wall_s"] for o, n in zip(runs[False], runs[True])]
    print(f"max relative per-step loss difference {worst:.2e}; FLOPs counted {'identical' if same_flops else 'DIFFERENT'}")
    print(f"speed ratio new / old: median {statistics.median(ratios):.2f}x over {len(ratios)} pairs "
          f"({', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
