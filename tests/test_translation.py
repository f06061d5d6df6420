import json
import math
from pathlib import Path

import pytest
import sacrebleu

from harness.config.settings import RunConfig
from harness.errors import UserError
from harness.data.sources import DataSource, sample
from harness.data.records import parse_directions
from harness.plugins.suite import SuiteContext
from harness.plugins.requests import Decoding, Output, Request
from harness.model.generation import GenerationCache, Generator
from harness.model.prompts import translation_prompt, user_turn
from harness.intervals import bootstrap_ci_of
from conftest import configured
from suites import translation
from suites.translation import TranslationSuite, score_corpus

DE_EN = [
    ("Das Haus ist groß.", "The house is big."),
    ("Ich habe einen Hund und eine Katze.", "I have a dog and a cat."),
    ("Guten Morgen!", "Good morning!"),
    ("Das Wetter ist heute schön.", "The weather is nice today."),
]
EN_ZH = [
    ("The house is big.", "这房子很大。"),
    ("I have a dog and a cat.", "我有一只狗和一只猫。"),
    ("Good morning!", "早上好！"),
]


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    """A data dir in the ALMA layout holding small de→en and en→zh test sets."""
    root = tmp_path / "data"
    for folder, name, src, tgt, rows in (("deen", "test.de-en.json", "de", "en", DE_EN),
                                         ("zhen", "test.en-zh.json", "en", "zh", EN_ZH)):
        (root / "alma" / folder).mkdir(parents=True)
        items = [{"translation": {src: s, tgt: t}} for s, t in rows]
        (root / "alma" / folder / name).write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
    return root


def _run_settings(config: dict) -> dict:
    """Run-level settings, the translation suite's own (extraction, comet_model) as its options."""
    own = {k: config.pop(k) for k in ("extraction", "comet_model") if k in config}
    return {**config, "suite_options": {"translation": own}}


def make_ctx(tmp_path, model, tokenizer, data, pairs, **config) -> SuiteContext:
    generator = Generator(model, tokenizer, "under-test", GenerationCache(tmp_path / "generations.sqlite"), batch_size=8)
    return SuiteContext(
        label="original",
        model=model,
        tokenizer=tokenizer,
        generator=generator,
        original_generator=generator,
        data=DataSource.open(data),
        directions=parse_directions(pairs),
        config=RunConfig(pairs=pairs.split(","), **_run_settings(config)),
        workdir=tmp_path / "work",
    )


def prefill(ctx: SuiteContext, pairs, texts, max_new_tokens: int | None = None) -> None:
    """Store outputs in the generation cache under the exact keys the suite will ask for
    (by default the run's max_new_tokens), so the real generator returns known text."""
    gen, decoding = ctx.generator, Decoding(max_new_tokens=max_new_tokens or ctx.config.max_new_tokens)
    gen.cache.put_many([
        (gen.key(gen.prompt_text(Request(user_turn(translation_prompt(p)))), decoding), Output(t, len(t.split()), True))
        for p, t in zip(pairs, texts)
    ])


def metrics_of(result) -> dict:
    return {m.name: m for m in result.metrics}


# --- scoring -----------------------------------------------------------------------


def test_bootstrap_ci_of_brackets_a_corpus_statistic_and_is_seeded():
    items = list(range(1, 41))
    low, high = bootstrap_ci_of(items, lambda xs: sum(xs) / len(xs), n_boot=200, seed=0)
    assert low < 20.5 < high
    assert (low, high) == bootstrap_ci_of(items, lambda xs: sum(xs) / len(xs), n_boot=200, seed=0)
    assert (low, high) != bootstrap_ci_of(items, lambda xs: sum(xs) / len(xs), n_boot=200, seed=1)
    assert bootstrap_ci_of([5], max) == (None, None)


@pytest.mark.parametrize("tgt, rows", [("en", DE_EN), ("zh", EN_ZH)])
def test_references_against_themselves_score_100(tgt, rows):
    refs = [t for _, t in rows]
    scores = score_corpus(refs, refs, tgt)
    assert scores.bleu.value == pytest.approx(100)
    assert scores.chrf.value == pytest.approx(100)
    assert scores.bleu.ci == pytest.approx((100, 100))
    assert scores.sentence_chrf == pytest.approx([100] * len(refs))


def test_scores_match_sacrebleu_and_chinese_targets_use_the_zh_tokenizer():
    hyps, refs = ["我喜欢吃苹果。", "早上好"], ["我喜欢吃香蕉。", "早上好！"]
    zh = score_corpus(hyps, refs, "zh")
    assert zh.bleu.value == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs], tokenize="zh").score)
    assert zh.chrf.value == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs], word_order=2).score)
    assert zh.bleu.value > 20  # character n-grams match; '13a' sees one unmatched word per sentence
    assert sacrebleu.corpus_bleu(hyps, [refs], tokenize="13a").score < 1
    en_hyps, en_refs = ["The house is large.", "Good morning"], ["The house is big.", "Good morning!"]
    en = score_corpus(en_hyps, en_refs, "en")
    assert en.bleu.value == pytest.approx(sacrebleu.corpus_bleu(en_hyps, [en_refs], tokenize="13a").score)
    assert en.sentence_chrf[1] == pytest.approx(sacrebleu.sentence_chrf("Good morning", ["Good morning!"], word_order=2).score)


# --- the suite ---------------------------------------------------------------------


def test_rationale_after_a_blank_line_is_cut_before_scoring(tmp_path, tiny_model, tiny_tokenizer, tiny_data):
    ctx = make_ctx(tmp_path, tiny_model, tiny_tokenizer, tiny_data, "de-en")
    pairs = ctx.data.translation(ctx.directions[0], "test")
    raw = [f"{p.reference}\n\nRationale: 'groß' can mean big or tall; here it is big." for p in pairs]
    prefill(ctx, pairs, raw)
    result = configured(TranslationSuite, ctx).evaluate(ctx)
    m = metrics_of(result)
    assert ctx.generator.stats.generated == 0  # every output came from the prefilled cache
    assert m["de-en/chrf++"].value == pytest.approx(100) and m["de-en/chrf++"].main
    assert m["de-en/bleu"].value == pytest.approx(100)
    assert "first_paragraph" in m["de-en/chrf++"].note
    assert [o["translation"] for o in result.outputs] == [p.reference for p in pairs]
    assert [o["output"] for o in result.outputs] == raw  # the raw output, rationale included, is kept
    assert m["de-en/words"].value == pytest.approx(sum(len(p.reference.split()) for p in pairs) / len(pairs))
    assert m["de-en/words_raw"].value == pytest.approx(m["de-en/words"].value + 11)  # the rationale has 11 words
    assert m["de-en/chars_raw"].value > m["de-en/chars"].value
    assert m["de-en/words"].higher_is_better is None and m["de-en/finished"].value == 1.0
    assert [o["id"] for o in result.outputs] == ["de-en/0", "de-en/1", "de-en/2", "de-en/3"]

    full = make_ctx(tmp_path, tiny_model, tiny_tokenizer, tiny_data, "de-en", extraction="full")
    uncut = metrics_of(configured(TranslationSuite, full).evaluate(full))["de-en/chrf++"]
    assert uncut.value == pytest.approx(score_corpus(raw, [p.reference for p in pairs], "en").chrf.value)
    assert uncut.value < 70 and "'full'" in uncut.note


def test_all_directions_generate_in_one_call_and_average(tmp_path, tiny_model, tiny_tokenizer, tiny_data, monkeypatch):
    ctx = make_ctx(tmp_path, tiny_model, tiny_tokenizer, tiny_data, "de-en,en-zh", eval_size=3)
    calls = []
    real = ctx.generator.generate_many
    monkeypatch.setattr(ctx.generator, "generate_many", lambda items, *a, **k: calls.append(len(items)) or real(items, *a, **k))
    result = configured(TranslationSuite, ctx, max_new_tokens=6).evaluate(ctx)
    assert calls == [6]
    m = metrics_of(result)
    for d in ("de-en", "en-zh"):
        assert 0 <= m[f"{d}/chrf++"].value <= 100 and m[f"{d}/chrf++"].n == 3 and not m[f"{d}/chrf++"].main
        for name in ("bleu", "words_raw", "words", "chars_raw", "chars", "finished"):
            assert math.isfinite(m[f"{d}/{name}"].value)
    assert m["avg/chrf++"].main
    assert m["avg/chrf++"].value == pytest.approx((m["de-en/chrf++"].value + m["en-zh/chrf++"].value) / 2)
    assert m["avg/bleu"].value == pytest.approx((m["de-en/bleu"].value + m["en-zh/bleu"].value) / 2)
    kept = [i for i, _ in sample(list(enumerate(DE_EN)), 3, 0)]
    assert [o["id"] for o in result.outputs[:3]] == [f"de-en/{i}" for i in kept]
    assert all(o["new_tokens"] <= 6 for o in result.outputs)
    assert [(n.metric, n.reason) for n in result.not_scored] == [
        ("de-en/comet", "not scored: no COMET checkpoint (--comet-model)"),
        ("en-zh/comet", "not scored: no COMET checkpoint (--comet-model)"),
    ]


def test_comet_that_cannot_be_loaded_offline_is_not_scored(tmp_path, tiny_model, tiny_tokenizer, tiny_data):
    """A hub name offline is found out when scoring; a local path that holds no checkpoint is a
    user error before any compute (the plan's check), and not scored if a suite meets it."""
    for name, label in (("Unbabel/wmt22-comet-da", "Unbabel/wmt22-comet-da"), (str(tmp_path), f"local checkpoint {tmp_path.name}")):
        ctx = make_ctx(tmp_path, tiny_model, tiny_tokenizer, tiny_data, "de-en", comet_model=name)
        suite = configured(TranslationSuite, ctx, max_new_tokens=4)
        result = suite.evaluate(ctx)
        (missing,) = result.not_scored
        assert missing.metric == "de-en/comet"
        assert missing.reason.startswith(f"not scored: could not load COMET model {label}: ")
        assert "de-en/chrf++" in metrics_of(result)
    assert "COMET model Unbabel/wmt22-comet-da" in configured(TranslationSuite, ctx, comet_model="Unbabel/wmt22-comet-da").check()[0]
    with pytest.raises(UserError, match="holds no checkpoints/model.ckpt"):
        configured(TranslationSuite, ctx, comet_model=str(tmp_path)).check()


# --- COMET through the real unbabel-comet path ----------------------------------------


def build_tiny_comet(root: Path):
    """A randomly initialised COMET RegressionMetric on a tiny XLM-R encoder, built
    entirely offline and saved in the layout comet.load_from_checkpoint reads
    (``checkpoints/model.ckpt`` plus ``hparams.yaml`` one folder up).

    The encoder folder (tokenizer.json from a Unigram model trained in memory, plus a
    tiny XLMRobertaConfig) stands in for the hub's ``xlm-roberta-large``; COMET reads
    its tokenizer and config from ``pretrained_model`` on every load.
    """
    import torch
    import yaml
    from comet.models import RegressionMetric
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import XLMRobertaConfig, XLMRobertaTokenizerFast

    encoder = root / "encoder"
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    trainer = trainers.UnigramTrainer(vocab_size=150, special_tokens=specials, unk_token="<unk>")
    tok.train_from_iterator([s for pair in DE_EN for s in pair] * 10, trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")))
    fast = XLMRobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                   cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")
    fast.save_pretrained(encoder)
    XLMRobertaConfig(vocab_size=len(fast), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=130, pad_token_id=fast.pad_token_id,
                     bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id).save_pretrained(encoder)

    torch.manual_seed(0)
    model = RegressionMetric(pretrained_model=str(encoder), load_pretrained_weights=False, local_files_only=True,
                             hidden_sizes=[8])
    hparams = dict(model.hparams)
    (root / "checkpoints").mkdir()
    ckpt = root / "checkpoints" / "model.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hparams, "pytorch-lightning_version": "2.0.0"}, ckpt)
    (root / "hparams.yaml").write_text(yaml.safe_dump(hparams), encoding="utf-8")
    return ckpt, model


def test_comet_scores_end_to_end_on_a_tiny_offline_checkpoint(tmp_path, tiny_model, tiny_tokenizer, tiny_data, monkeypatch):
    ckpt, built = build_tiny_comet(tmp_path / "tiny-comet")
    ctx = make_ctx(tmp_path, tiny_model, tiny_tokenizer, tiny_data, "de-en", comet_model=str(ckpt))
    pairs = ctx.data.translation(ctx.directions[0], "test")
    translations = ["The house is big.", "I have a cat.", "Morning!", "Today the weather is nice."]
    prefill(ctx, pairs, [f"{t}\n\nNote: a rationale." for t in translations])
    result = configured(TranslationSuite, ctx).evaluate(ctx)

    assert result.not_scored == []
    comet = metrics_of(result)["de-en/comet"]
    assert math.isfinite(comet.value) and comet.n == 4 and comet.ci_low <= comet.value <= comet.ci_high
    assert "local checkpoint tiny-comet" in comet.note and str(ckpt) not in comet.note  # no machine path
    scores = [o["comet"] for o in result.outputs]
    assert comet.value == pytest.approx(sum(scores) / 4)
    # the reloaded checkpoint scores the extracted translations exactly as the model that was saved
    data = [{"src": p.source, "mt": t, "ref": p.reference} for p, t in zip(pairs, translations)]
    expected = built.predict(data, batch_size=8, gpus=0, progress_bar=False).scores
    assert scores == pytest.approx([100 * s for s in expected], abs=1e-4)
    assert len(set(round(s, 6) for s in scores)) > 1

    # a second evaluation reads the score cache and never needs the model; a folder path works too
    def unavailable(_):
        raise AssertionError("COMET model loaded although every score was cached")

    from harness.model import comet as comet_module

    monkeypatch.setattr(comet_module, "_load_comet", unavailable)
    again = make_ctx(tmp_path, tiny_model, tiny_tokenizer, tiny_data, "de-en", comet_model=str(ckpt.parents[1]))
    assert [o["comet"] for o in configured(TranslationSuite, again).evaluate(again).outputs] == scores


# --- the embedded model on real data ------------------------------------------------------


@pytest.mark.slow
def test_smollm2_translates_wmt22_de_en(tmp_path, smollm2, data_dir):
    _, model, tokenizer = smollm2
    ctx = make_ctx(tmp_path, model, tokenizer, data_dir, "de-en", eval_size=20)
    ctx.generator.batch_size = 20
    # 96 new tokens hold a WMT sentence (SmolLM2 averaged ~50) and keep the test within a CPU minute
    result = configured(TranslationSuite, ctx, max_new_tokens=96).evaluate(ctx)
    m = metrics_of(result)
    chrf, bleu = m["de-en/chrf++"], m["de-en/bleu"]
    print(f"SmolLM2-135M WMT22 de-en, 20 items: chrF++ {chrf.value:.2f} [{chrf.ci_low:.2f}, {chrf.ci_high:.2f}], "
          f"BLEU {bleu.value:.2f} [{bleu.ci_low:.2f}, {bleu.ci_high:.2f}], words_raw {m['de-en/words_raw'].value:.1f}, "
          f"words {m['de-en/words'].value:.1f}, finished {m['de-en/finished'].value:.2f}")
    assert 0 < chrf.value < 100 and chrf.main
    assert chrf.ci_low <= chrf.value <= chrf.ci_high
    assert 0 <= bleu.value < 100
    assert len(result.outputs) == 20 and all(o["output"] for o in result.outputs)
    assert len({o["chrf++"] for o in result.outputs}) > 1
