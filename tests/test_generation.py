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
