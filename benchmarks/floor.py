"""What one trained and evaluated model of the published configuration could cost at best on
this machine: each part of it at the best rate its own kind of work reaches here, measured in
this process, times the work the published configuration gives it (issue 36, point 4).

The parts and their rates:
- training: radis-bench's trainer on ``--train-steps`` x 8 ALMA de->en pairs at the published
  shapes (max length 256, LoRA r16 on every linear layer; 32 steps, the published budget),
  trained tokens/s after a two-step warm-up;
- the answers' prefill: prompts of 100 tokens after a shared 24-token start, 40 to a pass
  (4,000 tokens, the prefill's largest pass), ms per prompt token;
- the answers' decode steps: ``FastLlama.decode`` over a synthetic cache of ``--width`` columns
  (the published run's mean for vanilla, 210; longer answers make it wider) at 128 rows (the CPU
  cap) and 256 rows, ms per decoded token; the floor takes the better, as if every step of a
  call were full;
- the KL suites: their teacher-forced passes at the prefill's rate over the answer positions
  only (as if every prompt's keys and values came free from the answers' prefill), plus both
  output layers, both log-softmaxes and the divergences per position, ms per scored position.

Training takes the faster of this script's rate and the cold runs' fastest training. The work
(defaults: the published configuration's cold runs, benchmarks/README.md "Second round"):
trained tokens per method, the answers' 32,482 prompt tokens after the shared start and their
new tokens per method, the KL suites' 27,382 scored positions, ~1 s of scoring. Prints each
part's floor, their sum and the target (half of this morning's time).

    python benchmarks/floor.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import data_source, embedded_model, matmul_gflops
from training import examples_for

# per method: trained tokens, new answer tokens, this morning's seconds, the cold runs' seconds (A and B) and
# their fastest training (run A: 354.6 and 342.0 tok/s, faster than this script's trainer measure)
METHODS = {"vanilla": (31_739, 23_581, 471.8, (267.3, 275.4), 89.5), "radis": (44_556, 45_866, 589.2, (348.9, 364.3), 130.3)}


def best(f, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return min(times[1:] if len(times) > 1 else times)


def decode_ms_per_token(model, rows: int, width: int) -> float:
    import torch

    from harness.model.attention import use_decode_attention
    from harness.model.fast_llama import FastLlama
    from harness.model.kv_cache import GrowingCache, growing_layer_class

    use_decode_attention(model)
    fast, layer_class = FastLlama.of(model), growing_layer_class()
    cache = GrowingCache()
    for _ in fast.layers:
        keys, values = (torch.randn(rows, fast.kv_heads, width + 64, fast.head_dim) for _ in range(2))
        layer = layer_class()
        layer.lazy_initialization(keys)
        layer.replace(keys, values, length=width)
        cache.layers.append(layer)
    mask = torch.ones(rows, width + 1, dtype=torch.long)
    mask[:, 24:48] = 0  # a hole between the shared start and the rows' own tokens, as the Generator's
    tokens, positions = torch.randint(100, 40_000, (rows,)), torch.full((rows,), width - 24)

    def step():
        for layer in cache.layers:
            layer.length = width
        fast.decode(tokens, mask, positions, cache)

    return 1000 * best(step, 6) / rows


def prefill_ms_per_token(model, tokenizer) -> float:
    import torch

    from harness.model.fast_llama import FastLlama
    from harness.model.prefill import Prefill

    fast, prefill = FastLlama.of(model), Prefill(model, tokenizer)
    layout = (len(fast.layers), fast.kv_heads, fast.head_dim, fast.embed.dtype)
    generator = torch.Generator().manual_seed(0)
    prompts = [[1] * 24 + torch.randint(100, 40_000, (100,), generator=generator).tolist() for _ in range(40)]
    prefix = prefill.prefix(prompts)
    with torch.inference_mode():
        return 1000 * best(lambda: prefill.run(prompts, prefix, layout), 4) / (40 * 100)


def kl_ms_per_position(model, tokenizer, positions: int = 84, items: int = 24) -> float:
    import torch

    from harness.model.prompts import end_of_turn_ids
    from suites.retention import divergences

    head, stop = model.get_output_embeddings(), end_of_turn_ids(tokenizer)
    generator = torch.Generator().manual_seed(0)
    states = [torch.randn(2, positions, model.config.hidden_size, generator=generator) for _ in range(items)]

    def score():
        for pair in states:
            log_p, log_q = (torch.log_softmax(head(h).float(), dim=-1) for h in pair)
            divergences(log_p, log_q, stop)

    with torch.no_grad():
        return 1000 * best(score, 3) / (positions * items)


def training_tokens_per_s(model, tokenizer, data, steps: int) -> float:
    import copy

    from harness.config.settings import Budget, LoRASettings
    from harness.model.training import train

    examples = examples_for(data, steps * 8, seed=0)
    for run_steps in (2, steps):  # a process's first training runs slower: two steps to warm up, then the measure
        budget = Budget(steps=run_steps, batch_size=8, learning_rate=2e-4, max_length=256, save_every=0)
        with tempfile.TemporaryDirectory() as tmp:
            stats = train(copy.deepcopy(model), tokenizer, examples[: run_steps * 8], budget, LoRASettings(), Path(tmp),
                          seed=0, label="trainer").stats
    return stats["total_tokens"] / stats["wall_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--train-steps", type=int, default=32)
    ap.add_argument("--width", type=int, default=210, help="cache columns per decoded row")
    ap.add_argument("--prompt-tokens", type=int, default=32_482, help="the answers' prompt tokens after the shared start")
    ap.add_argument("--kl-positions", type=int, default=27_382, help="positions the KL suites score")
    ap.add_argument("--scoring-s", type=float, default=1.0)
    args = ap.parse_args()

    _, model, tokenizer = embedded_model()
    model.eval()
    peak = matmul_gflops()
    # training first: the decode measurement installs the single-query attention on the model
    train_rate = training_tokens_per_s(model, tokenizer, data_source(args.data_dir), args.train_steps)
    rates = {"decode128": decode_ms_per_token(model, 128, args.width), "decode256": decode_ms_per_token(model, 256, args.width),
             "prefill": prefill_ms_per_token(model, tokenizer), "kl": kl_ms_per_position(model, tokenizer)}
    print(f"peak (1024^3 fp32 matmul, this process): {peak:.0f} GFLOP/s")
    print(f"training {train_rate:.1f} tok/s; prefill {rates['prefill']:.3f} ms/token; decode at width {args.width}: "
          f"{rates['decode128']:.2f} ms/token at 128 rows, {rates['decode256']:.2f} at 256; KL output layers, "
          f"log-softmaxes and divergences {rates['kl']:.3f} ms/position")
    answers_prefill = args.prompt_tokens * rates["prefill"] / 1000
    kl = args.kl_positions * (rates["prefill"] + rates["kl"]) / 1000
    for method, (trained, new, before, cold, trained_s) in METHODS.items():
        parts = {"training": min(trained / train_rate, trained_s), "answers' prefill": answers_prefill,
                 "answers' decode (full steps)": new * min(rates["decode128"], rates["decode256"]) / 1000, "KL suites (prompts free)": kl,
                 "scoring": args.scoring_s}
        floor = sum(parts.values())
        print(f"{method}: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in parts.items())
              + f" -> floor {floor:.1f} s = {floor / before:.2f}x of this morning's {before:.1f} s (target "
              f"{before / 2:.1f} s; the cold runs: {cold[0]:.1f} and {cold[1]:.1f} s = {cold[0] / before:.2f}x and "
              f"{cold[1] / before:.2f}x)")


if __name__ == "__main__":
    main()
