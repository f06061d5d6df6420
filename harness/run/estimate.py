"""A rough GPU-hours estimate for a run's plan, printed by ``run --dry-run``.

Cost model (stated, not fitted):
- training: 6 FLOPs per parameter per trained token (forward + backward), every token of
  every example counted (prompt too), ``steps x batch_size x average example length``;
- generation: 2 FLOPs per parameter per generated token, every answer counted at its
  generation limit (an upper bound: answers that end early cost less), prompts not counted;
- the FLOP rates below turn FLOPs into seconds. They are *effective* rates (6N or 2N
  FLOPs per token divided by measured seconds), so they absorb the utilisation; using
  them for another model size assumes the same utilisation at that size.
Not counted: COMET, judges (AlpacaEval, MT-Bench), lm-eval tasks, model loading, merging.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from harness.data.sources import sample
from harness.model.kv_cache import MAX_BATCH
from harness.plugins.method import MethodContext
from harness.plugins.suite import SuiteContext

# --- measured throughput --------------------------------------------------------------
# Source: benchmarks/gpu_throughput.py, run 2026-11-26 on one NVIDIA H200 (torch 2.11.0+cu130,
# transformers 5.x, peft, bfloat16), with a randomly initialised model of
# Mistral-7B-Instruct-v0.2's shape (7,241,732,096 parameters; speed does not depend on the weights):
#   LoRA r=16 on every linear layer, AdamW, micro-batch 8 x 512 tokens: 10,276 trained tokens/s;
#   model.generate, greedy with KV cache, 64-token prompts, 256 new tokens:
#     batch 32: 428 generated tokens/s; batch 128: 2,057 generated tokens/s.
# radis-bench's own generator (continuous batching) was not measured on the GPU; plain
# model.generate stands in for it. An H100 has about the same bf16 peak (its memory is slower).
MEASURED_PARAMS = 7_241_732_096
MEASURED_TRAIN_TOKENS_S = 10_276
MEASURED_GEN_TOKENS_S = {32: 428, 128: 2_057}  # by generation batch size
MEASURED_ON = "one NVIDIA H200, bf16, LoRA r=16 (benchmarks/gpu_throughput.py, 7.2B-parameter model)"

TRAIN_FLOPS_S = 6 * MEASURED_PARAMS * MEASURED_TRAIN_TOKENS_S  # ~4.5e14 effective (~56% of 790 TFLOP/s)

# Parameter counts of models named by the presets (from their model cards/configs).
KNOWN_PARAMS = {
    "mistralai/Mistral-7B-Instruct-v0.2": 7_241_732_096,
    "meta-llama/Llama-2-7b-chat-hf": 6_738_415_616,
    "smollm2-135m": 134_515_008,
}

CHARS_PER_TOKEN = 3.5  # heuristic for mixed cs/de/ru/zh/en text (English alone is about 4)
PROMPT_TOKENS = 40  # chat template + ALMA instruction around each source sentence


def trajectory_points(plan) -> int:
    """Checkpoints the selected trainings keep for their trajectories (``eval_every``; with a
    tokens or compute budget, counted at ``budget.steps``)."""
    every = plan.cfg.eval_every
    if not every:
        return 0
    return sum(len(range(every, plan.budgets[label].steps, every)) for cell, label, _ in plan.trained_units() if plan.selected(cell))


def gen_flops_s(batch_size: int) -> float:
    """Effective generation FLOP/s at the largest measured batch not above ``batch_size``."""
    sizes = sorted(MEASURED_GEN_TOKENS_S)
    usable = [b for b in sizes if b <= batch_size] or sizes[:1]
    return 2 * MEASURED_PARAMS * MEASURED_GEN_TOKENS_S[usable[-1]]


def params_from_config(config: dict) -> int | None:
    """Parameters of a decoder-only transformer from its config.json (Llama/Mistral layout)."""
    try:
        h, layers, inter, vocab = (int(config[k]) for k in ("hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size"))
        heads = int(config.get("num_attention_heads") or 1)
        kv = int(config.get("num_key_value_heads") or heads)
    except (KeyError, TypeError, ValueError):
        return None
    head_dim = int(config.get("head_dim") or h // heads)
    attention = h * heads * head_dim * 2 + h * kv * head_dim * 2
    per_layer = attention + 3 * h * inter + 2 * h
    embeddings = vocab * h * (1 if config.get("tie_word_embeddings") else 2)
    return layers * per_layer + embeddings + h


def model_params(name: str) -> tuple[int | None, str]:
    """(parameter count, where it came from) without downloading or loading weights."""
    if name in KNOWN_PARAMS:
        return KNOWN_PARAMS[name], "known"
    path = Path(name).expanduser()
    config_path = path / "config.json" if path.is_dir() else None
    if config_path is None and "/" in name:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name, "config.json")
            config_path = Path(cached) if isinstance(cached, str) else None
        except Exception:
            config_path = None
    if config_path is not None and config_path.exists():
        try:
            count = params_from_config(json.loads(config_path.read_text()))
        except (OSError, json.JSONDecodeError):
            count = None
        if count:
            return count, "from config.json"
    match = re.search(r"(\d+(?:\.\d+)?)\s*([bm])\b", Path(name).name.lower().replace("-", " ").replace("_", " "))
    if match:
        return int(float(match.group(1)) * (1e9 if match.group(2) == "b" else 1e6)), "from the name"
    return None, "unknown"


@dataclass
class Estimate:
    params: int | None
    params_source: str
    train_tokens: int
    gen_tokens: int
    train_hours: float | None
    gen_hours: float | None

    @property
    def hours(self) -> float | None:
        return None if self.train_hours is None else self.train_hours + self.gen_hours

    def line(self) -> str:
        tokens = f"{self.train_tokens / 1e6:,.1f}M tokens trained, {self.gen_tokens / 1e6:,.1f}M tokens generated (upper bound)"
        if self.hours is None:
            return f"GPU hours: unknown (model size unknown; {tokens})"
        return (f"GPU hours (estimate): ~{self.hours:,.1f} h on {MEASURED_ON.split(',')[0]}-class GPU: "
                f"training {self.train_hours:,.1f} h, generation {self.gen_hours:,.1f} h; {tokens}; "
                f"model {self.params / 1e9:.2f}B parameters ({self.params_source})")


def estimate(plan, sizes: dict, status: dict | None = None) -> Estimate:
    """Tokens to train and to generate, from the plan's declarations and the checked
    ``sizes`` (``Plan.check``), and the GPU hours they take: for the units ``status``
    (``harness.run.units.pending_units``) lists as to compute, every unit of the plan without it."""
    cfg = plan.cfg
    chars = pairs = 0
    for direction in plan.directions:
        row = sizes["pairs"].get(direction.name)
        if row:
            pairs += row["train_used"]
            chars += row.get("train_chars_used", 0)
    pair_tokens = PROMPT_TOKENS + (chars / pairs / CHARS_PER_TOKEN if pairs else 0)
    missing = sizes.get("missing", {})
    directions = [d for d in plan.directions if d.name not in missing]
    train_pairs = [p for d in directions for p in sample(plan.data.translation(d, "train"), cfg.train_size, cfg.data_seed)]
    if status is None:
        status = {"todo_train": [(label, seed) for _, label, seed in plan.trained_units()],
                  "todo_eval": {cell: list(plan.suites) for cell in plan.cells()}}
    train_tokens = gen_tokens = 0
    generated: set[str] = set()  # the original model writes each distinct request once (cached across seeds)
    for label, method in plan.methods.items():
        b, seeds = plan.budgets[label], [seed for other, seed in status["todo_train"] if other == label]
        limits = []
        for seed in seeds:
            if any(spec.name in missing for spec in method.uses_data()):
                continue
            for request, decoding in method.original_requests(MethodContext(train_pairs, None, plan.data, b, seed)):
                limits.append(decoding.max_new_tokens)
                key = json.dumps([request.messages, request.assistant_prefix, decoding.key()], sort_keys=True)
                if key not in generated:
                    generated.add(key)
                    gen_tokens += decoding.max_new_tokens
        extra = sum(limits) / len(limits) if limits and method.generation_in_target == "appended" else 0
        train_tokens += b.steps * b.batch_size * min(b.max_length, pair_tokens + extra) * len(seeds)
    # evaluation: every model to evaluate answers every planned item at its suite's generation limit
    for name, suite in plan.suites.items():
        models = sum(name in suites for suites in status["todo_eval"].values())
        if not models or any(spec.name in missing for spec in suite.uses_data()):
            continue
        ctx = SuiteContext(label="original", data=plan.data, directions=directions, config=cfg, size=cfg.suite_sizes.get(name))
        gen_tokens += sum(suite.planned_generations(ctx)) * models
        gen_tokens += sum(d.max_new_tokens for _, d in suite.original_requests(ctx))
        if name in cfg.trajectory:  # every checkpoint of a trajectory answers the suite too
            gen_tokens += sum(suite.planned_generations(ctx)) * trajectory_points(plan)
    params, source = model_params(cfg.model)
    if params is None:
        return Estimate(None, source, int(train_tokens), int(gen_tokens), None, None)
    train_hours = 6 * params * train_tokens / TRAIN_FLOPS_S / 3600

    gen_hours = 2 * params * gen_tokens / gen_flops_s(cfg.gen_batch_size or MAX_BATCH["cuda"]) / 3600
    return Estimate(params, source, int(train_tokens), int(gen_tokens), train_hours, gen_hours)
