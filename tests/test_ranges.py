"""Every numeric option declares its range (or why it has none), the range is what the one
check enforces, and the ranges that name the model's shape are read from its config.json and
weight headers without loading it (issue 37)."""

from __future__ import annotations

import dataclasses
import json
import types
import typing

import pytest

from harness.config.ranges import MODEL_SHAPE, check_ranges, declared_bounds
from harness.config.settings import Analysis, Budget, LoRASettings, RunConfig
from harness.errors import UserError
from harness.plugins import registry


def numeric(tp) -> type | None:
    """int or float for a field of that type, an optional one or a list or tuple of one; else None."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType, list, tuple):
        inner = [numeric(a) for a in args if a is not type(None) and a is not Ellipsis]
        return inner[0] if len(inner) == 1 else None
    return tp if tp in (int, float) else None


def settings_classes() -> list[tuple[str, type]]:
    """(owner, dataclass) of every setting: the run's sections and every registered method's and suite's options."""
    found = [("", RunConfig), ("budget", Budget), ("lora", LoRASettings), ("analysis", Analysis)]
    for name, cls in sorted({**registry.methods(), **registry.suites()}.items()):
        found.append((name, cls.Options))
    return found


def numeric_fields() -> list[tuple[str, type, dataclasses.Field, type]]:
    out = []
    for owner, cls in settings_classes():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kind = numeric(hints[f.name])
            if kind is not None:
                out.append((owner, cls, f, kind))
    return out


def test_every_numeric_option_declares_a_range_or_why_it_has_none():
    fields_ = numeric_fields()
    assert len(fields_) > 60  # the walk reaches every method and suite (and their generation limits)
    missing = [f"{owner or 'run'}.{f.name}" for owner, _, f, _ in fields_
               if not declared_bounds(f) and not f.metadata.get("why_no_range")]
    assert not missing, f"declare a range (above/min/below/max) or why_no_range on: {', '.join(missing)}"
    for owner, _, f, _ in fields_:
        for _, bound in declared_bounds(f):
            assert isinstance(bound, (int, float)) or bound in MODEL_SHAPE, (owner, f.name, bound)


def _outside(kind: str, bound: float, integer: bool) -> float:
    step = 1 if integer else 0.5
    return {"above": bound, "min": bound - step, "below": bound, "max": bound + step}[kind]


@pytest.mark.parametrize("owner, cls, f, kind", numeric_fields(),
                         ids=lambda v: v.name if isinstance(v, dataclasses.Field) else None)
def test_each_declared_bound_is_enforced_in_one_sentence(owner, cls, f, kind):
    """A value just outside each bound (numbers now, model-shape names with a shape) is refused,
    naming the setting; the default is inside."""
    shape = {"num_hidden_layers": 4, "vocab_size": 100, "max_position_embeddings": 4096, "hidden_size": 64}
    default = cls()
    check_ranges(default, owner)
    listed = typing.get_origin(typing.get_type_hints(cls)[f.name]) in (list, tuple)
    for bound_kind, bound in declared_bounds(f):
        value = _outside(bound_kind, shape[bound] if isinstance(bound, str) else bound, kind is int)
        bad = dataclasses.replace(default, **{f.name: [value] if listed else value})
        name = f"{owner}.{f.name}" if owner else "--" + f.name.replace("_", "-")
        with pytest.raises(UserError) as refused:
            check_ranges(bad, owner, shape)
        message = str(refused.value)
        assert message.startswith(f"{name} must be ") and message.endswith(f", got {value:g}.") and "\n" not in message
        if isinstance(bound, str):
            assert f"(the model's {bound})" in message
            check_ranges(bad, owner)  # a bound on the model's shape waits for the shape


def test_range_texts():
    from harness.config.ranges import range_text

    assert range_text([("above", 0, "")]) == "positive"
    assert range_text([("min", 0, "")]) == "0 or more"
    assert range_text([("min", 0, ""), ("max", 100, "")]) == "between 0 and 100"
    assert range_text([("min", 0, ""), ("below", 1, "")]) == "at least 0 and below 1"
    assert range_text([("above", 0, ""), ("max", 512, " (the model's max_position_embeddings)")]) == \
        "positive and at most 512 (the model's max_position_embeddings)"


def test_a_model_shape_is_read_from_its_config_and_weight_headers(tiny_checkpoint, tmp_path):
    from harness.model.shape import model_shape

    shape = model_shape(str(tiny_checkpoint))
    assert {k: shape[k] for k in MODEL_SHAPE} == {"num_hidden_layers": 2, "vocab_size": 381, "max_position_embeddings": 512,
                                                  "hidden_size": 32}
    assert shape["modules"] == ["down_proj", "embed_tokens", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    # GPT-2's names, a multimodal config's text_config; only pickled weights: no module list (a .bin is never opened)
    other = tmp_path / "gpt2ish"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 12, "n_positions": 1024, "n_embd": 768,
                                                   "text_config": {"vocab_size": 50257}}))
    (other / "pytorch_model.bin").write_bytes(b"\x80\x04not opened")
    assert model_shape(str(other)) == {"num_hidden_layers": 12, "vocab_size": 50257, "max_position_embeddings": 1024,
                                       "hidden_size": 768}
    assert model_shape(str(tmp_path / "nowhere")) is None
    assert model_shape("someone/not-in-the-local-cache") is None


def test_a_dry_run_without_the_models_config_says_when_shape_ranges_are_checked(monkeypatch, tmp_path):
    """An embedded model not converted yet: its shape is unknown to a dry run, which says so (the real run checks it
    once it has the model, before any compute)."""
    from typer.testing import CliRunner

    from harness.cli import app

    monkeypatch.setenv("RADIS_BENCH_MODELS", str(tmp_path / "models"))
    result = CliRunner().invoke(app, ["run", "--dry-run", "--methods", "freeze", "--suites", "translation",
                                      "--set", "freeze.k=99", "--out", str(tmp_path / "run")], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "the model's config.json is not local yet (smollm2-135m)" in result.output
