"""What the trainer feeds is what the original model saw: RaDis rationales are trained after
exactly the ids they were generated from, and every response ends with the chat template's
own end-of-turn marker (the one retention scores), also where it is not the eos token."""

from __future__ import annotations

from harness.config.settings import Budget
from harness.data.records import TranslationPair
from harness.plugins.requests import Output
from harness.plugins.method import MethodContext, Segment, TrainingExample
from harness.model.prompts import request_ids, turn_end_tokens, user_turn
from harness.model.examples import tokenise_example
from radis.rationale import RaDis, RaDisOptions
from suites.retention import teacher_forced_sequences

CORPUS = [
    "Translate this from German to English: German: Das Haus ist groß. English: The house is big.",
    "Haus means house and groß means big. The sentence is simple.\n\nIt describes a house.",
    "Ich habe einen Hund. I have a dog. Guten Morgen! Good morning, how are you today?",
] * 30
PAIRS = [TranslationPair("de", "en", "Das Haus ist groß.", "The house is big."),
         TranslationPair("de", "en", "Ich habe einen Hund.", "I have a dog.")]
LLAMA2 = ("{% for m in messages %}{% if m['role'] == 'user' %}{{ bos_token }}[INST] {{ m['content'] }} [/INST]"
          "{% else %} {{ m['content'] }} {{ eos_token }}{% endif %}{% endfor %}")
GEMMA = ("{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
         "{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


def sentencepiece_tokenizer():
    """A SentencePiece-style (Metaspace, "▁" for spaces) BPE tokenizer like Llama-2's and Mistral's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    bytes_ = [f"<0x{i:02X}>" for i in range(256)]
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=500, special_tokens=["<unk>", "<s>", "</s>", *bytes_]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>")
    fast.chat_template = LLAMA2
    return fast


def gemma_like_tokenizer():
    """A byte-level tokenizer whose template ends a turn with <end_of_turn>, not with its eos."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                        special_tokens=["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    fast.chat_template = GEMMA
    return fast


class RecordingOriginal:
    """The original model as RaDis sees it: records each request and answers with fixed tokens."""

    def __init__(self, tokenizer, text="Haus means house and groß means big.", finished=True):
        self.tokenizer, self.text, self.finished, self.requests = tokenizer, text, finished, []

    def generate_many(self, items, label=""):
        self.requests += [r for r, _ in items]
        ids = self.tokenizer(self.text, add_special_tokens=False)["input_ids"]
        return [Output(self.text, len(ids), self.finished, token_ids=ids) for _ in items]


def radis_examples(tokenizer, **options):
    original = RecordingOriginal(tokenizer, finished=options.pop("finished", True))
    ctx = MethodContext(pairs=list(PAIRS), original=original, data=None, budget=Budget(), seed=0)
    return RaDis(RaDisOptions(**options)).build_training_examples(ctx), original


def check_consistent(tokenizer):
    examples, original = radis_examples(tokenizer)
    for request, example in zip(original.requests, examples):
        context = request_ids(tokenizer, request.messages, request.assistant_prefix)
        trained = tokenise_example(tokenizer, example, 4096)
        assert trained.input_ids[: len(context)] == context
        rationale = example.response[2].ids
        assert trained.input_ids[len(context) : len(context) + len(rationale)] == rationale
        # the reference weighs 1 and the separator and rationale the rationale weight
        n_prompt = len(request_ids(tokenizer, request.messages))
        reference_tokens = trained.weights[n_prompt : len(context)]
        assert reference_tokens and reference_tokens[0] == 1.0 and trained.weights[len(context)] == 1.0 * RaDisOptions().rationale_weight
    return examples


def test_the_rationale_is_trained_after_the_ids_it_was_generated_from_sentencepiece():
    tok = sentencepiece_tokenizer()
    examples = check_consistent(tok)
    # tokenising the separator and rationale on their own, as RaDis first did, puts a stray "▁" before them
    apart = tok("\n\n" + examples[0].response[2].text, add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(apart[0]) == "▁"
    trained = tokenise_example(tok, examples[0], 4096).input_ids
    rationale = examples[0].response[2].ids
    start = next(i for i in range(len(trained)) if trained[i : i + len(rationale)] == rationale)
    assert tok.convert_ids_to_tokens(trained[start - 1]) != "▁"  # the separator's own last token comes right before


def test_the_rationale_is_trained_after_the_ids_it_was_generated_from_byte_level(tiny_tokenizer):
    check_consistent(tiny_tokenizer)


def test_splitting_a_response_into_segments_never_changes_its_tokens(tiny_tokenizer):
    for tok in (tiny_tokenizer, sentencepiece_tokenizer()):
        messages = user_turn("Translate this from German to English:\nGerman: Das Haus ist groß.\nEnglish:")
        whole = tokenise_example(tok, TrainingExample(messages, [Segment("The house is big.\n\nIt is a house.")]), 4096)
        split = tokenise_example(tok, TrainingExample(messages, [Segment("The house is big."), Segment("\n\n", 0.5, "rationale"),
                                                                Segment("It is a house.", 0.5, "rationale")]), 4096)
        assert whole.input_ids == split.input_ids and 0.5 in split.weights


def test_responses_end_with_the_templates_end_of_turn_where_it_is_not_eos():
    tok = gemma_like_tokenizer()
    end = tok.convert_tokens_to_ids("<end_of_turn>")
    assert turn_end_tokens(tok) == [end] and tok.eos_token_id != end
    example = TrainingExample(user_turn("Say hi."), [Segment("Hi there.")])
    item = tokenise_example(tok, example, 4096)
    assert item.input_ids[-1] == end and tok.eos_token_id not in item.input_ids and item.weights[-1] == 1.0
    # retention scores the same marker after a finished answer
    (ids, scored), = teacher_forced_sequences(tok, ["Say hi."], [Output("Hi there.", 3, True)])
    assert ids == item.input_ids and scored == len(item.input_ids) - len(request_ids(tok, user_turn("Say hi.")))


def test_a_rationale_cut_at_the_limit_follows_the_cutoff_option(tiny_tokenizer):
    end = turn_end_tokens(tiny_tokenizer)
    for cutoff, ends, segments in (("keep", True, 3), ("no_end", False, 3), ("drop", True, 1)):
        examples, _ = radis_examples(tiny_tokenizer, cutoff=cutoff, finished=False)
        assert all(len(ex.response) == segments and ex.end_of_turn is ends for ex in examples), cutoff
        ids = tokenise_example(tiny_tokenizer, examples[0], 4096).input_ids
        assert (ids[-len(end):] == end) is ends
    finished, _ = radis_examples(tiny_tokenizer, cutoff="no_end")
    assert all(ex.end_of_turn for ex in finished)  # only cut rationales lose their end of turn
