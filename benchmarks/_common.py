"""Shared pieces of the benchmark scripts: the embedded model, real prompts, a peak-memory
sampler and this machine's matmul throughput. Each script runs its baseline and
radis-bench in one process on the same inputs and prints ratios."""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def embedded_model(dtype: str = "float32"):
    from harness.model.loading import load_model, resolve_model

    spec = resolve_model("smollm2-135m")
    model, tokenizer = load_model(spec, dtype=dtype)
    model.requires_grad_(False)
    return spec, model, tokenizer


def data_source(data_dir: str | None):
    from harness.data.sources import DataSource
    from harness.paths import default_data_dir

    return DataSource.open(data_dir or default_data_dir())


def mixed_prompts(data, n: int, seed: int = 0):
    """Half WMT22 de->en translation prompts, half AlpacaEval instructions: (kind, messages)."""
    from harness.data.records import parse_directions
    from harness.data.sources import sample
    from harness.model.prompts import translation_prompt, user_turn
    from harness.plugins.registry import data_set

    (direction,) = parse_directions("de-en")
    pairs = sample(data.translation(direction, "test"), n - n // 2, seed)
    instructions = sample(data.general(data_set("alpaca_eval")), n // 2, seed)
    return [("translation", user_turn(translation_prompt(p))) for p in pairs] + [
        ("instruction", user_turn(i.prompt)) for i in instructions
    ]


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@contextmanager
def peak_rss():
    """Peak resident memory (MiB) of this process while the block runs, sampled every 20 ms;
    yields a dict filled in on exit with the peak and the increase over the start."""
    out = {"start_mb": rss_mb(), "peak_mb": rss_mb()}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            out["peak_mb"] = max(out["peak_mb"], rss_mb())
            time.sleep(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        stop.set()
        thread.join()
        out["peak_mb"] = max(out["peak_mb"], rss_mb())
        out["increase_mb"] = out["peak_mb"] - out["start_mb"]


def matmul_gflops(n: int = 1024, dtype: str = "float32", seconds: float = 3.0) -> float:
    """Sustained dense matmul throughput of this machine with torch's current thread count."""
    import torch

    dt = getattr(torch, dtype)
    a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
    for _ in range(3):
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - start) / 1e9


def shape_gflops(config, rows: int, seconds: float = 3.0) -> float:
    """Dense matmul throughput at the model's own shapes: one layer's projections (query, key,
    value, output, the three MLP matrices) and the vocabulary head on ``rows`` tokens at once,
    weighted by their FLOPs as a forward pass weighs them."""
    import torch

    from harness.model.compute import Shape

    s = Shape.of(config)
    q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    pairs = [(s.hidden, q), (s.hidden, kv), (s.hidden, kv), (q, s.hidden), (s.hidden, s.mlp), (s.hidden, s.mlp),
             (s.mlp, s.hidden)]
    layer = [(torch.randn(rows, i), torch.randn(i, o)) for i, o in pairs]
    head = (torch.randn(rows, s.hidden), torch.randn(s.hidden, s.vocab))
    flops_layer = sum(2 * rows * i * o for i, o in pairs)
    flops_head = 2 * rows * s.hidden * s.vocab

    def once():
        for _ in range(s.layers):
            for a, b in layer:
                a @ b
        head[0] @ head[1]

    for _ in range(2):
        once()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        once()
        count += 1
    return (flops_layer * s.layers + flops_head) * count / (time.perf_counter() - start) / 1e9


def params_of(model) -> int:
    return sum(p.numel() for p in model.parameters())


def here() -> Path:
    return Path(__file__).resolve().parent
