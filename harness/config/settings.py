"""The run's settings as typed dataclasses, the single source of every setting, and the checks
of their values.

The same dataclasses are filled from CLI options and from a YAML/TOML ``--config`` file
(whose keys are the CLI option names with underscores; ``harness.config.parse``); the CLI
overrides the file, and its run options are generated from these fields and their help.
Method- and suite-specific settings live in each module's ``Options`` dataclass and are
given as ``method_options: {radis: {rationale_weight: 0.5}}`` or ``--set radis.rationale_weight=0.5``.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config.ranges import check_ranges
from harness.errors import UserError

DEFAULTS = Path(__file__).resolve().parent / "defaults.yaml"


@functools.lru_cache(maxsize=1)
def _read_defaults() -> dict:
    import yaml

    return yaml.safe_load(DEFAULTS.read_text(encoding="utf-8"))


def _defaults() -> dict:
    """The methods and suites a run compares unless told otherwise (a fresh copy)."""
    return {k: list(v) for k, v in _read_defaults().items()}


ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# What trains: a LoRA adapter (Hu et al. 2021), rank-stabilised LoRA (scale alpha/sqrt(r), Kalajdzievski 2023),
# DoRA (magnitude and direction, Liu et al. 2024), LoRA initialised from the principal singular vectors (PiSSA,
# Meng et al. 2024), all through peft, or every weight (full fine-tuning)
ADAPTER_KINDS = ("lora", "rslora", "dora", "pissa", "full")


@dataclass
class LoRASettings:
    r: int = field(default=16, metadata={"help": "LoRA rank.", "above": 0, "max": "hidden_size"})
    alpha: int = field(default=32, metadata={"help": "LoRA alpha (scale = alpha / r).", "above": 0})
    dropout: float = field(default=0.0, metadata={"help": "LoRA dropout.", "min": 0, "below": 1})
    target_modules: tuple[str, ...] = field(default=ALL_LINEAR, metadata={"help": "Module names that get adapters."})
    full_finetune: bool = field(default=False, metadata={"help": "Train all weights instead of a LoRA adapter (the old spelling of kind=full)."})
    kind: str = field(default="lora", metadata={"help": "What trains: lora, rslora, dora, pissa (peft's variants of the adapter) or full "
                                                        "(every weight)."})

    @property
    def adapter(self) -> str:
        """The adapter kind this trains with (``full_finetune`` is the old spelling of ``kind=full``)."""
        return "full" if self.full_finetune else self.kind


def lora_key(lora: LoRASettings) -> dict:
    """The adapter settings as unit keys hash them: ``kind`` is left out while it is the default (keys made
    before it existed stay valid), and ``kind=full`` hashes as its old spelling ``full_finetune``, so both
    spellings name one training."""
    out = dataclasses.asdict(lora)
    kind = out.pop("kind")
    if kind == "full":
        out["full_finetune"] = True
    elif kind != "lora":
        out["kind"] = kind
    return out


@dataclass
class Budget:
    """What every method gets: identical steps, batch, schedule, length and seed."""

    steps: int = field(default=8, metadata={"help": "Optimiser steps per method.", "above": 0})
    batch_size: int = field(default=8, metadata={"help": "Examples per optimiser step (micro-batch x accumulation).", "above": 0})
    grad_accum: int = field(default=1, metadata={"help": "Gradient accumulation micro-steps per optimiser step.", "above": 0})
    learning_rate: float = field(default=2e-4, metadata={"help": "Peak AdamW learning rate.", "above": 0})
    schedule: str = field(default="cosine", metadata={"help": "Learning-rate decay: cosine, linear or constant."})
    warmup_ratio: float = field(default=0.1, metadata={"help": "Share of steps with linear warm-up.", "min": 0, "below": 1})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay.", "min": 0})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm.", "min": 0})
    max_length: int = field(default=224, metadata={"help": "Maximum tokens per training example (prompt + response).", "above": 0,
                                                                "max": "max_position_embeddings"})
    equalise: str = field(default="steps", metadata={"help": "'steps' (same optimiser steps), 'tokens' (same target tokens) or 'compute' (same FLOPs, data building included)."})
    target_tokens: int | None = field(default=None, metadata={"help": "With equalise=tokens: target tokens per method (default: what vanilla trains on in `steps`).", "above": 0})
    save_every: int = field(default=8, metadata={"help": "Save resumable training state every N steps (0: never).", "min": 0})
    bf16: bool = field(default=False, metadata={"help": "bf16 mixed precision in training (accelerate mixed_precision='bf16')."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute activations in the backward pass: less memory, more time."})


DIRECTIONS = ("lower", "higher", "two-sided")
SPENDING = ("obrien_fleming", "pocock")
SECONDARY = ("holm", "bh")


@dataclass
class Analysis:
    """How the report draws claims (``harness.report.claims``): the pre-registered primary contrasts,
    the error rate they spend over the looks, the rule for every other contrast and the
    equivalence margins. A run writes it into its directory before the first unit."""

    primary: list = field(default_factory=list, metadata={"help": "Primary contrasts: [{a: ROW, b: ROW or original, metric: SUITE/METRIC, direction: lower, higher or two-sided}]."})
    seeds: int | None = field(default=None, metadata={"help": "Planned final seeds per side: a look's information fraction is its seeds / this.", "min": 1})
    looks: int | None = field(default=None, metadata={"help": "Planned number of looks, when no seed count is planned: look k is at information fraction k / this.", "min": 1})
    alpha: float = field(default=0.05, metadata={"help": "Error rate of each primary contrast over all its looks, and family-wise (or false-discovery) rate of the other contrasts.", "above": 0, "below": 1})
    spending: str = field(default="obrien_fleming", metadata={"help": "How a primary contrast spends alpha over its looks (Lan-DeMets): obrien_fleming or pocock."})
    secondary: str = field(default="holm", metadata={"help": "Adjustment of every other contrast of the report: holm (family-wise error) or bh (false discovery rate)."})
    margins: dict[str, float] = field(default_factory=dict, metadata={"help": "Equivalence margins by metric ('retention/kl' or 'kl'), replacing the suites' own; 0: no equivalence verdict."})
    note: str = field(default="", metadata={"help": "Where and when the plan was fixed, when that was before this run directory."})


@dataclass
class RunConfig:
    model: str = field(default="smollm2-135m", metadata={"help": "Embedded model name, hub id or local checkpoint path."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the checkpoint."})
    pairs: list[str] = field(default_factory=lambda: ["de-en"], metadata={"help": "Translation directions, e.g. de-en,en-de."})
    methods: list = field(
        default_factory=lambda: _defaults()["methods"],
        metadata={"help": "Methods to compare: names, variants 'LABEL:METHOD@option=value' or, in a config file, "
                          "{label, method, seeds, budget, lora, <option>: value} entries."},
    )
    suites: list[str] = field(
        default_factory=lambda: _defaults()["suites"],
        metadata={"help": "Evaluation suites (default: harness/config/defaults.yaml)."},
    )
    data_dir: str | None = field(default=None, metadata={"help": "Folder with the layout of shared/data; 'starter' (default) or 'hub'."})
    train_size: int | None = field(default=32, metadata={"help": "Training pairs per direction (seeded sample).", "above": 0})
    eval_size: int | None = field(default=12, metadata={"help": "Items per suite and direction (seeded sample).", "above": 0})
    suite_sizes: dict[str, int] = field(default_factory=dict, metadata={"help": "Items per suite where it differs from eval_size, e.g. {safety: 100}."})
    seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "Training seeds; every method runs once per seed.", "min": 0})
    data_seed: int = field(default=0, metadata={"help": "Seed of the train/eval subsamples (fixed across training seeds).", "min": 0})
    out: str | None = field(default=None, metadata={"help": "Run directory (default runs/<name>)."})
    title: str | None = field(default=None, metadata={"help": "Title of the run's leaderboard (default: from the run directory's name)."})
    generation_backend: str = field(default="auto", metadata={"help": "Generation backend: auto (vllm when CUDA and vllm are present, else transformers), transformers or vllm."})
    device: str = field(default="auto", metadata={"help": "Where models run: auto (a CUDA GPU when present, else the CPU), cpu or cuda."})
    dtype: str = field(default="auto", metadata={"help": "Weights' dtype: auto (bfloat16 on a GPU, float32 on a CPU), float32, bfloat16 or float16."})
    gen_batch_size: int = field(default=0, metadata={"help": "Sequences per generation batch; 0 chooses it from the device and memory.", "min": 0})
    max_new_tokens: int = field(default=128, metadata={"help": "Generation limit of every suite that sets none of its own (translations keep room for an appended rationale).",
                                                                       "above": 0, "max": "max_position_embeddings"})
    budget: Budget = field(default_factory=Budget)
    lora: LoRASettings = field(default_factory=LoRASettings)
    analysis: Analysis = field(default_factory=Analysis)
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict, metadata={"help": "Per-method settings."})
    suite_options: dict[str, dict[str, Any]] = field(default_factory=dict, metadata={"help": "Per-suite settings."})
    eval_every: int = field(default=0, metadata={"help": "Evaluate the training's checkpoints every N optimiser steps on the trajectory suites, as units of their own (0: only the final model).", "min": 0})
    trajectory_suites: list[str] = field(default_factory=list, metadata={"help": "Suites the checkpoints are evaluated on (default: translation, retention and task_kl where the run has them, else every suite of the run)."})
    log_with: str | None = field(default=None, metadata={"help": "Send training losses and trajectory metrics to one of accelerate's trackers (tensorboard, wandb, mlflow, ...), one tracker run per training unit, under <run>/logs (off by default)."})
    require_clean_code: bool = field(default=False, metadata={"help": "Refuse to compute any unit while radis-bench's source checkout has uncommitted changes (for published runs: every unit is then tied to a commit)."})
    sweep: dict[str, list] = field(
        default_factory=dict,
        metadata={"help": "Ablation grid: {'radis.rationale_weight': [0, 0.5, 1]} adds a variant per value (the product of "
                          "several axes of one method); budget.* and lora.* settings are sweepable too."},
    )

    @property
    def trajectory(self) -> list[str]:
        """The suites checkpoints are evaluated on (none without ``eval_every``)."""
        if not self.eval_every:
            return []
        return self.trajectory_suites or [s for s in self.suites if s in TRAJECTORY_DEFAULT] or list(self.suites)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self), default=list))


# accelerate's trackers (accelerate.tracking.LOGGER_TYPE_TO_CLASS) and the package each needs
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "comet_ml": "comet_ml", "aim": "aim",
            "clearml": "clearml", "dvclive": "dvclive", "swanlab": "swanlab", "trackio": "trackio"}
TRAJECTORY_DEFAULT = ("translation", "retention", "task_kl")  # judge-free, and the training task


def launched_processes() -> tuple[int, int]:
    """(rank, number of processes) under ``accelerate launch`` or torchrun; (0, 1) otherwise."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def validate(config: RunConfig) -> None:
    """Run-level settings: their declared ranges (``harness.config.ranges``) and what a range
    cannot say; the shared budget and adapter (``check_budget``, ``check_lora``)."""
    check_ranges(config, "")
    if not isinstance(config.suite_sizes, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in config.suite_sizes.values()):
        raise UserError(f"suite_sizes must map suite names to positive numbers of items, got {config.suite_sizes!r}.")
    if config.device not in ("auto", "cpu", "cuda"):
        raise UserError(f"device must be auto, cpu or cuda, got {config.device!r}.")
    if config.dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise UserError(f"dtype must be auto, float32, bfloat16 or float16, got {config.dtype!r}.")
    if not config.seeds:
        raise UserError("--seeds is empty; give at least one seed, e.g. --seeds 0.")
    if len(set(config.seeds)) != len(config.seeds):
        raise UserError(f"--seeds must be distinct numbers of at least 0, got {','.join(map(str, config.seeds))}.")
    if config.generation_backend not in ("auto", "transformers", "vllm"):
        raise UserError(f"generation_backend '{config.generation_backend}' is unknown; use auto, transformers or vllm.")
    if not config.methods:
        raise UserError("--methods is empty; name at least one method (see `radis-bench list`).")
    if config.eval_every < 0:
        raise UserError(f"eval_every must be 0 (off) or a positive number of steps, got {config.eval_every}.")
    unknown = [s for s in config.trajectory_suites if s not in config.suites]
    if unknown:
        raise UserError(f"trajectory_suites names {unknown[0]}, which is not one of the run's suites ({', '.join(config.suites)}).")
    if config.log_with is not None:
        if config.log_with not in TRACKERS:
            raise UserError(f"log_with '{config.log_with}' is not one of accelerate's trackers ({', '.join(TRACKERS)}).")
        if importlib.util.find_spec(TRACKERS[config.log_with]) is None:
            raise UserError(f"log_with {config.log_with} needs the {TRACKERS[config.log_with]} package; install it "
                            f"(pip install {TRACKERS[config.log_with]}) or leave log_with out.")
    check_budget(config.budget, "budget")
    check_lora(config.lora, "lora")
    check_analysis(config.analysis, "analysis")


def check_budget(b: Budget, where: str, shape: dict | None = None) -> None:
    """A budget's ranges and how its batch splits; ``where`` names it (``budget``, or a
    variant's ``method 'fast': budget``); ``shape``: the model's, for bounds that name it."""
    check_ranges(b, where, shape)
    if b.batch_size % b.grad_accum:
        raise UserError(f"{where}: batch_size ({b.batch_size}) must be divisible by grad_accum ({b.grad_accum}).")
    processes = launched_processes()[1]
    if b.batch_size % (b.grad_accum * processes):
        raise UserError(
            f"{where}: --batch-size ({b.batch_size}) must be divisible by grad_accum ({b.grad_accum}) x processes ({processes}); "
            "the global batch is split evenly between the processes."
        )
    if b.schedule not in ("cosine", "linear", "constant"):
        raise UserError(f"{where}: schedule '{b.schedule}' is unknown; use cosine, linear or constant.")
    if b.equalise not in ("steps", "tokens", "compute"):
        raise UserError(f"{where}: equalise (--budget) '{b.equalise}' is unknown; use steps, tokens or compute.")


def check_on_policy_budget(b: Budget, per_prompt: int, where: str) -> None:
    """The budget of a method that trains on its own samples (``Method.sample_step``)."""
    if b.equalise in ("tokens", "compute"):
        raise UserError(f"{where}: budget.equalise={b.equalise} cannot set the steps of a method that trains on its own samples "
                        "(their tokens are not known before training); use budget.equalise=steps for it.")
    if per_prompt < 1 or b.batch_size % per_prompt:
        raise UserError(f"{where}: budget.batch_size ({b.batch_size}) must be divisible by the {per_prompt} sequences the "
                        "method samples per prompt.")


def check_lora(lora: LoRASettings, where: str, shape: dict | None = None) -> None:
    """The adapter's ranges and kind; with the model's ``shape``, that it names modules the model has
    (``modules``: the last parts of its weights' names, when its weight files say)."""
    check_ranges(lora, where, shape)
    if lora.kind not in ADAPTER_KINDS:
        raise UserError(f"{where}: kind '{lora.kind}' is unknown; use one of {', '.join(ADAPTER_KINDS)}.")
    if lora.full_finetune and lora.kind not in ("lora", "full"):
        raise UserError(f"{where}: full_finetune (the old spelling of kind=full) contradicts kind={lora.kind}; set kind alone.")
    full = lora.adapter == "full"
    if not lora.target_modules and not full:
        raise UserError(f"{where}: target_modules is empty; name the modules that get adapters, e.g. q_proj,v_proj.")
    modules = (shape or {}).get("modules")
    if modules and not full and not set(lora.target_modules) & set(modules):
        raise UserError(f"{where}.target_modules names no module of this model ({', '.join(lora.target_modules)}); "
                        f"name some of: {', '.join(sorted(modules))}.")
    unknown = [m for m in lora.target_modules if m.rsplit(".", 1)[-1] not in modules] if modules and not full else []
    if unknown and tuple(lora.target_modules) != tuple(ALL_LINEAR):  # the default names every family's; a given list is meant whole
        raise UserError(f"{where}.target_modules names {', '.join(unknown)}, which this model does not have (it would get no "
                        f"adapter); name some of: {', '.join(sorted(modules))}.")


def check_analysis(a: Analysis, where: str) -> None:
    """The plan's own syntax; its rows and metrics are checked against the run's (``harness.report.claims``)."""
    if not isinstance(a.primary, list):
        raise UserError(f"{where}: primary must be a list of contrasts {{a, b, metric, direction}}.")
    for i, contrast in enumerate(a.primary, 1):
        if not isinstance(contrast, dict) or not {"a", "b", "metric"} <= set(contrast) or set(contrast) - {"a", "b", "metric", "direction"}:
            raise UserError(f"{where}: primary contrast {i} must be a mapping with the keys a, b, metric and optionally direction, "
                            f"got {contrast!r}.")
        if not all(isinstance(contrast[k], str) and contrast[k] for k in ("a", "b", "metric")) or contrast["a"] == contrast["b"]:
            raise UserError(f"{where}: primary contrast {i} needs two different row labels a and b and a metric, got {contrast!r}.")
        parts = contrast["metric"].split("/")
        if len(parts) < 2 or not all(parts):
            raise UserError(f"{where}: primary contrast {i} names metric '{contrast['metric']}'; write it SUITE/METRIC as in the "
                            "leaderboard's columns, e.g. retention/kl or translation/de-en/chrf++.")
        if contrast.get("direction", "two-sided") not in DIRECTIONS:
            raise UserError(f"{where}: primary contrast {i} has direction '{contrast['direction']}'; use {', '.join(DIRECTIONS)}.")
    if a.primary and (a.seeds is None) == (a.looks is None):
        raise UserError(f"{where}: give exactly one of seeds (planned final seeds per side) and looks (planned number of looks), "
                        "so that each look's share of the information is known.")
    check_ranges(a, where)
    if a.spending not in SPENDING:
        raise UserError(f"{where}: spending '{a.spending}' is unknown; use {' or '.join(SPENDING)}.")
    if a.secondary not in SECONDARY:
        raise UserError(f"{where}: secondary '{a.secondary}' is unknown; use holm (family-wise error) or bh (false discovery rate).")
    if not isinstance(a.margins, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in a.margins.values()):
        raise UserError(f"{where}: margins must map metric names to numbers of at least 0, got {a.margins!r}.")
