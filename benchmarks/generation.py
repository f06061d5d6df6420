"""Generation throughput: radis-bench's Generator vs ``model.generate``, per example and batched.

All three decode the same prompts greedily with the embedded SmolLM2-135M-Instruct in this
process: the way most research scripts do it (one prompt at a time through
``model.generate``), the batched way a careful user writes it (length-sorted prompts,
left-padded batches through ``model.generate``, the best of a few batch sizes), then the
harness generator (continuous batching over a KV cache, finished sequences leave the batch
at once). Prints new tokens/s of each, the ratios, the share of outputs identical to the
per-example greedy ones, and the share of this machine's limit (2 FLOPs per parameter per
generated token at the measured matmul GFLOP/s; prefill is inside every timing).

    python benchmarks/generation.py                          # 128 prompts, 64 new tokens
    python benchmarks/generation.py --skip-per-example       # compare with batched generate's outputs instead
    python benchmarks/generation.py --prompts 32 --batch-sizes 16,32 --generate-batch-sizes 16,32
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _common import data_source, embedded_model, matmul_gflops, mixed_prompts, params_of, peak_rss


def _trim(ids: list[int], stop_ids) -> list[int]:
    """Generated ids up to (without) the first end-of-turn token."""
    for k, token in enumerate(ids):
        if token in stop_ids:
            return ids[:k]
    return ids


def _pad_id(tokenizer, stop_ids):
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]


def baseline(model, tokenizer, texts, max_new_tokens, stop_ids):
    """One prompt at a time through ``model.generate``."""
    import torch

    outputs, tokens = [], 0
    start = time.perf_counter()
    with torch.inference_mode():
        for i, text in enumerate(texts):
            enc = tokenizer(text, return_tensors="pt", add_special_tokens=False)
            out = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop_ids,
                pad_token_id=_pad_id(tokenizer, stop_ids),
            )[0, enc["input_ids"].shape[1]:].tolist()
            out = _trim(out, stop_ids)
            tokens += len(out)
            outputs.append(tokenizer.decode(out, skip_special_tokens=True))
            if (i + 1) % 32 == 0:
                print(f"  per-example {i + 1}/{len(texts)} prompts, {tokens / (time.perf_counter() - start):.1f} tok/s", flush=True)
    return outputs, tokens, time.perf_counter() - start


def batched_generate(model, tokenizer, texts, max_new_tokens, stop_ids, batch_size):
    """What a user writes for batches: prompts sorted by length, left-padded batches of
    ``batch_size`` through ``model.generate`` (each batch runs until its longest answer ends)."""
    import torch

    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    order = sorted(range(len(texts)), key=lambda i: -len(tokenizer(texts[i], add_special_tokens=False)["input_ids"]))
    outputs, tokens = [None] * len(texts), 0
    start = time.perf_counter()
    try:
        with torch.inference_mode():
            for b in range(0, len(order), batch_size):
                batch = order[b : b + batch_size]
                enc = tokenizer([texts[i] for i in batch], return_tensors="pt", padding=True, add_special_tokens=False)
                out = model.generate(
                    **enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop_ids,
                    pad_token_id=_pad_id(tokenizer, stop_ids),
                )[:, enc["input_ids"].shape[1]:].tolist()
                for i, ids in zip(batch, out):
                    ids = _trim(ids, stop_ids)
                    tokens += len(ids)
                    outputs[i] = tokenizer.decode(ids, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    return outputs, tokens, time.perf_counter() - start


def harness(model, tokenizer, fingerprint, messages, max_new_tokens, batch_size, fast=True):
    from harness.model.compute import Meter, metering
    from harness.plugins.requests import Decoding, Request
    from harness.model.generation import GenerationCache, Generator

    with tempfile.TemporaryDirectory() as tmp:
        gen = Generator(model, tokenizer, fingerprint, cache=GenerationCache(Path(tmp) / "g.sqlite"), batch_size=batch_size)
        gen.FAST_DECODE = fast
        start = time.perf_counter()
        outs = gen.generate([Request(m) for m in messages], Decoding(max_new_tokens=max_new_tokens), label="radis-bench Generator")
        seconds = time.perf_counter() - start
        with metering(Meter()) as meter:  # the workload: every prompt's prefill and every decode step, from the lengths
            gen.generate([Request(m) for m in messages], Decoding(max_new_tokens=max_new_tokens))  # from the cache: counts only
    return [o.text for o in outs], sum(o.new_tokens for o in outs), seconds, gen.current_batch, meter.total()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-sizes", default="auto", help="comma-separated Generator batch sizes to try ('auto': the Generator's own choice)")
    ap.add_argument("--generate-batch-sizes", default="16,32,64", help="batch sizes tried for batched model.generate (its best is the baseline)")
    ap.add_argument("--skip-per-example", action="store_true",
                    help="skip the slow per-example baseline; identical outputs are then counted against batched generate's")
    ap.add_argument("--also-transformers-path", action="store_true",
                    help="also time the Generator with its fast Llama decode path off (every step through model(...))")
    ap.add_argument("--save-outputs", default=None, help="write every side's outputs and timings to this JSON file")
    ap.add_argument("--dtype", default="float32", help="model dtype for every side (float32 or bfloat16)")
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()

    import torch

    from harness.model.prompts import end_of_turn_ids, render_chat

    spec, model, tokenizer = embedded_model(args.dtype)
    messages = [m for _, m in mixed_prompts(data_source(args.data_dir), args.prompts)]
    texts = [render_chat(tokenizer, m) for m in messages]
    stop_ids = end_of_turn_ids(tokenizer)
    gflops = matmul_gflops(dtype=args.dtype)
    limit = gflops * 1e9 / (2 * params_of(model))
    print(f"machine: {torch.get_num_threads()} torch threads, matmul {gflops:.0f} GFLOP/s ({args.dtype}) "
          f"-> limit {limit:.0f} tok/s for {params_of(model) / 1e6:.1f}M parameters")
    print(f"{len(texts)} prompts, greedy, max {args.max_new_tokens} new tokens, {args.dtype}")
    saved = {"gflops": gflops, "limit": limit}

    def share(out, ref):
        return 100 * sum(a == b for a, b in zip(out, ref)) / len(out)

    per_out = per_rate = None
    if not args.skip_per_example:
        with peak_rss() as mem:
            per_out, per_tok, per_s = baseline(model, tokenizer, texts, args.max_new_tokens, stop_ids)
        per_rate = per_tok / per_s
        saved["per_example"] = {"outputs": per_out, "tokens": per_tok, "seconds": per_s}
        print(f"per-example generate: {per_tok} tokens in {per_s:.1f}s = {per_rate:.1f} tok/s "
              f"({100 * per_rate / limit:.1f}% of limit), peak +{mem['increase_mb']:.0f} MiB")

    best = None
    for bs in [int(b) for b in args.generate_batch_sizes.split(",") if b.strip()]:
        with peak_rss() as mem:
            out, tok, secs = batched_generate(model, tokenizer, texts, args.max_new_tokens, stop_ids, bs)
        rate = tok / secs
        same = f"; identical to per-example {share(out, per_out):.1f}%" if per_out else ""
        print(f"batched generate (batch {bs}, length-sorted, left-padded): {tok} tokens in {secs:.1f}s = {rate:.1f} tok/s "
              f"({100 * rate / limit:.1f}% of limit), peak +{mem['increase_mb']:.0f} MiB{same}", flush=True)
        saved[f"batched_generate_{bs}"] = {"outputs": out, "tokens": tok, "seconds": secs}
        if best is None or rate > best[1]:
            best = (bs, rate, out)
    reference = per_out if per_out else (best[2] if best else None)
    what = "per-example" if per_out else f"batched generate (batch {best[0]})" if best else None

    sizes = [0 if b == "auto" else int(b) for b in args.batch_sizes.split(",")]  # 0: the Generator chooses
    runs = [(bs, False) for bs in sizes] * args.also_transformers_path + [(bs, True) for bs in sizes]
    for bs, fast in runs:
        with peak_rss() as mem:
            out, tok, secs, used, workload = harness(model, tokenizer, spec.fingerprint, messages, args.max_new_tokens, bs, fast)
        rate = tok / secs
        timings = [("per-example generate", saved["per_example"]["seconds"])] if per_out else []
        timings += [(f"batched generate (batch {k.rsplit('_', 1)[1]})", v["seconds"]) for k, v in saved.items()
                    if k.startswith("batched_generate_")]
        timings.append((f"radis-bench Generator (batch {used}{'' if fast else ', fast decode off'})", secs))
        print(f"  WORKLOAD {workload / 1e9:.0f} GFLOP (prefill + decode, counted from the lengths by harness.model.compute): "
              + "; ".join(f"{name} {100 * workload / s / 1e9 / gflops:.1f}% of the peak" for name, s in timings))
        path = "" if fast else ", fast decode off"
        saved[f"generator_{used}{'' if fast else '_transformers_path'}"] = {"outputs": out, "tokens": tok, "seconds": secs}
        print(f"radis-bench Generator (batch {'auto: ' if not bs else ''}{used}{path}): {tok} tokens in {secs:.1f}s = {rate:.1f} tok/s "
              f"({100 * rate / limit:.1f}% of limit), peak +{mem['increase_mb']:.0f} MiB")
        ratios = []
        if per_rate:
            ratios.append(f"{rate / per_rate:.2f}x per-example generate")
        if best:
            ratios.append(f"{rate / best[1]:.2f}x batched generate (batch {best[0]})")
        same = f"; identical greedy outputs {share(out, reference):.1f}% (vs {what})" if reference else ""
        print(f"  RATIO {', '.join(ratios) or '-'}{same}")
    if args.save_outputs:
        Path(args.save_outputs).write_text(json.dumps(saved, indent=1))


if __name__ == "__main__":
    main()
