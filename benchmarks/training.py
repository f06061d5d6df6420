"""Training throughput: radis-bench's trainer vs TRL's SFTTrainer at equal settings.

Same embedded model (fp32), same LoRA (r16, alpha 32, every linear layer), same batch
size, maximum length, optimiser steps, learning-rate schedule and data: ``steps x batch``
ALMA de->en pairs as prompt -> reference examples, so both train exactly one epoch over
the same examples (in their own orders). Prints trained tokens/s (non-padding tokens
through forward and backward) of each, the ratio, padding share and peak memory, and the
share of the machine's limit: the FLOPs each run needed (counted from the model's shape by
``harness.model.compute``: a frozen base with LoRA adapters, so input gradients but no weight
gradients for the frozen matrices; attention and the vocabulary head included) per second,
against the peak fp32 matmul rate (1024x1024 @ 1024x1024, 3 warm-up products, then 3 s, at
torch's thread count) and against the rate of the model's own projection shapes.

    python benchmarks/training.py                       # 16 steps x 8
    python benchmarks/training.py --steps 8 --batch-size 8
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import data_source, embedded_model, matmul_gflops, params_of, peak_rss, shape_gflops


def examples_for(data, n, seed):
    from harness.data.records import parse_directions
    from harness.data.sources import sample
    from harness.plugins.method import Segment, TrainingExample
    from harness.model.prompts import translation_prompt, user_turn

    (direction,) = parse_directions("de-en")
    pairs = sample(data.translation(direction, "train"), n, seed)
    return [TrainingExample(user_turn(translation_prompt(p)), [Segment(p.reference)]) for p in pairs]


def run_harness(model, tokenizer, examples, args, lora):
    from harness.config.settings import Budget
    from harness.model.training import train

    budget = Budget(steps=args.steps, batch_size=args.batch_size, learning_rate=2e-4, max_length=args.max_length, save_every=0)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = train(model, tokenizer, examples, budget, lora, Path(tmp), seed=0, label="radis-bench trainer")
        seconds = time.perf_counter() - start
    s = result.stats
    return {"tokens": s["total_tokens"], "padded": s["padded_tokens"], "seconds": seconds, "loss": s["losses"][-1],
            "flops": s["flops"]["steps"]["total"]}


def run_trl(model, tokenizer, examples, args, lora):
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from harness.model.compute import Meter, install, metering
    from harness.model.prompts import render_chat

    rows = [{"prompt": render_chat(tokenizer, e.messages), "completion": e.response[0].text} for e in examples]
    counts = {"tokens": 0, "padded": 0}
    with tempfile.TemporaryDirectory() as tmp:
        config = SFTConfig(
            output_dir=tmp, per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1,
            max_steps=args.steps, learning_rate=2e-4, lr_scheduler_type="cosine", warmup_ratio=0.1, weight_decay=0.0,
            max_grad_norm=1.0, max_length=args.max_length, packing=False, completion_only_loss=True,
            gradient_checkpointing=False, bf16=False, fp16=False, use_cpu=True, seed=0, logging_steps=1,
            save_strategy="no", report_to=[], dataloader_num_workers=0, disable_tqdm=False,
        )
        peft_config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                 target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
        trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows),
                             processing_class=tokenizer, peft_config=peft_config)
        collate = trainer.data_collator

        def counting(features):
            batch = collate(features)
            real = int(batch["attention_mask"].sum()) if "attention_mask" in batch else sum(len(f["input_ids"]) for f in features)
            counts["tokens"] += real
            counts["padded"] += batch["input_ids"].numel() - real
            return batch

        trainer.data_collator = counting
        install(trainer.model)
        start = time.perf_counter()
        with metering(Meter()) as meter:  # the same count as the harness trainer's
            out = trainer.train()
        seconds = time.perf_counter() - start
    return {**counts, "seconds": seconds, "loss": out.training_loss, "flops": meter.total()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=224)
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()

    import torch

    from harness.config.settings import LoRASettings

    lora = LoRASettings()
    examples = examples_for(data_source(args.data_dir), args.steps * args.batch_size, seed=0)
    gflops = matmul_gflops()
    _, trl_model, tokenizer = embedded_model()
    _, our_model, _ = embedded_model()
    n_params = params_of(our_model)
    at_shapes = shape_gflops(our_model.config, rows=args.batch_size * 100)
    print(f"machine: {torch.get_num_threads()} torch threads; peak fp32 matmul {gflops:.0f} GFLOP/s (1024^3, 3 warm-up, 3 s); "
          f"at the model's shapes ({args.batch_size * 100} tokens at once) {at_shapes:.0f} GFLOP/s; {n_params / 1e6:.0f}M parameters")
    print(f"{len(examples)} examples, {args.steps} steps x {args.batch_size}, max length {args.max_length}, LoRA r{lora.r} on "
          f"{','.join(lora.target_modules)}")

    results = {}
    for name, fn, model in (("TRL SFTTrainer", run_trl, trl_model), ("radis-bench trainer", run_harness, our_model)):
        with peak_rss() as mem:
            r = fn(model, tokenizer, examples, args, lora)
        r["peak_increase_mb"] = mem["increase_mb"]
        r["rate"] = r["tokens"] / r["seconds"]
        r["padding"] = r["padded"] / max(r["padded"] + r["tokens"], 1)
        achieved = r["flops"] / r["seconds"] / 1e9
        results[name] = r
        print(f"{name}: {r['tokens']} tokens in {r['seconds']:.1f}s = {r['rate']:.1f} tok/s; needed {r['flops'] / r['tokens'] / n_params:.2f} "
              f"FLOPs/param/token, {achieved:.0f} GFLOP/s = {100 * achieved / gflops:.1f}% of the peak, "
              f"{100 * achieved / at_shapes:.1f}% of the model's shapes' rate; padding {100 * r['padding']:.1f}% of processed "
              f"tokens, peak +{r['peak_increase_mb']:.0f} MiB, final loss {r['loss']:.3f}")
    ours, theirs = results["radis-bench trainer"], results["TRL SFTTrainer"]
    print(f"  RATIO {ours['rate'] / theirs['rate']:.2f}x TRL SFTTrainer trained tokens/s; padding {100 * ours['padding']:.1f}% "
          f"(TRL {100 * theirs['padding']:.1f}%)")


if __name__ == "__main__":
    main()
