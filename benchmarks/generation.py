"""Generation throughput: radis-bench's Generator vs per-example ``model.generate``.

Both decode the same prompts greedily with the embedded SmolLM2-135M-Instruct in this
process: the baseline the way most research scripts do it (one prompt at a time through
``model.generate``), then the harness generator (continuous batching over a KV cache,
finished sequences leave the batch at once). Prints new tokens/s of each, the ratio, the
share of outputs identical to the baseline's, and the share of this machine's limit
(2 FLOPs per parameter per generated token at the measured matmul GFLOP/s).

    python benchmarks/generation.py                 # 128 prompts, 64 new tokens
    python benchmarks/generation.py --prompts 32 --batch-sizes 16,32,64
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import data_source, embedded_model, matmul_gflops, mixed_prompts, params_of, peak_rss


def baseline(model, tokenizer, texts, max_new_tokens, stop_ids):
    import torch

    outputs, tokens = [], 0
    start = time.perf_counter()
    with torch.inference_mode():
        for i, text in enumerate(texts):
            enc = tokenizer(text, return_tensors="pt", add_special_tokens=False)
            out = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop_ids,
                pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0],
            )[0, enc["input_ids"].shape[1]:].tolist()
            while out and out[-1] in stop_ids:
                out.pop()
            tokens += len(out)
            outputs.append(tokenizer.decode(out, skip_special_tokens=True))
            if (i + 1) % 16 == 0:
                print(f"  baseline {i + 1}/{len(texts)} prompts, {tokens / (time.perf_counter() - start):.1f} tok/s", flush=True)
    return outputs, tokens, time.perf_counter() - start


def harness(model, tokenizer, fingerprint, messages, max_new_tokens, batch_size):
    from harness.generation import Decoding, GenerationCache, Generator, Request

    with tempfile.TemporaryDirectory() as tmp:
        gen = Generator(model, tokenizer, fingerprint, cache=GenerationCache(Path(tmp) / "g.sqlite"), batch_size=batch_size)
        start = time.perf_counter()
        outs = gen.generate([Request(m) for m in messages], Decoding(max_new_tokens=max_new_tokens), label="radis-bench Generator")
        seconds = time.perf_counter() - start
        gen.cache.db.close()
    return [o.text for o in outs], sum(o.new_tokens for o in outs), seconds, gen.current_batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-sizes", default="auto", help="comma-separated Generator batch sizes to try ('auto': the Generator's own choice)")
    ap.add_argument("--dtype", default="float32", help="model dtype for both sides (float32 or bfloat16)")
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()

    import torch

    from harness.prompts import end_of_turn_ids, render_chat

    spec, model, tokenizer = embedded_model(args.dtype)
    messages = [m for _, m in mixed_prompts(data_source(args.data_dir), args.prompts)]
    texts = [render_chat(tokenizer, m) for m in messages]
    stop_ids = end_of_turn_ids(tokenizer)
    gflops = matmul_gflops(dtype=args.dtype)
    limit = gflops * 1e9 / (2 * params_of(model))
    print(f"machine: {torch.get_num_threads()} torch threads, matmul {gflops:.0f} GFLOP/s ({args.dtype}) "
          f"-> limit {limit:.0f} tok/s for {params_of(model) / 1e6:.0f}M parameters")
    print(f"{len(texts)} prompts, greedy, max {args.max_new_tokens} new tokens, {args.dtype}")

    with peak_rss() as mem:
        base_out, base_tok, base_s = baseline(model, tokenizer, texts, args.max_new_tokens, stop_ids)
    base_rate = base_tok / base_s
    print(f"per-example generate: {base_tok} tokens in {base_s:.1f}s = {base_rate:.1f} tok/s "
          f"({100 * base_rate / limit:.1f}% of limit), peak +{mem['increase_mb']:.0f} MiB")

    sizes = [0 if b == "auto" else int(b) for b in args.batch_sizes.split(",")]  # 0: the Generator chooses
    for bs in sizes:
        with peak_rss() as mem:
            out, tok, secs, used = harness(model, tokenizer, spec.fingerprint, messages, args.max_new_tokens, bs)
        rate = tok / secs
        same = sum(a == b for a, b in zip(out, base_out)) / len(out)
        print(f"radis-bench Generator (batch {'auto: ' if not bs else ''}{used}): {tok} tokens in {secs:.1f}s = {rate:.1f} tok/s "
              f"({100 * rate / limit:.1f}% of limit), peak +{mem['increase_mb']:.0f} MiB")
        print(f"  RATIO {rate / base_rate:.2f}x per-example generate; identical greedy outputs {100 * same:.1f}%")


if __name__ == "__main__":
    main()
