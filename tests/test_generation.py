from pathlib import Path

from harness.plugins.requests import Decoding, Output, Request
from harness.model.generation import GenerationCache, Generator
from harness.model.kv_cache import GrowingCache
from harness.model.prefill import Prefill
from harness.model.prompts import user_turn


def test_second_request_is_served_from_cache(tiny_model, tiny_tokenizer, tmp_path):
    gen = Generator(tiny_model, tiny_tokenizer, "tiny", GenerationCache(tmp_path / "g.sqlite"), batch_size=2)
    reqs = [Request(user_turn(q)) for q in ["Hello", "How are you today?", "Guten Morgen"]]
    first = gen.generate(reqs, Decoding(max_new_tokens=8))
    assert gen.stats.generated == 3 and gen.stats.cache_hits == 0
    again = Generator(tiny_model, tiny_tokenizer, "tiny", GenerationCache(tmp_path / "g.sqlite"))
    second = again.generate(reqs, Decoding(max_new_tokens=8))
    assert again.stats.generated == 0 and again.stats.cache_hits == 3
    assert [o.text for o in first] == [o.text for o in second]
    assert all(o.cached for o in second)


def test_cache_key_depends_on_model_prompt_and_decoding(tiny_model, tiny_tokenizer, tmp_path):
    gen = Generator(tiny_model, tiny_tokenizer, "a", GenerationCache(tmp_path / "g.sqlite"))
    other = Generator(tiny_model, tiny_tokenizer, "b", GenerationCache(tmp_path / "g.sqlite"))
    text = gen.prompt_text(Request(user_turn("Hi")))
    assert gen.key(text, Decoding()) != other.key(text, Decoding())
    assert gen.key(text, Decoding()) != gen.key(text + " ", Decoding())
    assert gen.key(text, Decoding()) != gen.key(text, Decoding(max_new_tokens=7))
    assert gen.key(text, Decoding(do_sample=True, seed=1)) != gen.key(text, Decoding(do_sample=True, seed=2))


def test_batched_greedy_matches_one_by_one(tiny_model, tiny_tokenizer, tmp_path):
    reqs = [Request(user_turn(q)) for q in ["Hello", "How are you today? I am fine.", "Das Haus"]]
    batched = Generator(tiny_model, tiny_tokenizer, "x", GenerationCache(tmp_path / "a.sqlite"), batch_size=3)
    single = Generator(tiny_model, tiny_tokenizer, "x", GenerationCache(tmp_path / "b.sqlite"), batch_size=1)
    a = batched.generate(reqs, Decoding(max_new_tokens=6))
    b = single.generate(reqs, Decoding(max_new_tokens=6))
    assert [o.text for o in a] == [o.text for o in b]
    assert all(o.new_tokens <= 6 for o in a)


def test_continuous_batching_refills_and_matches_one_by_one(tiny_model, tiny_tokenizer, tmp_path):
    """Sequences of different lengths leave the batch and waiting prompts join mid-way."""
    import torch

    torch.manual_seed(1)
    with torch.no_grad():  # larger random weights than the default init, so answers vary
        for param in tiny_model.parameters():
            param.normal_(0.0, 0.3)
    prompts = ["Hello", "How are you today? I am fine.", "Das Haus", "Guten Morgen", "The weather is nice", "Ich habe"]
    reqs = [Request(user_turn(q)) for q in prompts]
    probe = Generator(tiny_model, tiny_tokenizer, "x", GenerationCache(tmp_path / "p.sqlite"), batch_size=1)
    long = probe.generate(reqs, Decoding(max_new_tokens=10))
    # stop on a token whose first appearance differs between answers, so lengths differ
    seqs = [tiny_tokenizer(o.text, add_special_tokens=False)["input_ids"] for o in long]
    candidates = {t for seq in seqs for t in seq}
    stop_token = max(candidates, key=lambda t: len({seq.index(t) if t in seq else 99 for seq in seqs}))
    results = {}
    for size in (1, 2, 4):
        gen = Generator(tiny_model, tiny_tokenizer, "x", GenerationCache(tmp_path / f"{size}.sqlite"), batch_size=size)
        gen.stop_ids = gen.stop_ids + [stop_token]
        results[size] = gen.generate(reqs, Decoding(max_new_tokens=10))
    lengths = [o.new_tokens for o in results[1]]
    assert len(set(lengths)) > 1 and any(o.finished for o in results[1])
    for size in (2, 4):
        assert [o.text for o in results[size]] == [o.text for o in results[1]]
        assert [o.new_tokens for o in results[size]] == lengths


def test_growing_cache_matches_concatenation():
    """The in-place KV cache returns exactly what concatenating every step would."""
    import torch

    from harness.model.kv_cache import GrowingCache

    cache = GrowingCache()
    keys, values = [], []
    for step in range(150):  # beyond two capacity chunks
        new = 7 if step == 0 else 1
        k, v = torch.randn(2, 3, new, 4), torch.randn(2, 3, new, 4)
        keys.append(k), values.append(v)
        got_k, got_v = cache.update(k, v, 0)
        assert torch.equal(got_k, torch.cat(keys, dim=-2)) and torch.equal(got_v, torch.cat(values, dim=-2))
    assert cache.get_seq_length() == 156
    cache.batch_select_indices(torch.tensor([1]))
    got_k, _ = cache.layers[0]._view()
    assert torch.equal(got_k, torch.cat(keys, dim=-2)[1:])


def test_auto_batch_size_bounds(tiny_model):
    from harness.model.kv_cache import MAX_BATCH, auto_batch_size, kv_bytes_per_token

    c = tiny_model.config
    assert kv_bytes_per_token(tiny_model) == 2 * c.num_hidden_layers * c.num_key_value_heads * (c.hidden_size // c.num_attention_heads) * 4
    assert auto_batch_size(tiny_model, 10_000, 100) == MAX_BATCH["cpu"]  # the device cap
    assert auto_batch_size(tiny_model, 5, 100) == 5  # never more than the requests
    assert auto_batch_size(tiny_model, 10_000, 10**9) == 1  # the memory budget


def test_available_memory_counts_the_droppable_page_cache(tmp_path, monkeypatch, tiny_model):
    from harness.model import kv_cache

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24683664 kB\nMemFree:          512000 kB\nMemAvailable:   20480000 kB\n")
    assert kv_cache.available_memory(str(meminfo)) == 20_480_000 * 1024  # not the 500 MB of free pages
    meminfo.write_text("MemTotal:       24683664 kB\n")  # no MemAvailable (an old kernel): free pages
    pages = {"SC_AVPHYS_PAGES": 1000, "SC_PAGE_SIZE": 4096}  # fixed: the machine's free pages move between two reads
    monkeypatch.setattr(kv_cache.os, "sysconf", lambda name: pages[name])
    assert kv_cache.available_memory(str(meminfo)) == 1000 * 4096
    monkeypatch.undo()
    # the CPU budget is a tenth of it, at most 1.5 GiB
    per_row = kv_cache.kv_bytes_per_token(tiny_model) * 1000
    monkeypatch.setattr(kv_cache, "available_memory", lambda: 10 * 8 * per_row)
    assert kv_cache.auto_batch_size(tiny_model, 10_000, 1000) == 8
    monkeypatch.setattr(kv_cache, "available_memory", lambda: 2**40)
    assert kv_cache.auto_batch_size(tiny_model, 10_000, 1000) == min(kv_cache.MAX_BATCH["cpu"], int(1.5 * 2**30 // per_row))


def _varied_weights(model, seed):
    import torch

    torch.manual_seed(seed)
    with torch.no_grad():  # larger random weights than the default init, so answers vary
        for param in model.parameters():
            param.normal_(0.0, 0.3)


def test_shared_prompt_start_and_length_buckets_leave_outputs_unchanged(tiny_model, tiny_tokenizer, tmp_path):
    """The system turn every prompt shares is computed once and copied to each row, and
    prompts of different lengths are prefilled in separate passes: greedy outputs stay
    those of plain one-pass prefill, at every batch size (refills included)."""
    _varied_weights(tiny_model, 2)
    system = {"role": "system", "content": "You are a helpful assistant. Answer briefly and in German, please."}
    questions = ["Hello", "How are you today? I am fine, thank you.", "Das Haus", "Guten Morgen", "The weather is nice",
                 "Ich habe einen Hund und eine Katze, und du?"]
    reqs = [Request([system] + user_turn(q)) for q in questions]
    plain = Generator(tiny_model, tiny_tokenizer, "x", GenerationCache(tmp_path / "plain.sqlite"), batch_size=6)
    plain.prefill.PREFIX_MIN_TOKENS, plain.prefill.PREFILL_TOKENS = 10**9, 10**9
    expected = [o.text for o in plain.generate(reqs, Decoding(max_new_tokens=10))]
    for size in (1, 2, 4, 6):
        gen = Generator(tiny_model, tiny_tokenizer, "x", GenerationCache(tmp_path / f"{size}.sqlite"), batch_size=size)
        gen.prefill.PREFILL_TOKENS = 40  # several passes per refill
        shared = []
        prefix = gen.prefill.prefix

        def recording(prompts, prefix=prefix):
            shared.append(prefix(prompts))
            return shared[-1]

        gen.prefill.prefix = recording
        assert [o.text for o in gen.generate(reqs, Decoding(max_new_tokens=10))] == expected, size
        assert shared[0][0] >= 15  # the system turn and the user turn's opening tokens
    assert len(set(expected)) > 1


def test_prefill_passes_bound_padding_and_size():
    lengths = [100, 99, 97, 60, 58, 57, 56, 10]
    prompts = [[1] * n for n in lengths]
    chunks = Prefill._chunks(prompts, 0, 4096)
    assert chunks == [[0, 1, 2], [3, 4, 5, 6], [7]]  # the next prompt would make a pass >10% padding
    assert sum(chunks, []) == list(range(len(lengths)))
    assert Prefill._chunks(prompts, 0, 200) == [[0, 1], [2], [3, 4, 5], [6], [7]]  # and at most 200 padded tokens
    # padding counts against what is computed: after 40 shared tokens, 60 and 45 differ by a quarter
    assert Prefill._chunks([[1] * 100, [1] * 85], 0, 4096) == [[0, 1]]
    assert Prefill._chunks([[1] * 100, [1] * 85], 40, 4096) == [[0], [1]]


def test_leaving_rows_are_replaced_from_the_end():
    import torch

    from harness.model.kv_cache import GrowingCache, fill_holes

    assert fill_holes([0, 2, 4]) == [0, 4, 2]  # row 1 left: the last row takes its place
    assert fill_holes([1, 2, 3]) == [3, 1, 2]
    assert fill_holes([0, 1]) == [0, 1]
    cache = GrowingCache()
    k, v = torch.randn(5, 2, 3, 4), torch.randn(5, 2, 3, 4)
    cache.update(k, v, 0)
    cache.update(torch.randn(5, 2, 1, 4), torch.randn(5, 2, 1, 4), 0)  # spare capacity behind the rows
    full_k, full_v = cache.layers[0]._view()
    full_k, full_v = full_k.clone(), full_v.clone()
    order = fill_holes([1, 3, 4])
    cache.layers[0].keep_rows(order)
    got_k, got_v = cache.layers[0]._view()
    assert torch.equal(got_k, full_k[order]) and torch.equal(got_v, full_v[order])
    nxt = torch.randn(3, 2, 1, 4)
    got_k, _ = cache.update(nxt, nxt, 0)  # writes into the narrowed rows' spare room
    assert torch.equal(got_k, torch.cat([full_k[order], nxt], dim=-2))


def _tiny_llama(tokenizer, tie: bool, seed: int = 3):
    """A random Llama of another shape than the fixture's (4 query heads over 2 key/value heads)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=tie, rope_theta=5000.0)
    model = LlamaForCausalLM(config).eval()
    _varied_weights(model, seed)
    return model


def test_fast_decode_gives_the_transformers_logits_bit_for_bit(tiny_tokenizer):
    """``FastLlama.decode`` against ``model(...)`` on the same left-padded cache, step by step."""
    import torch

    from harness.model.attention import use_decode_attention
    from harness.model.fast_llama import FastLlama

    for tie in (True, False):
        model = _tiny_llama(tiny_tokenizer, tie)
        use_decode_attention(model)
        fast = FastLlama.of(model)
        assert fast is not None
        batch = 5
        ids = torch.randint(0, len(tiny_tokenizer), (batch, 9))
        mask = torch.ones(batch, 9, dtype=torch.long)
        mask[0, :3] = 0
        mask[2, :1] = 0
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            caches = []
            for _ in range(2):
                caches.append(GrowingCache())
                model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=caches[-1], use_cache=True)
            nxt, token = positions[:, -1] + 1, ids[:, -1]
            for step in range(70):  # past a capacity chunk of the cache
                mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)
                want = model(input_ids=token[:, None], attention_mask=mask, position_ids=nxt[:, None],
                             past_key_values=caches[0], use_cache=True).logits[:, -1]
                got = fast.decode(token, mask, nxt, caches[1])
                assert torch.equal(got, want), step
                nxt, token = nxt + 1, want.argmax(-1)
            for a, b in zip(caches[0].layers, caches[1].layers):
                assert torch.equal(a._view()[0], b._view()[0]) and torch.equal(a._view()[1], b._view()[1])


def test_fast_decode_gives_the_transformers_tokens(tiny_tokenizer, tmp_path):
    """Greedy outputs of the Generator with and without the fast decode step: the same
    tokens at every batch size, with a shared prompt start, refills and early stops."""
    system = {"role": "system", "content": "You are a helpful assistant. Answer briefly and in German, please."}
    questions = ["Hello", "How are you today? I am fine, thank you.", "Das Haus", "Guten Morgen", "The weather is nice",
                 "Ich habe einen Hund und eine Katze, und du?", "Berlin", "Guten Morgen! Wie geht es dir heute?"]
    reqs = [Request([system] + user_turn(q)) for q in questions]
    model = _tiny_llama(tiny_tokenizer, tie=False)
    slow = Generator(model, tiny_tokenizer, "x", GenerationCache(tmp_path / "slow.sqlite"), batch_size=8)
    slow.FAST_DECODE = False
    expected = slow.generate(reqs, Decoding(max_new_tokens=12))
    ids = [o.token_ids for o in expected]
    stop = max({t for seq in ids for t in seq}, key=lambda t: len({seq.index(t) if t in seq else 99 for seq in ids}))
    for stop_ids in ([], [stop]):
        slow = Generator(model, tiny_tokenizer, "x", GenerationCache(tmp_path / f"s{len(stop_ids)}.sqlite"), batch_size=8)
        slow.FAST_DECODE = False
        slow.stop_ids = slow.stop_ids + stop_ids
        want = [o.token_ids for o in slow.generate(reqs, Decoding(max_new_tokens=12))]
        for size in (1, 3, 8):
            gen = Generator(model, tiny_tokenizer, "x", GenerationCache(tmp_path / f"{size}-{len(stop_ids)}.sqlite"), batch_size=size)
            gen.stop_ids = gen.stop_ids + stop_ids
            calls = []
            from harness.model.fast_llama import FastLlama

            original = FastLlama.decode

            def counting(self, *args, original=original):
                calls.append(1)
                return original(self, *args)

            FastLlama.decode = counting
            try:
                got = [o.token_ids for o in gen.generate(reqs, Decoding(max_new_tokens=12))]
            finally:
                FastLlama.decode = original
            assert calls and got == want, (size, stop_ids)
    assert len({tuple(t) for t in want}) > 1 and len({len(t) for t in want}) > 1


def test_fast_decode_only_for_plain_llama(tiny_model, tiny_tokenizer):
    """Adapters, hooks and other architectures keep the transformers path."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    from harness.model.fast_llama import FastLlama

    assert FastLlama.of(tiny_model) is not None
    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(_tiny_llama(tiny_tokenizer, tie=False), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert FastLlama.of(lora) is None and FastLlama.of(lora.base_model.model) is None  # LoRA layers replace nn.Linear
    assert FastLlama.of(lora.merge_and_unload()) is not None  # merged back: a plain Llama again
    hooked = _tiny_llama(tiny_tokenizer, tie=True)
    hooked.model.layers[0].mlp.register_forward_hook(lambda *a: None)
    assert FastLlama.of(hooked) is None
    half = _tiny_llama(tiny_tokenizer, tie=True).to(torch.bfloat16)
    assert FastLlama.of(half) is None
    mistral = MistralForCausalLM(MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                               num_attention_heads=2, num_key_value_heads=1))
    assert FastLlama.of(mistral.eval()) is None


def test_a_damaged_generation_cache_is_set_aside_not_fatal(tmp_path, caplog):
    path = tmp_path / "generations.sqlite"
    cache = GenerationCache(path)
    cache.put_many([(f"k{i}", Output("text " * 50, 50, True, token_ids=list(range(50)))) for i in range(200)])
    cache.db.db.close()
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"generations.sqlite{suffix}").unlink(missing_ok=True)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])  # a truncated copy: header intact, pages missing
    again = GenerationCache(path)
    assert again.get("k150") is None  # its rows are gone, and nothing raised
    again.put_many([("k1", Output("fresh", 1, True))])
    assert again.get("k1").text == "fresh"
    assert list(tmp_path.glob("generations.sqlite.damaged-*")) and "was damaged" in caplog.text
    again.db.db.close()
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"generations.sqlite{suffix}").unlink(missing_ok=True)
    path.write_bytes(b"not a database at all" * 100)
    assert GenerationCache(path).get("k1") is None


KILLED_WRITER = """
import sys
from harness.model.generation import GenerationCache
from harness.plugins.requests import Output
cache = GenerationCache(sys.argv[1])
i = 0
while True:
    cache.put_many([(f"k{i}-{j}", Output("x" * 200, 10, True, token_ids=list(range(10)))) for j in range(50)])
    i += 1
    if i == 5:
        print("ready", flush=True)
"""


def test_a_writer_killed_mid_write_leaves_a_usable_cache(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "generations.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path)], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    cache = GenerationCache(path)
    assert cache.get("k0-0").text == "x" * 200 and cache.get("k4-49").token_ids == list(range(10))
    cache.put_many([("after", Output("ok", 1, True))])
    assert cache.get("after").text == "ok"


def test_greedy_picks_the_first_of_tied_largest_logits_as_argmax_does():
    import torch

    from harness.model.generation import Decoder
    from harness.plugins.requests import Decoding

    logits = torch.randn(6, 50)
    logits[:, 7] = logits[:, 31] = 10.0  # ties
    logits[5, 2] = float("nan")  # a NaN is the largest, as for argmax
    picked = Decoder._pick(logits, Decoding(max_new_tokens=4), None)
    assert picked.tolist() == logits.argmax(-1).tolist() == [7, 7, 7, 7, 7, 2]


def test_compact_drops_only_the_columns_no_row_attends_to():
    import torch

    from harness.model.kv_cache import compact

    cache = GrowingCache()
    keys = torch.arange(3 * 1 * 6 * 2, dtype=torch.float32).view(3, 1, 6, 2)
    cache.update(keys.clone(), -keys.clone(), 0)
    mask = torch.tensor([[1, 0, 0, 1, 1, 1],   # a shared start, a hole, then the row's tokens
                         [1, 0, 0, 0, 1, 1],
                         [1, 0, 1, 0, 1, 1]])
    narrower = compact(cache, mask)
    assert narrower.tolist() == [[1, 0, 1, 1, 1], [1, 0, 0, 1, 1], [1, 1, 0, 1, 1]]  # column 1 was nobody's
    kept_keys, kept_values = cache.layers[0]._view()
    assert torch.equal(kept_keys, keys[:, :, [0, 2, 3, 4, 5]]) and torch.equal(kept_values, -keys[:, :, [0, 2, 3, 4, 5]])
    assert compact(cache, narrower) is narrower  # nothing more to drop
    assert compact(cache, torch.tensor([[0, 1, 1, 1, 1]] * 3), least=2).shape[1] == 5  # one column: under ``least``


def test_the_cache_stays_as_wide_as_its_rows_across_refills(tiny_model, tiny_tokenizer, tmp_path):
    """Rows that join later, and rows left behind by longer ones, share a cache no wider than the
    longest row still in it needs: without compacting, every refill's rows were padded to a
    width that grew by one column per step since the call began. Outputs are unchanged."""
    import harness.model.generation as generation

    _varied_weights(tiny_model, 3)
    from harness.model.prompts import request_ids

    questions = [f"Question {i}: " + "word " * (i % 5) for i in range(12)]
    items = [(Request(user_turn(q)), Decoding(max_new_tokens=3 + (5 * i) % 11)) for i, q in enumerate(questions)]
    one = Generator(tiny_model, tiny_tokenizer, "x", GenerationCache(tmp_path / "one.sqlite"), batch_size=1)
    expected = [o.token_ids for o in one.generate_many(items)]
    longest_prompt = max(len(request_ids(tiny_tokenizer, r.messages)) for r, _ in items)
    widths = []
    merge = generation.merge

    def recording(parts):
        cache, mask = merge(parts)
        widths.append(mask.shape[1])
        return cache, mask

    generation.merge = recording
    try:
        gen = Generator(tiny_model, tiny_tokenizer, "x", GenerationCache(tmp_path / "two.sqlite"), batch_size=3)
        assert [o.token_ids for o in gen.generate_many(items)] == expected
    finally:
        generation.merge = merge
    assert len(widths) >= 4  # rows joined mid-way, several times
    assert max(widths) <= longest_prompt + 13  # the longest prompt and the longest answer


def test_greedy_batches_grow_as_waiting_prompts_shorten(tiny_model, tiny_tokenizer, tmp_path, monkeypatch):
    """Under a memory budget that fits few long rows, a greedy call starts narrow and widens
    once the long prompts are done; sampling keeps its first width (which rows share a step
    decides which random numbers each draws)."""
    import harness.model.generation as generation
    from harness.model.kv_cache import kv_bytes_per_token

    per_token = kv_bytes_per_token(tiny_model)
    monkeypatch.setattr(generation, "auto_batch_size",
                        lambda model, requests, tokens: max(1, min(requests, 3000 * per_token // (per_token * tokens))))
    reqs = [Request(user_turn("long " * 400))] + [Request(user_turn(f"short {i}")) for i in range(20)]
    gen = Generator(tiny_model, tiny_tokenizer, "x", GenerationCache(tmp_path / "g.sqlite"))
    gen.generate(reqs, Decoding(max_new_tokens=4))
    assert gen.current_batch == 20  # the short prompts: 3000 tokens hold every one of them at once
    sampled = Generator(tiny_model, tiny_tokenizer, "x", GenerationCache(tmp_path / "s.sqlite"))
    sampled.generate(reqs, Decoding(max_new_tokens=4, do_sample=True, seed=0))
    assert sampled.current_batch < 20  # the width the long prompt allowed


def test_a_refill_fills_the_rows_that_left_and_copies_nothing_else():
    import torch

    from harness.model.prefill import merge

    def cache_of(keys):
        cache = GrowingCache()
        cache.update(keys.clone(), -keys.clone(), 0)
        return cache

    old = torch.randn(4, 1, 6, 2)
    batch = cache_of(old)
    batch.layers[0].keep_rows([0, 3])  # two rows left
    storage = batch.layers[0].keys.data_ptr()
    joining = torch.randn(2, 1, 4, 2)
    joined, mask = merge([(batch, torch.ones(2, 6, dtype=torch.long)), (cache_of(joining), torch.ones(2, 4, dtype=torch.long))])
    keys, values = joined.layers[0]._view()
    assert keys.data_ptr() == storage  # written into the freed rows
    assert torch.equal(keys[:2], old[[0, 3]]) and torch.equal(keys[2:, :, 2:], joining) and torch.equal(values[2:, :, 2:], -joining)
    assert mask.tolist() == [[1] * 6] * 2 + [[0, 0, 1, 1, 1, 1]] * 2
    # more rows than left, or wider than the batch: joined by a copy into new tensors, left-padded
    wider = torch.randn(1, 1, 9, 2)
    joined, mask = merge([(joined, mask), (cache_of(wider), torch.ones(1, 9, dtype=torch.long))])
    keys, _ = joined.layers[0]._view()
    assert keys.data_ptr() != storage and keys.shape == (5, 1, 9, 2)
    assert torch.equal(keys[:2, :, 3:], old[[0, 3]]) and torch.equal(keys[4], wider[0])
    assert mask.tolist()[4] == [1] * 9 and mask.tolist()[2] == [0] * 5 + [1] * 4


def test_a_generator_version_past_1_generates_again(tiny_model, tiny_tokenizer, tmp_path, monkeypatch):
    """Units name the generator's version; so do cached outputs past version 1, or a bumped
    generator would read the old one's answers back (version 1's keys are those from before)."""
    import hashlib
    import json

    from harness import versions

    gen = Generator(tiny_model, tiny_tokenizer, "tiny", GenerationCache(tmp_path / "g.sqlite"))
    text = gen.prompt_text(Request(user_turn("Hi")))
    before = hashlib.sha256(json.dumps(["tiny", text, Decoding().key()], sort_keys=True).encode()).hexdigest()
    assert gen.key(text, Decoding()) == before
    monkeypatch.setattr(versions, "GENERATOR", 2)
    assert gen.key(text, Decoding()) != before
