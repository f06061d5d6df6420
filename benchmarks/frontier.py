"""What an on-policy step and full fine-tuning cost against vanilla LoRA fine-tuning (issue 33).

Same embedded model (fp32), same ALMA de->en pairs as prompt -> reference examples, same
budget (``--steps`` optimiser steps x ``--batch-size`` sequences, max length 224, LoRA r16
on every linear layer), all in one process, one row after another, each on a freshly
loaded model:

- ``vanilla``: the baseline, SFT on the references;
- ``vanilla full``: the same with ``lora.kind=full`` (every weight trained, AdamW state for
  all 134.5M parameters);
- ``opsd``: each step samples one answer per prompt from the current weights and trains on
  the per-token divergence to the original shown the reference (one more forward per step);
- ``grpo``: each step samples ``group_size`` answers per prompt (batch / group prompts),
  scores them with sentence chrF and trains on the clipped policy-gradient loss with the
  KL to the original (one more forward per step for the reference model).

Prints seconds per optimiser step (the whole training call, setup and saving included, over its
steps; and the part spent sampling), tokens generated,
peak resident memory and the ratios against vanilla measured in the same run of the script.
Each row runs in a child process of its own, one after another on the same inputs: resident
memory never shrinks back within a process and the first training of a process pays one-time
costs, so rows sharing one process would not compare; the peak is the child's whole peak
(model loaded, trained, saved: what the machine must hold) and its increase over the loaded
model.

    python benchmarks/frontier.py                                   # 4 steps x 8, samples <= 64 tokens
    python benchmarks/frontier.py --steps 8 --max-new-tokens 128 --rows vanilla,opsd,grpo
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import data_source, embedded_model, matmul_gflops, peak_rss

ROWS = ("vanilla", "vanilla full", "opsd", "grpo")


def pairs_for(data, n: int, seed: int):
    from harness.data.records import parse_directions
    from harness.data.sources import sample

    (direction,) = parse_directions("de-en")
    return sample(data.translation(direction, "train"), n, seed)


def method_for(row: str, args):
    from harness.plugins import registry

    name = row.split()[0]
    settings = {"max_new_tokens": args.max_new_tokens} if name in ("opsd", "grpo") else {}
    if name == "grpo":
        settings["group_size"] = args.group_size
    return registry.get_method(name).from_settings(settings)


def run_row(row: str, pairs, args) -> dict:
    from harness.config.settings import Budget, LoRASettings
    from harness.model.training import method_hooks, train
    from harness.plugins.method import MethodContext

    _, model, tokenizer = embedded_model()
    method = method_for(row, args)
    budget = Budget(steps=args.steps, batch_size=args.batch_size, learning_rate=2e-4, max_length=args.max_length, save_every=0)
    lora = LoRASettings(kind="full" if row.endswith("full") else "lora")
    ctx = MethodContext(pairs=pairs, original=None, data=None, budget=budget, seed=0)
    examples = method.build_training_examples(ctx)
    with tempfile.TemporaryDirectory() as tmp, peak_rss() as mem:
        start = time.perf_counter()
        result = train(model, tokenizer, examples, budget, lora, Path(tmp), seed=0, label=row, **method_hooks(method))
        seconds = time.perf_counter() - start
    s = result.stats
    peak = max(mem["peak_mb"], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # Linux: KiB
    return {"seconds": seconds, "per_step": seconds / s["steps"], "sampling_s": s.get("sampling_s", 0.0),
            "generated": s.get("generated_tokens", 0), "trained_tokens": s["total_tokens"], "trainable": s["trainable_params"],
            "peak_mb": peak, "increase_mb": peak - mem["start_mb"], "loss": s["losses"][-1]}


def in_child(row: str) -> dict:
    """``row`` measured in a fresh process running this script (its last stdout line is the result)."""
    args = [a for a in sys.argv[1:]]
    done = subprocess.run([sys.executable, __file__, *args, "--child", row], stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=224)
    ap.add_argument("--max-new-tokens", type=int, default=64, help="longest sample of opsd and grpo")
    ap.add_argument("--group-size", type=int, default=4, help="grpo's answers per prompt")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of: {', '.join(ROWS)} (vanilla always runs)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)  # measure one row in this process
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_row(args.child, pairs_for(data_source(args.data_dir), args.steps * args.batch_size, seed=0), args)))
        return
    rows = ["vanilla"] + [r.strip() for r in args.rows.split(",") if r.strip() and r.strip() != "vanilla"]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        ap.error(f"unknown rows {unknown}; use {', '.join(ROWS)}")

    import torch

    pairs = pairs_for(data_source(args.data_dir), args.steps * args.batch_size, seed=0)
    print(f"machine: {torch.get_num_threads()} torch threads, matmul {matmul_gflops():.0f} GFLOP/s; {len(pairs)} de-en pairs, "
          f"{args.steps} steps x {args.batch_size} sequences, max length {args.max_length}, samples <= {args.max_new_tokens} "
          f"tokens, grpo group {args.group_size}")
    results = {}
    for row in rows:
        r = results[row] = in_child(row)
        print(f"{row}: {r['per_step']:.2f} s/step ({r['seconds']:.1f} s, sampling {r['sampling_s']:.1f} s), "
              f"{r['trained_tokens']} trained tokens, {r['generated']} generated, {r['trainable'] / 1e6:.2f}M trainable, "
              f"peak RSS {r['peak_mb']:.0f} MiB (+{r['increase_mb']:.0f} MiB over the loaded model), final loss {r['loss']:.3f}",
              flush=True)
    base = results["vanilla"]
    for row, r in results.items():
        if row != "vanilla":
            print(f"  RATIO {row}: {r['per_step'] / base['per_step']:.2f}x vanilla's seconds per step, peak RSS "
                  f"{r['peak_mb'] / base['peak_mb']:.2f}x (increase {r['increase_mb']:.0f} vs {base['increase_mb']:.0f} MiB)")


if __name__ == "__main__":
    main()
