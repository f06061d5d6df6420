from harness.generation import Decoding, GenerationCache, Generator, Request
from harness.prompts import user_turn


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

    from harness.generation import GrowingCache

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
    from harness.generation import MAX_BATCH, auto_batch_size, kv_bytes_per_token

    c = tiny_model.config
    assert kv_bytes_per_token(tiny_model) == 2 * c.num_hidden_layers * c.num_key_value_heads * (c.hidden_size // c.num_attention_heads) * 4
    assert auto_batch_size(tiny_model, 10_000, 100) == MAX_BATCH["cpu"]  # the device cap
    assert auto_batch_size(tiny_model, 5, 100) == 5  # never more than the requests
    assert auto_batch_size(tiny_model, 10_000, 10**9) == 1  # the memory budget


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
    plain.PREFIX_MIN_TOKENS, plain.PREFILL_TOKENS = 10**9, 10**9
    expected = [o.text for o in plain.generate(reqs, Decoding(max_new_tokens=10))]
    for size in (1, 2, 4, 6):
        gen = Generator(tiny_model, tiny_tokenizer, "x", GenerationCache(tmp_path / f"{size}.sqlite"), batch_size=size)
        gen.PREFILL_TOKENS = 40  # several passes per refill
        shared = []
        prefix = gen._prefix

        def recording(prompts, prefix=prefix):
            shared.append(prefix(prompts))
            return shared[-1]

        gen._prefix = recording
        assert [o.text for o in gen.generate(reqs, Decoding(max_new_tokens=10))] == expected, size
        assert shared[0][0] >= 15  # the system turn and the user turn's opening tokens
    assert len(set(expected)) > 1


def test_prefill_passes_bound_padding_and_size():
    lengths = [100, 99, 97, 60, 58, 57, 56, 10]
    prompts = [[1] * n for n in lengths]
    chunks = Generator._chunks(prompts, 0, 4096)
    assert chunks == [[0, 1, 2], [3, 4, 5, 6], [7]]  # the next prompt would make a pass >10% padding
    assert sum(chunks, []) == list(range(len(lengths)))
    assert Generator._chunks(prompts, 0, 200) == [[0, 1], [2], [3, 4, 5], [6], [7]]  # and at most 200 padded tokens
    # padding counts against what is computed: after 40 shared tokens, 60 and 45 differ by a quarter
    assert Generator._chunks([[1] * 100, [1] * 85], 0, 4096) == [[0, 1]]
    assert Generator._chunks([[1] * 100, [1] * 85], 40, 4096) == [[0], [1]]


def test_leaving_rows_are_replaced_from_the_end():
    import torch

    from harness.generation import GrowingCache, fill_holes

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
