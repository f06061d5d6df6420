"""GPU check on a lent machine with no hub access: build random-weight checkpoints with the
embedded model's real tokenizer (SmolLM2-135M shape, and a Mistral-7B shape with that
vocabulary), then measure generation tokens/s of the harness Generator (transformers
backend, automatic batch) against per-example ``model.generate`` on the GPU.

    python benchmarks/gpu_check.py build TOKENIZER_DIR OUT_DIR     # SmolLM2-shaped checkpoint
    python benchmarks/gpu_check.py generation TOKENIZER_DIR [--big]

Random weights rarely emit end of turn, so every sequence runs to ``max_new_tokens``:
the figures are decode throughput, not quality.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path


def smollm2_config():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                       num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                       rope_theta=100000.0, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)


def mistral7b_config(vocab: int):
    from transformers import MistralConfig

    return MistralConfig(vocab_size=vocab, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768, rope_theta=1e6)


def build(tok_dir: str, out: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(smollm2_config())
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tok_dir).save_pretrained(out)
    for name in ("chat_template.jinja",):
        if (Path(tok_dir) / name).exists():
            shutil.copy(Path(tok_dir) / name, Path(out) / name)
    print(f"built {out}: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters")


def generation(tok_dir: str, big: bool, prompts: int, max_new: int, baseline_n: int) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.plugins.requests import Decoding, Request
    from harness.model.generation import GenerationCache, Generator
    from harness.model.prompts import end_of_turn_ids, render_chat

    tok = AutoTokenizer.from_pretrained(tok_dir)
    config = mistral7b_config(len(tok)) if big else smollm2_config()
    with torch.device("cuda"):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    params = sum(p.numel() for p in model.parameters())
    name = f"{'Mistral-7B' if big else 'SmolLM2-135M'}-shaped ({params / 1e9:.2f}B, bf16, random weights)"
    texts = [f"Translate this from German to English:\nGerman: Satz Nummer {i} über das Wetter.\nEnglish:" for i in range(prompts)]
    reqs = [Request([{"role": "user", "content": t}]) for t in texts]
    stop = end_of_turn_ids(tok)

    with torch.inference_mode():
        start, n_tok = time.perf_counter(), 0
        for t in texts[:baseline_n]:
            enc = tok(render_chat(tok, [{"role": "user", "content": t}]), return_tensors="pt", add_special_tokens=False).to("cuda")
            out = model.generate(**enc, max_new_tokens=max_new, do_sample=False, eos_token_id=stop, pad_token_id=stop[0])
            n_tok += out.shape[1] - enc["input_ids"].shape[1]
        torch.cuda.synchronize()
        base_rate = n_tok / (time.perf_counter() - start)
    print(f"{name}: per-example model.generate {base_rate:.0f} tok/s ({baseline_n} prompts x {max_new} tokens)")

    with tempfile.TemporaryDirectory() as tmp:
        gen = Generator(model, tok, "gpu-check", GenerationCache(Path(tmp) / "g.sqlite"))
        start = time.perf_counter()
        outs = gen.generate(reqs, Decoding(max_new_tokens=max_new))
        torch.cuda.synchronize()
        secs = time.perf_counter() - start
    rate = sum(o.new_tokens for o in outs) / secs
    print(f"{name}: radis-bench Generator (transformers backend, auto batch {gen.current_batch}) {rate:.0f} tok/s "
          f"({prompts} prompts x {max_new} tokens) = {rate / base_rate:.1f}x per-example; "
          f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["build", "generation"])
    ap.add_argument("tok_dir")
    ap.add_argument("out", nargs="?")
    ap.add_argument("--big", action="store_true")
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--baseline-prompts", type=int, default=8)
    args = ap.parse_args()
    if args.what == "build":
        build(args.tok_dir, args.out)
    else:
        generation(args.tok_dir, args.big, args.prompts, args.max_new_tokens, args.baseline_prompts)


if __name__ == "__main__":
    main()
