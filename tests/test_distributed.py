"""Multi-process training through accelerate: two CPU processes (gloo) train exactly what one
process trains with the same global batch, and a batch that does not split evenly is refused."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.config.settings import RunConfig, validate
from harness.errors import UserError

ROOT = Path(__file__).parent.parent

SCRIPT = '''
import json, sys
from transformers import AutoModelForCausalLM, AutoTokenizer
from harness.config.settings import Budget, LoRASettings
from harness.errors import UserError
from harness.plugins.method import Segment, TrainingExample
from harness.model.prompts import user_turn
from harness.model.training import train

checkpoint, workdir = sys.argv[1], sys.argv[2]
model = AutoModelForCausalLM.from_pretrained(checkpoint)
tokenizer = AutoTokenizer.from_pretrained(checkpoint)
examples = [
    TrainingExample(user_turn(f"Translate: Das Haus Nummer {i} ist {'sehr ' * (i % 3)}groß."), [Segment(f"House {i} is big.")])
    for i in range(7)
]
budget = Budget(steps=5, batch_size=4, grad_accum=1, learning_rate=1e-2, warmup_ratio=0.2, save_every=2, max_length=96)
result = train(model, tokenizer, examples, budget, LoRASettings(r=4), workdir, seed=1)
try:  # 3 examples cannot be split between 2 processes
    train(AutoModelForCausalLM.from_pretrained(checkpoint), tokenizer, examples, Budget(steps=1, batch_size=3), LoRASettings(r=4), workdir + "-odd", seed=1)
    print("ODD-BATCH: accepted", flush=True)
except UserError as err:
    # one write per line: the two processes share the pipe, and lines must not interleave
    sys.stdout.write(f"ODD-BATCH: {err}\\n")
    sys.stdout.flush()
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args, tmp_path):
    # CPU processes talking over gloo on localhost, whatever accelerators the machine has
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_two_processes_train_like_one(tiny_checkpoint, tmp_path):
    script = tmp_path / "train_script.py"
    script.write_text(SCRIPT)
    one = _run([sys.executable, str(script), str(tiny_checkpoint), str(tmp_path / "one")], tmp_path)
    # `accelerate launch --cpu` would go through mpirun; --multi_gpu without GPUs runs torchrun with gloo
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port())]
    two = _run(launch + [str(script), str(tiny_checkpoint), str(tmp_path / "two")], tmp_path)
    assert "ODD-BATCH: --batch-size (3) must be divisible by grad_accum (1) x processes (1)" not in one
    assert "ODD-BATCH: accepted" in one
    assert two.count("ODD-BATCH: --batch-size (3) must be divisible by grad_accum (1) x processes (2)") == 2

    a = json.loads((tmp_path / "one" / "train_stats.json").read_text())
    b = json.loads((tmp_path / "two" / "train_stats.json").read_text())
    assert (a["processes"], b["processes"]) == (1, 2)
    assert len(a["losses"]) == len(b["losses"]) == 5
    assert b["losses"] == pytest.approx(a["losses"], rel=1e-4)
    for key in ("steps", "examples_seen", "target_tokens", "target_tokens_by_kind", "total_tokens", "lr"):
        assert a[key] == b[key], key

    from safetensors.torch import load_file

    wa = load_file(tmp_path / "one" / "final" / "adapter_model.safetensors")
    wb = load_file(tmp_path / "two" / "final" / "adapter_model.safetensors")
    assert wa.keys() == wb.keys() and wa
    for name in wa:
        assert torch.allclose(wa[name], wb[name], rtol=1e-4, atol=1e-6), name
    assert not (tmp_path / "two" / "state").exists()


def test_a_batch_that_does_not_split_between_the_processes_is_a_user_error(monkeypatch):
    cfg = RunConfig()
    cfg.budget.batch_size, cfg.budget.grad_accum = 6, 1
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(UserError, match=r"--batch-size \(6\) must be divisible by grad_accum \(1\) x processes \(4\)"):
        validate(cfg)
    monkeypatch.setenv("WORLD_SIZE", "3")
    validate(cfg)


def test_accelerate_launch_runs_the_benchmark_with_rank_0_reporting(tiny_checkpoint, tmp_path):
    out = tmp_path / "run"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port())]
    args = ["-m", "harness", "run", "--model", str(tiny_checkpoint), "--methods", "vanilla", "--suites", "translation",
            "--train-size", "8", "--eval-size", "2", "--steps", "2", "--batch-size", "4", "--out", str(out),
            "--set", "max_new_tokens=4", "--set", "translation.max_new_tokens=4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(launch + args, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("training: vanilla seed 0") == 1 and proc.stderr.count("Done in") == 1
    stats = json.loads((out / "models" / "vanilla" / "seed0" / "train_stats.json").read_text())
    assert stats["processes"] == 2 and stats["steps"] == 2
    assert (out / "results" / "vanilla-seed0" / "translation.json").exists()
