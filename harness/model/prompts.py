"""Prompt conventions shared by methods and suites."""

from __future__ import annotations

from harness.data.records import LANGUAGES, TranslationPair


def translation_prompt(pair: TranslationPair) -> str:
    """The ALMA prompt: 'Translate this from German to English:\\nGerman: ...\\nEnglish:'."""
    src, tgt = LANGUAGES[pair.src_lang], LANGUAGES[pair.tgt_lang]
    return f"Translate this from {src} to {tgt}:\n{src}: {pair.source}\n{tgt}:"


def user_turn(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def render_chat(tokenizer, messages: list[dict], assistant_prefix: str = "") -> str:
    """Chat-template text up to the assistant turn's start, plus an optional prefix of that turn."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text + assistant_prefix


def request_ids(tokenizer, messages: list[dict], assistant_prefix: str = "") -> list[int]:
    """The token ids a generation starts from: the chat template up to the assistant turn,
    then the turn's prefix tokenised on its own. The trainer builds a response the same way
    (``harness.model.training.tokenise_example``): a continuation generated after a prefix is
    trained after exactly the ids it was generated from."""
    ids = tokenizer(render_chat(tokenizer, messages), add_special_tokens=False)["input_ids"]
    if assistant_prefix:
        ids = ids + tokenizer(assistant_prefix, add_special_tokens=False)["input_ids"]
    return list(ids)


def turn_end_tokens(tokenizer) -> list[int]:
    """The tokens the chat template puts after an assistant answer, up to and including the
    end-of-turn token (``<|im_end|>`` for ChatML, ``<end_of_turn>`` for Gemma); the
    tokenizer's eos when the template shows none. Training ends every response with them
    and retention scores them, so both mean the same end."""
    probe = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
    prompt = render_chat(tokenizer, probe[:1]) + "y"
    full = tokenizer.apply_chat_template(probe, tokenize=False)
    if full.startswith(prompt):
        tail = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
        stops = set(end_of_turn_ids(tokenizer))
        for i, token in enumerate(tail):
            if token in stops:
                return list(tail[: i + 1])
    return [tokenizer.eos_token_id]


def end_of_turn_ids(tokenizer) -> list[int]:
    """Token ids that end an assistant turn (the tokenizer's eos plus the chat-end marker, if any)."""
    ids = {tokenizer.eos_token_id}
    for marker in ("<|im_end|>", "<|eot_id|>", "</s>", "<end_of_turn>"):
        tid = tokenizer.convert_tokens_to_ids(marker)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid is not None and tid >= 0:
            ids.add(tid)
    ids.discard(None)
    return sorted(ids)


EXTRACTION_RULES = ("first_paragraph", "first_line", "full")


def extract_translation(text: str, rule: str = "first_paragraph") -> str:
    """Cut the translation from chatty output by a recorded rule.

    ``first_paragraph`` keeps the text before the first blank line (RaDis-trained models
    append a rationale after one), ``first_line`` the text before the first line break,
    ``full`` everything. Leading blank lines are skipped first.
    """
    body = text.strip()
    if rule == "full":
        return body
    if rule == "first_line":
        return body.split("\n", 1)[0].strip()
    if rule == "first_paragraph":
        import re

        return re.split(r"\n\s*\n", body, maxsplit=1)[0].strip()
    raise ValueError(f"unknown extraction rule {rule!r}")
