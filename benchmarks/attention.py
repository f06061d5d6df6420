"""Decode attention on the CPU: transformers' SDPA path (keys and values copied once per
query head, ``repeat_kv``) against radis-bench's single-query path (harness/model/attention.py),
same Generator, same model, same IFEval prompts, in one process.

    .venv/bin/python benchmarks/attention.py --data-dir ../shared/data [--prompts 96] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from _common import data_source, embedded_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--prompts", type=int, default=96)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()

    from harness.model import attention
    from harness.data.sources import sample
    from harness.plugins.requests import Decoding, Request
    from harness.model.generation import GenerationCache, Generator
    from harness.model.prompts import user_turn
    from harness.plugins.registry import data_set

    _, model, tokenizer = embedded_model()
    requests = [Request(user_turn(it.prompt)) for it in sample(data_source(args.data_dir).general(data_set("ifeval")), args.prompts, 3)]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for path in ("sdpa", "radis-bench"):
            switch = attention.use_decode_attention
            if path == "sdpa":  # keep transformers' attention for this pass
                attention_use, attention.use_decode_attention = switch, (lambda model: None)
            generator = Generator(model, tokenizer, f"bench-{path}", cache=GenerationCache(f"{tmp}/{path}.sqlite"))
            if path == "sdpa":
                attention.use_decode_attention = attention_use
            started = time.time()
            outputs = generator.generate(requests, Decoding(max_new_tokens=args.new_tokens), label=path)
            seconds = time.time() - started
            tokens = sum(o.new_tokens for o in outputs)
            results[path] = (outputs, tokens / seconds)
            print(f"{path:12s} attention={model.config._attn_implementation}: {tokens} tokens in {seconds:.1f}s = {tokens / seconds:.1f} tok/s")
    same = sum(a.text == b.text for a, b in zip(results["sdpa"][0], results["radis-bench"][0]))
    print(f"ratio {results['radis-bench'][1] / results['sdpa'][1]:.2f}x; identical greedy outputs {same}/{len(requests)}")


if __name__ == "__main__":
    main()
