"""The one module a method or a suite imports: everything a plugin author needs from the engine.

A **method** (``Method``) says what data and loss it trains on; the engine owns how (one
trainer, one generator, one budget). A **suite** (``Suite``) declares what it reads, asks
and reports, and scores one model. Both are registered as entry points (``radis_bench.methods``,
``radis_bench.suites``) or with ``register_method`` / ``register_suite``; CONTRIBUTING.md shows
a complete example of each. Names not here are the engine's own and may change.
"""

from __future__ import annotations

from harness.data.records import LANGUAGES, Direction, HarmfulPrompt, Instruction, TranslationPair, parse_directions
from harness.data.sources import DataSet, load_harmful, load_instructions, read_records, sample
from harness.errors import UserError, interruption
from harness.intervals import bootstrap_ci, bootstrap_ci_of
from harness.model.comet import CometScorer, CometUnavailable, check_comet, comet_checkpoint, comet_label
from harness.model.examples import collate, tokenise_example, weighted_nll
from harness.model.generation import Generator
from harness.model.onpolicy import TrainingStep, WeightSnapshot
from harness.model.prefill import teacher_forced_states
from harness.model.loading import check_model, load_model, looks_like_path, resolve_model
from harness.model.prompts import (
                                   EXTRACTION_RULES,
                                   end_of_turn_ids,
                                   extract_translation,
                                   render_chat,
                                   request_ids,
                                   translation_prompt,
                                   turn_end_tokens,
                                   user_turn,
)
from harness.paths import cache_dir, check_file, check_folder
from harness.plugins.method import Method, MethodContext, Segment, TrainingExample
from harness.plugins.options import NoOptions, generation_limit
from harness.plugins.registry import data_set, register_method, register_suite
from harness.plugins.requests import Decoding, Output, Request
from harness.plugins.suite import ItemStats, Metric, MetricSpec, NotScored, Suite, SuiteContext, SuiteResult
from harness.progress import progress_bar, warn
from harness.store import CacheDB, write_atomic

__all__ = [
    "LANGUAGES", "Direction", "HarmfulPrompt", "Instruction", "TranslationPair", "parse_directions",
    "DataSet", "load_harmful", "load_instructions", "read_records", "sample",
    "UserError", "interruption",
    "bootstrap_ci", "bootstrap_ci_of",
    "CometScorer", "CometUnavailable", "check_comet", "comet_checkpoint", "comet_label",
    "check_model", "load_model", "looks_like_path", "resolve_model",
    "EXTRACTION_RULES", "end_of_turn_ids", "extract_translation", "render_chat", "request_ids", "translation_prompt",
    "turn_end_tokens", "user_turn",
    "collate", "tokenise_example", "weighted_nll", "Generator", "TrainingStep", "WeightSnapshot", "teacher_forced_states",
    "cache_dir", "check_file", "check_folder",
    "Method", "MethodContext", "Segment", "TrainingExample",
    "NoOptions", "generation_limit",
    "data_set", "register_method", "register_suite",
    "Decoding", "Output", "Request",
    "ItemStats", "Metric", "MetricSpec", "NotScored", "Suite", "SuiteContext", "SuiteResult",
    "progress_bar", "warn",
    "CacheDB", "write_atomic",
]
