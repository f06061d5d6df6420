"""Every method: the data it builds, its fallbacks and statistics, its loss, and that the
trainer learns from it; plus third-party methods arriving through entry points."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from conftest import build_tiny_model

from baselines.kl import response_kl
from baselines.vanilla import Vanilla
from harness.plugins import registry
from harness.config.settings import Budget, LoRASettings
from harness.data.sources import DataSource
from harness.data.records import TranslationPair
from harness.errors import UserError
from harness.plugins.requests import Decoding, Output
from harness.model.generation import GenerationCache, Generator
from harness.plugins.method import MethodContext
from harness.model.prompts import render_chat
from harness.model.examples import collate, tokenise_example, weighted_nll
from harness.model.training import train

PAIRS = [
    TranslationPair("de", "en", "Das Haus ist groß.", "The house is big."),
    TranslationPair("de", "en", "Ich habe einen Hund.", "I have a dog."),
    TranslationPair("de", "en", "Guten Morgen!", "Good morning!"),
    TranslationPair("de", "en", "Ich habe eine Katze und einen Hund.", "I have a cat and a dog."),
    TranslationPair("de", "en", "Das Wetter ist heute schön.", "The weather is nice today."),
    TranslationPair("de", "en", "Wie geht es dir?", "How are you?"),
]
ALPACA = [
    {"instruction": "Name a colour.", "input": "", "output": "Blue."},
    {"instruction": "Say hello.", "input": "", "output": "Hello!"},
    {"instruction": "Translate to German.", "input": "The dog", "output": "Der Hund"},
]
# generation-heavy methods get short outputs from the random tiny model
SHORT = {"radis": {"max_new_tokens": 12}, "sdft": {"max_new_tokens": 12}, "seqkd": {"max_new_tokens": 12},
         "stm": {"threshold": 1e9}}  # the random tiny model finds every token surprising: keep them all


class FakeGenerator:
    """Stands in for the original model: answers each request with ``reply(request)``."""

    def __init__(self, reply, finished: bool = True):
        self.reply, self.finished, self.calls = reply, finished, []

    def generate(self, requests, decoding=Decoding(), label=""):
        self.calls.append((requests, decoding))
        return [Output(self.reply(r), 7, self.finished) for r in requests]

    def generate_many(self, items, label=""):
        return self.generate([r for r, _ in items], items[0][1] if items else Decoding(), label)


@pytest.fixture
def tiny_data(tmp_path):
    (tmp_path / "data" / "alpaca").mkdir(parents=True)
    (tmp_path / "data" / "alpaca" / "alpaca_train.json").write_text(json.dumps(ALPACA))
    return DataSource.open(tmp_path / "data")


def context(original, data=None, seed: int = 0) -> MethodContext:
    return MethodContext(pairs=list(PAIRS), original=original, data=data, budget=Budget(), seed=seed)


def pair_of(request) -> TranslationPair:
    """The training pair a request was built from (its source appears in the prompt)."""
    text = request.messages[-1]["content"]
    return next(p for p in PAIRS if p.source in text)


def test_every_registered_method_builds_data_the_trainer_learns_from(tiny_tokenizer, tiny_data, tmp_path):
    starter = DataSource.open(None)
    data = starter if (starter.root / "alpaca" / "alpaca_train.json").exists() else tiny_data
    budget = Budget(steps=30, batch_size=4, learning_rate=2e-2, warmup_ratio=0.0, save_every=0, max_length=160)
    for name, cls in sorted(registry.methods().items()):
        method = cls.from_settings(SHORT.get(name))
        model = build_tiny_model(tiny_tokenizer)
        original = Generator(model, tiny_tokenizer, "tiny", GenerationCache(tmp_path / "generations.sqlite"), batch_size=8)
        ctx = context(original, data)
        ctx.original_model = model
        examples = method.build_training_examples(ctx)
        assert examples and all(ex.response and ex.response_text for ex in examples), name
        result = train(model, tiny_tokenizer, examples, budget, LoRASettings(r=4, alpha=8), tmp_path / name, seed=0,
                       extra_loss=method.extra_loss, label=name)
        losses = result.stats["losses"]
        assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5, (name, losses)
        method.after_training(result.model)
        json.dumps(ctx.stats)  # per-method statistics go into the manifest


def test_radis_target_is_reference_then_weighted_rationale():
    from radis.rationale import RaDis, RaDisOptions

    original = FakeGenerator(lambda r: "Haus means house; groß means big." if "Haus" in r.messages[0]["content"] else " \n")
    ctx = context(original)
    examples = RaDis(RaDisOptions(rationale_weight=0.3, max_new_tokens=64)).build_training_examples(ctx)

    (requests, decoding), = original.calls  # one batched generate call
    assert [r.assistant_prefix for r in requests] == [p.reference + "\n\n" for p in PAIRS]
    assert decoding.max_new_tokens == 64 and not decoding.do_sample
    first = examples[0].response
    assert [(s.text, s.weight, s.kind) for s in first] == [
        ("The house is big.", 1.0, "target"), ("\n\n", 0.3, "rationale"), ("Haus means house; groß means big.", 0.3, "rationale")
    ]
    assert all(len(ex.response) == 1 for ex in examples[1:])  # blank rationales give vanilla examples
    assert ctx.stats["rationales_generated"] == 6 and ctx.stats["rationales_kept"] == 1
    assert ctx.stats["mean_rationale_words"] == 6 and ctx.stats["finished_share"] == 1.0
    assert ctx.stats["decoding"]["max_new_tokens"] == 64 and ctx.stats["separator"] == "\n\n"

    literal = FakeGenerator(lambda r: "Haus means house.")
    plain = RaDis(RaDisOptions(separator="")).build_training_examples(context(literal))
    assert literal.calls[0][0][0].assistant_prefix == "The house is big."
    assert plain[0].response[2].text == "Haus means house."


def test_radis_fraction_and_filters_fall_back_to_vanilla_examples():
    from radis.rationale import RaDis, RaDisOptions, repetition_share

    def reply(request):
        if "Hund" in request.messages[0]["content"]:
            return " good dog " * 8  # every 4-gram repeats
        return " Two words."

    half = context(FakeGenerator(reply))
    examples = RaDis(RaDisOptions(rationale_fraction=0.5)).build_training_examples(half)
    assert len(half.original.calls[0][0]) == 3 and sum(len(ex.response) == 3 for ex in examples) == 3
    assert half.stats["rationales_generated"] == 3

    short = context(FakeGenerator(reply))
    RaDis(RaDisOptions(min_rationale_words=3)).build_training_examples(short)
    assert short.stats["rationales_kept"] == 2  # only the two repetitive ones are long enough

    repetitive = context(FakeGenerator(reply))
    RaDis(RaDisOptions(max_repetition=0.5)).build_training_examples(repetitive)
    assert repetitive.stats["rationales_kept"] == 4
    assert repetition_share("a b c d a b c d") == pytest.approx(1 / 5)
    assert repetition_share("only three words") == 0.0

    with pytest.raises(UserError, match="rationale_fraction"):
        RaDis(RaDisOptions(rationale_fraction=1.5)).check_ranges()


def test_radis_loss_mask_and_zero_rationale_weight_gives_the_vanilla_loss(tiny_model, tiny_tokenizer):
    from radis.rationale import RaDis, RaDisOptions

    tok = tiny_tokenizer
    original = FakeGenerator(lambda r: "I have a dog and a cat. Guten Morgen!")
    pair = PAIRS[0]
    prompt = tok(render_chat(tok, [{"role": "user", "content": f"Translate this from German to English:\nGerman: {pair.source}\nEnglish:"}]), add_special_tokens=False)["input_ids"]
    n_prompt, n_ref = len(prompt), len(tok(pair.reference, add_special_tokens=False)["input_ids"])

    weighted = tokenise_example(tok, RaDis(RaDisOptions(rationale_weight=0.4)).build_training_examples(context(original))[0], 512)
    assert weighted.input_ids[:n_prompt] == prompt
    assert weighted.weights[:n_prompt] == [0.0] * n_prompt
    assert weighted.weights[n_prompt : n_prompt + n_ref] == [1.0] * n_ref
    rest = weighted.weights[n_prompt + n_ref :]
    assert len(rest) > 5 and rest == [0.4] * (len(rest) - 1) + [1.0]  # rationale tokens, then the end of turn's own weight

    radis = tokenise_example(tok, RaDis(RaDisOptions(rationale_weight=0.0, end_of_turn_weight=0.0))
                             .build_training_examples(context(original))[0], 512)
    vanilla = tokenise_example(tok, Vanilla().build_training_examples(context(original))[0], 512)
    vanilla.weights[-1] = 0.0  # the reference tokens only, not vanilla's end of turn

    def loss(item):
        batch = collate([item], tok.pad_token_id)
        with torch.no_grad():
            logits = tiny_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        total, weight = weighted_nll(logits, batch["input_ids"], batch["weights"])
        return float(total / weight), logits

    radis_loss, logits = loss(radis)
    vanilla_loss, _ = loss(vanilla)
    assert radis_loss == pytest.approx(vanilla_loss, abs=1e-5)
    ids = torch.tensor(radis.input_ids)
    logp = torch.log_softmax(logits[0, :-1], -1).gather(-1, ids[1:, None]).squeeze(-1)
    assert radis_loss == pytest.approx(float(-logp[n_prompt - 1 : n_prompt - 1 + n_ref].mean()), abs=1e-5)


def test_lambda_scales_the_rationale_tokens_only(tiny_tokenizer):
    """The end of turn after a rationale keeps its own weight at every λ, so λ does not also
    scale how strongly the model learns to stop (issue 30); the translation keeps weight 1."""
    from radis.rationale import RaDis, RaDisOptions

    original = FakeGenerator(lambda r: "Haus means house and groß means big.")
    by_lambda = {}
    for lam in (0.0, 0.25, 0.5, 1.0):
        item = tokenise_example(tiny_tokenizer, RaDis(RaDisOptions(rationale_weight=lam)).build_training_examples(context(original))[0], 512)
        by_lambda[lam] = {kind: [w for w, k in zip(item.weights, item.kinds) if k == kind] for kind in ("target", "rationale", "end")}
    for lam, weights in by_lambda.items():
        assert weights["target"] == by_lambda[1.0]["target"] and set(weights["target"]) == {1.0}
        assert weights["end"] == [1.0]  # one end-of-turn token (ChatML's <|im_end|>), weight 1 whatever λ
        assert len(weights["rationale"]) > 5 and set(weights["rationale"]) == {lam}
    own = tokenise_example(tiny_tokenizer, RaDis(RaDisOptions(rationale_weight=0.5, end_of_turn_weight=0.5))
                           .build_training_examples(context(original))[0], 512)
    assert [w for w, k in zip(own.weights, own.kinds) if k == "end"] == [0.5]
    # the old behaviour (end of turn at λ) is what units made before issue 30 computed
    assert RaDis(RaDisOptions(rationale_weight=0.5)).options_before_versions() is None
    assert "end_of_turn_weight" not in RaDis(RaDisOptions(rationale_weight=0.5, end_of_turn_weight=0.5)).options_before_versions()
    assert RaDis(RaDisOptions()).options_before_versions() is not None


def test_sdft_samples_its_rewrites_as_the_reference_code_does():
    from baselines.sdft import SDFT

    original = FakeGenerator(lambda r: pair_of(r).reference)
    ctx = context(original, seed=3)
    SDFT().build_training_examples(ctx)
    (_, decoding), = original.calls
    assert (decoding.do_sample, decoding.temperature, decoding.top_p, decoding.top_k, decoding.seed) == (True, 0.95, 0.7, 50, 3)
    assert ctx.stats["decoding"] == decoding.key() and ctx.stats["decoding"]["top_k"] == 50
    greedy = context(FakeGenerator(lambda r: pair_of(r).reference))
    SDFT(SDFT.Options(do_sample=False)).build_training_examples(greedy)
    assert not greedy.original.calls[0][1].do_sample and "top_k" not in greedy.stats["decoding"]
    assert SDFT().options_before_versions() is None and SDFT(SDFT.Options(do_sample=False)).options_before_versions() is not None
    with pytest.raises(UserError, match="top_k"):
        SDFT(SDFT.Options(top_k=-1)).check_ranges()


def test_top_k_keeps_only_the_k_most_likely_tokens():
    logits = torch.tensor([[0.0, 5.0, 4.0, 3.0, -1.0]] * 2000)
    picked = Generator._pick(logits, Decoding(do_sample=True, top_k=2), torch.Generator().manual_seed(0))
    assert set(picked.tolist()) == {1, 2}
    assert set(Generator._pick(logits, Decoding(do_sample=True), torch.Generator().manual_seed(0)).tolist()) > {1, 2}
    assert Decoding(do_sample=True).key() == {"max_new_tokens": 256, "do_sample": True, "temperature": 1.0, "top_p": 1.0, "seed": 0}


def test_sdft_keeps_close_rewrites_and_falls_back_to_the_reference():
    from baselines.sdft import SDFT

    rewrites = {
        "The house is big.": "The house is big, yes.\n\nI kept the meaning.",  # kept (first paragraph)
        "I have a dog.": "Following the reference answer: I have a dog.",  # mentions the reference
        "Good morning!": "Your turn: Good morning!",  # starts with 'Your turn'
        "I have a cat and a dog.": "Bananas are yellow.",  # chrF far below the floor
        "The weather is nice today.": "The weather is really nice today.",  # kept
        "How are you?": "How are you? In my response I asked about you.",  # mentions its own response
    }
    original = FakeGenerator(lambda r: rewrites[pair_of(r).reference])
    ctx = context(original)
    examples = SDFT().build_training_examples(ctx)

    prompt = original.calls[0][0][0].messages[0]["content"]
    assert prompt.startswith("Below are an instruction that describes a task along with a reference answer. Using the reference answer as a guide, write your own response.")
    assert "### Instruction:\nTranslate this from German to English:\nGerman: Das Haus ist groß.\nEnglish:\n\n### Reference Answer:\nThe house is big.\n\n### Response:\n" in prompt
    assert [ex.response_text for ex in examples] == [
        "The house is big, yes.", "I have a dog.", "Good morning!", "I have a cat and a dog.",
        "The weather is really nice today.", "How are you?",
    ]
    assert examples[0].messages[0]["content"] == "Translate this from German to English:\nGerman: Das Haus ist groß.\nEnglish:"
    assert ctx.stats["rewrites_kept"] == 2 and ctx.stats["kept_share"] == pytest.approx(2 / 6)
    assert ctx.stats["rejected_by_phrase"] == 3 and ctx.stats["rejected_by_chrf"] == 1
    assert ctx.stats["chrf_floor"] == 50.0

    strict = context(FakeGenerator(lambda r: rewrites[pair_of(r).reference]))
    SDFT(SDFT.Options(chrf_floor=90.0)).build_training_examples(strict)
    assert strict.stats["rewrites_kept"] == 0


def test_seqkd_trains_on_own_translations_and_replaces_empty_ones():
    from baselines.seqkd import SeqKD

    own = {"The house is big.": "The home is big.\n\nHaus can also mean home.", "I have a dog.": "\n"}
    ctx = context(FakeGenerator(lambda r: own.get(pair_of(r).reference, "Something.")))
    examples = SeqKD().build_training_examples(ctx)
    assert [ex.response_text for ex in examples[:3]] == ["The home is big.", "I have a dog.", "Something."]
    assert ctx.original.calls[0][0][0].assistant_prefix == ""
    assert ctx.stats["empty_outputs_replaced_by_reference"] == 1


def test_replay_mixes_general_instructions_at_the_ratio(tiny_data):
    from baselines.replay import Replay, ReplayOptions

    ctx = context(None, tiny_data, seed=1)
    examples = Replay().build_training_examples(ctx)
    replay = [ex for ex in examples if ex.source == "replay"]
    assert len(examples) == 8 and len(replay) == 2  # 25% of the list
    assert all(ex.response[0].kind == "replay" for ex in replay)
    by_prompt = {(a["instruction"] + (f"\n\n{a['input']}" if a["input"] else "")): a["output"] for a in ALPACA}
    assert all(by_prompt[ex.messages[0]["content"]] == ex.response_text for ex in replay)
    assert len({ex.messages[0]["content"] for ex in replay}) == 2  # no repeats while the pool suffices

    many = Replay(ReplayOptions(ratio=0.5)).build_training_examples(context(None, tiny_data, seed=1))
    again = Replay(ReplayOptions(ratio=0.5)).build_training_examples(context(None, tiny_data, seed=1))
    assert sum(ex.source == "replay" for ex in many) == 6  # drawn with replacement from 3
    assert [ex.messages for ex in many] == [ex.messages for ex in again]
    with pytest.raises(UserError, match="ratio"):
        Replay(ReplayOptions(ratio=1.0)).check_ranges()


def lora_model(tokenizer):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(build_tiny_model(tokenizer), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))


def test_kl_is_zero_for_the_original_and_positive_once_the_adapter_moves(tiny_tokenizer):
    from baselines.kl import KL

    model = lora_model(tiny_tokenizer)
    item = tokenise_example(tiny_tokenizer, Vanilla().build_training_examples(context(None))[0], 512)
    batch = collate([item], tiny_tokenizer.pad_token_id)
    kl = KL()

    def value():
        outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return kl.extra_loss(model, batch, outputs).item()

    assert value() == pytest.approx(0.0, abs=1e-7)  # lora_B starts at zero
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    assert value() > 1e-4

    current, reference = torch.randn(1, 5, 11), torch.randn(1, 5, 11)
    weights = torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.0]])
    expected = torch.nn.functional.kl_div(
        torch.log_softmax(current[0, 1:3], -1), torch.log_softmax(reference[0, 1:3], -1), log_target=True, reduction="batchmean"
    )
    assert float(response_kl(reference, current, weights)) == pytest.approx(float(expected), abs=1e-6)


def test_kl_refuses_full_finetuning(tiny_model, tiny_tokenizer):
    from baselines.kl import KL

    batch = collate([tokenise_example(tiny_tokenizer, Vanilla().build_training_examples(context(None))[0], 512)], 0)
    with pytest.raises(UserError, match="needs a LoRA adapter"):
        KL().extra_loss(tiny_model, batch, tiny_model(input_ids=batch["input_ids"]))


def test_wise_interpolates_between_original_and_fine_tuned(tiny_tokenizer):
    from baselines.wise import WiSE, WiSEOptions

    ids = torch.tensor([[1, 5, 9, 42, 7]])
    model = lora_model(tiny_tokenizer)
    with torch.no_grad():
        with model.disable_adapter():
            original = model(input_ids=ids).logits
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
        tuned = model(input_ids=ids).logits
        b_before = {n: p.clone() for n, p in model.named_parameters() if "lora_B" in n}
        WiSE(WiSEOptions(alpha=1.0)).after_training(model)
        assert torch.allclose(model(input_ids=ids).logits, tuned)
        WiSE(WiSEOptions(alpha=0.5)).after_training(model)
        assert all(torch.allclose(p, 0.5 * b_before[n]) for n, p in model.named_parameters() if "lora_B" in n)
        WiSE(WiSEOptions(alpha=0.0)).after_training(model)
        assert torch.allclose(model(input_ids=ids).logits, original, atol=1e-6)

    full = build_tiny_model(tiny_tokenizer)
    start = {n: p.detach().clone() for n, p in full.named_parameters()}
    with torch.no_grad():
        for param in full.parameters():
            param.add_(1.0)
    WiSE(WiSEOptions(alpha=0.25)).after_training(full, original_state=start)
    assert all(torch.allclose(p, start[n] + 0.25) for n, p in full.named_parameters())


PLUGIN = '''
from harness.plugins.method import Method, Segment, TrainingExample
from harness.model.prompts import translation_prompt, user_turn
from harness.plugins.registry import register_method


@register_method
class EchoReference(Method):
    name = "echo_reference"
    description = "Test plugin: the reference said twice."

    def build_training_examples(self, ctx):
        return [TrainingExample(user_turn(translation_prompt(p)), [Segment(p.reference + " " + p.reference)]) for p in ctx.pairs]
'''


def test_a_method_from_an_installed_package_is_registered(tmp_path, monkeypatch):
    (tmp_path / "my_plugin_method.py").write_text(PLUGIN)
    dist = tmp_path / "my_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[radis_bench.methods]\necho_reference = my_plugin_method\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    # the plugin stays out of other tests
    monkeypatch.setattr(registry, "_registered", {group: dict(table) for group, table in registry._registered.items()})
    monkeypatch.setattr(registry, "_loaded_all", set())
    monkeypatch.delitem(sys.modules, "my_plugin_method", raising=False)

    methods = registry.methods()
    assert {"echo_reference", "radis", "vanilla"} <= set(methods)
    examples = registry.get_method("echo_reference")().build_training_examples(context(None))
    assert examples[0].response_text == "The house is big. The house is big."
