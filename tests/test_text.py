"""Issue 19: text in, text out. The text pipeline, streaming, logprobs, model.generate(custom_generate=...),
and the refusals (bad prompts, tokenizers, stop strings, streamers, concurrent use), on a tiny random Llama
with a tokenizer and chat template built here."""

from __future__ import annotations

import threading

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, trainers
from transformers import PreTrainedTokenizerFast, TextIteratorStreamer

from spec import (AutoregressiveDecoder, GreedyAcceptor, MedusaDrafter, RejectionSamplingAcceptor, SpeculativeDecoder,
                  make_verifier)
from spec.errors import ConcurrentUseError, ConfigurationError, InputError, StreamerError, TokenizerError
from spec.sampling import processed_logits
from spec.protocols import SamplingParams
from spec.testing.drafters import OracleDrafter
from spec.testing.models import tiny_model
from spec.text import CUSTOM_GENERATE, TextGenerator
from spec.trees import StaticTreeBuilder, chain_tree, tree_from_choices

CORPUS = ["hello world, the quick brown fox jumps over the lazy dog.", "what is the answer? the answer is forty two!",
          "user assistant system hello there\n"] * 20
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
TREE = [[0], [1], [0, 0], [0, 1], [0, 0, 0]]


def make_tokenizer(chat_template: bool = True, vocab_size: int = 90) -> PreTrainedTokenizerFast:
    """A character-pair BPE of ``vocab_size`` tokens (specials included), built in-process: no hub."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.decoder = decoders.Fuse()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>"],
        show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    if chat_template:
        fast.chat_template = TEMPLATE
    return fast


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", vocab_size=90)  # the tokenizer's size; float64: logprobs compare to ~1e-12


def medusa_generator(model, tokenizer):
    drafter = MedusaDrafter.from_model(model, num_heads=3, seed=0)
    return TextGenerator.from_pretrained(model, tokenizer=tokenizer, drafter=drafter, tree=TREE)


def oracle_generator(model, tokenizer, ids, max_new_tokens, accuracy=0.9):
    """A speculative generator whose drafter knows the greedy continuation of ``ids``: several tokens per step."""
    reference = AutoregressiveDecoder(model).generate(torch.tensor([ids]), max_new_tokens=max_new_tokens).sequences
    drafter = OracleDrafter(reference, 90, accuracy=accuracy, max_depth=4, seed=0)
    decoder = SpeculativeDecoder(model, drafter, StaticTreeBuilder(chain_tree(4)), make_verifier(model),
                                 RejectionSamplingAcceptor())
    return TextGenerator(decoder, tokenizer)


def hf_greedy(model, ids, max_new_tokens, **kwargs):
    out = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False, **kwargs)
    return out[0, len(ids):].tolist()


PROMPTS = ["hello world, the", [{"role": "user", "content": "what is the answer?"}],
           [{"role": "system", "content": "the lazy dog"}, {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "hello there"}, {"role": "user", "content": "what is the"}]]


@pytest.mark.parametrize("prompt", PROMPTS, ids=["text", "chat", "multi-turn"])
def test_greedy_text_is_transformers_generate(model, tokenizer, prompt):
    generator = medusa_generator(model, tokenizer)
    out = generator.generate(prompt, max_new_tokens=24, eos_token_id=None)
    ids = list(out.prompt_ids)
    if isinstance(prompt, str):
        assert ids == tokenizer(prompt).input_ids
    else:
        assert ids == tokenizer(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False),
                                add_special_tokens=False).input_ids
        assert ids[-1] == tokenizer.convert_tokens_to_ids("<|assistant|>")
    expected = hf_greedy(model, ids, 24)
    assert list(out.token_ids) == expected
    assert out.text == tokenizer.decode(expected, skip_special_tokens=True)
    assert out.finish_reason == "length"


def test_stop_strings_match_transformers_across_token_boundaries(model, tokenizer):
    generator = medusa_generator(model, tokenizer)
    prompt = "the answer is"
    full = generator.generate(prompt, max_new_tokens=30, eos_token_id=None)
    pieces = [tokenizer.decode([t], skip_special_tokens=True) for t in full.token_ids]
    # A stop string that starts inside one token and ends inside a later one (not at the text's start).
    k = next(i for i in range(3, len(pieces) - 2) if len(pieces[i]) >= 2 and len(pieces[i + 1]) >= 1)
    stop = pieces[k][1:] + pieces[k + 1][:1]
    assert full.text.find(stop) >= len("".join(pieces[:k])), "the stop string must first occur where it was cut"
    out = generator.generate(prompt, max_new_tokens=30, eos_token_id=None, stop_strings=[stop, "never seen zz"])
    expected = hf_greedy(model, list(full.prompt_ids), 30, stop_strings=[stop, "never seen zz"], tokenizer=tokenizer)
    assert list(out.token_ids) == expected == list(full.token_ids[: k + 2])
    assert out.finish_reason == "stop_string" and out.stop_string == stop and stop in out.text


def test_eos_from_the_generation_config_stops_like_transformers(model, tokenizer):
    generator = medusa_generator(model, tokenizer)
    full = generator.generate("hello", max_new_tokens=20, eos_token_id=None)
    eos = full.token_ids[6]
    model.generation_config.eos_token_id = eos
    try:
        out = generator.generate("hello", max_new_tokens=20)  # "default": the generation config's EOS
        expected = hf_greedy(model, list(full.prompt_ids), 20)
    finally:
        model.generation_config.eos_token_id = None
    assert list(out.token_ids) == expected == list(full.token_ids[: full.token_ids.index(eos) + 1])
    assert out.finish_reason == "eos"


class Recorder:
    def __init__(self):
        self.puts: list[list[int]] = []
        self.ended = 0

    def put(self, value):
        assert value.dim() == 2 and value.shape[0] == 1 and value.dtype == torch.long
        assert not self.ended, "put after end"
        self.puts.append(value[0].tolist())

    def end(self):
        self.ended += 1


def test_streaming_pieces_arrive_per_step_and_join_to_the_text(model, tokenizer):
    prompt = [{"role": "user", "content": "hello world"}]
    ids = tokenizer(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False),
                    add_special_tokens=False).input_ids
    generator = oracle_generator(model, tokenizer, ids, 24)
    recorder = Recorder()
    out = generator.generate(prompt, max_new_tokens=24, eos_token_id=None, streamer=recorder)
    assert recorder.ended == 1
    assert recorder.puts[0] == ids  # the prompt first, as transformers streams it
    steps = recorder.puts[1:]
    assert len(steps) >= 2 and len(steps) == len(out.steps)  # pieces arrive during generation, one per step
    assert max(len(s) for s in steps) > 1  # several tokens per step
    assert sum(steps, []) == list(out.token_ids) == hf_greedy(model, ids, 24)
    iterator = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    again = generator.generate(prompt, max_new_tokens=24, eos_token_id=None, streamer=iterator)
    assert "".join(iterator) == again.text == out.text


def test_logprobs_equal_an_autoregressive_pass_in_float64(model, tokenizer):
    prompt = "the quick brown"
    ids = tokenizer(prompt).input_ids
    generator = oracle_generator(model, tokenizer, ids, 16, accuracy=0.8)
    for settings in (dict(), dict(temperature=0.7, top_k=20, top_p=0.9, seed=3), dict(temperature=1.3, seed=5)):
        out = generator.generate(prompt, max_new_tokens=16, eos_token_id=None, return_logprobs=True, **settings)
        assert out.logprobs.dtype == torch.float64 and out.logprobs.shape == (len(out.token_ids),)
        params = SamplingParams(**settings)
        torch.testing.assert_close(out.logprobs, forward_pass_logprobs(model, ids, out.token_ids, params),
                                   rtol=0, atol=1e-10)
        assert bool(torch.isfinite(out.logprobs).all())  # an emitted token was never filtered out
        ar = AutoregressiveDecoder(model).generate(torch.tensor([ids]), max_new_tokens=16, output_logprobs=True,
                                                   **settings)
        torch.testing.assert_close(ar.logprobs, forward_pass_logprobs(model, ids, ar.new_tokens.tolist(), params),
                                   rtol=0, atol=1e-10)
        if params.is_greedy:  # the same tokens: the baseline reports the same numbers
            assert ar.new_tokens.tolist() == list(out.token_ids)
            torch.testing.assert_close(ar.logprobs, out.logprobs, rtol=0, atol=1e-10)


def forward_pass_logprobs(model, ids, tokens, params):
    """One plain forward pass over prompt + ``tokens``; spec.sampling's processed distribution at each position
    (the raw softmax when greedy), in float64."""
    logits = model(torch.tensor([ids + list(tokens)])).logits[0, len(ids) - 1: -1]
    scores = logits if params.is_greedy else processed_logits(logits, params)
    return scores.double().log_softmax(-1).gather(-1, torch.tensor(list(tokens))[:, None])[:, 0]


def test_greedy_logprobs_are_transformers_transition_scores(model, tokenizer):
    ids = tokenizer("hello world").input_ids
    out = medusa_generator(model, tokenizer).generate("hello world", max_new_tokens=8, eos_token_id=None,
                                                       return_logprobs=True)
    hf = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False, output_scores=True,
                        return_dict_in_generate=True)
    scores = model.compute_transition_scores(hf.sequences, hf.scores, normalize_logits=True)[0]
    # transformers keeps scores in float32 (generate casts them), so agreement is to float32's precision.
    torch.testing.assert_close(out.logprobs, scores.double(), rtol=0, atol=1e-6)


def test_custom_generate_is_model_generate(model, tokenizer):
    ids = torch.tensor([tokenizer("what is the").input_ids])
    drafter = MedusaDrafter.from_model(model, num_heads=3, seed=0)
    expected = model.generate(ids, max_new_tokens=20, do_sample=False)
    out = model.generate(ids, custom_generate=CUSTOM_GENERATE, trust_remote_code=True, drafter=drafter,
                         tree=tree_from_choices(TREE), max_new_tokens=20)
    assert torch.equal(out, expected)
    text = tokenizer.decode(expected[0, ids.shape[1]:])
    stop = text[5:8]
    expected = model.generate(ids, max_new_tokens=20, do_sample=False, stop_strings=[stop], tokenizer=tokenizer)
    recorder = Recorder()
    out = model.generate(ids, custom_generate=CUSTOM_GENERATE, trust_remote_code=True, drafter=drafter, tree=TREE,
                         max_new_tokens=20, stop_strings=[stop], tokenizer=tokenizer, streamer=recorder)
    assert torch.equal(out, expected) and out.shape[1] < ids.shape[1] + 20
    assert sum(recorder.puts[1:], []) == out[0, ids.shape[1]:].tolist() and recorder.ended == 1
    # Chat messages: the ids the template renders, decoded the same way.
    chat = tokenizer(tokenizer.apply_chat_template(PROMPTS[2], add_generation_prompt=True, tokenize=False),
                     add_special_tokens=False, return_tensors="pt").input_ids
    assert torch.equal(model.generate(chat, custom_generate=CUSTOM_GENERATE, trust_remote_code=True,
                                      drafter=drafter, tree=TREE, max_new_tokens=16),
                       model.generate(chat, max_new_tokens=16, do_sample=False))
    # No drafter: spec's autoregressive decoder, still transformers' output.
    assert torch.equal(model.generate(ids, custom_generate=CUSTOM_GENERATE, trust_remote_code=True,
                                      max_new_tokens=5), model.generate(ids, max_new_tokens=5, do_sample=False))


@pytest.mark.parametrize("prompt", [123, None, b"hello", torch.tensor([1, 2]), [1, 2, 3], [], [{"role": "user"}]])
def test_a_prompt_that_is_not_text_or_messages_is_refused(model, tokenizer, prompt):
    with pytest.raises(InputError, match="prompt|message|chat"):
        medusa_generator(model, tokenizer).generate(prompt, max_new_tokens=2)


def test_messages_need_a_chat_template(model):
    generator = TextGenerator.from_pretrained(model, tokenizer=make_tokenizer(chat_template=False))
    with pytest.raises(TokenizerError, match="chat template"):
        generator.generate([{"role": "user", "content": "hi"}], max_new_tokens=2)
    assert generator.generate("hello", max_new_tokens=2).token_ids  # plain text still works


def test_a_tokenizer_for_another_vocabulary_is_refused(tokenizer):
    small = tiny_model("llama", vocab_size=64)
    with pytest.raises(TokenizerError, match="90 tokens but the model predicts 64"):
        TextGenerator.from_pretrained(small, tokenizer=tokenizer)
    with pytest.raises(TokenizerError):
        TextGenerator(AutoregressiveDecoder(small), tokenizer)


def test_flags_must_be_bools(model, tokenizer):
    generator = medusa_generator(model, tokenizer)
    with pytest.raises(InputError, match="return_logprobs must be True or False"):
        generator.generate("hello", max_new_tokens=2, return_logprobs="yes")
    with pytest.raises(InputError, match="output_logprobs"):
        AutoregressiveDecoder(model).generate(torch.tensor([[1, 2]]), max_new_tokens=2, output_logprobs=1)


@pytest.mark.parametrize("stops", [[""], ["ok", ""], [5], "", [None]])
def test_bad_stop_strings_are_refused(model, tokenizer, stops):
    with pytest.raises(InputError, match="stop string"):
        medusa_generator(model, tokenizer).generate("hello", max_new_tokens=2, stop_strings=stops)


class Failing(Recorder):
    def __init__(self, after: int):
        super().__init__()
        self.after = after

    def put(self, value):
        super().put(value)
        if len(self.puts) > self.after:
            raise ValueError("disk full")


def test_a_raising_streamer_stops_generation_and_the_decoder_stays_usable(model, tokenizer):
    generator = medusa_generator(model, tokenizer)
    expected = generator.generate("hello world", max_new_tokens=12, eos_token_id=None)
    streamer = Failing(after=2)
    with pytest.raises(StreamerError, match="disk full") as caught:
        generator.generate("hello world", max_new_tokens=12, eos_token_id=None, streamer=streamer)
    assert isinstance(caught.value.__cause__, ValueError)
    assert streamer.ended == 1 and len(streamer.puts) == 3  # no put after the failure; end() still called once
    again = generator.generate("hello world", max_new_tokens=12, eos_token_id=None)
    assert again.token_ids == expected.token_ids
    with pytest.raises(InputError, match="put"):
        generator.generate("hello", max_new_tokens=2, streamer=object())


def test_concurrent_calls_on_one_decoder_are_refused_and_the_first_is_unharmed(model, tokenizer):
    generator = medusa_generator(model, tokenizer)
    expected = generator.generate("hello world", max_new_tokens=12, eos_token_id=None)
    inside, release = threading.Event(), threading.Event()

    class Blocking(Recorder):
        def put(self, value):
            super().put(value)
            if len(self.puts) == 2:  # mid-generation: the caches hold this sequence
                inside.set()
                release.wait(30)

    results = {}
    first = threading.Thread(target=lambda: results.setdefault("first", generator.generate(
        "hello world", max_new_tokens=12, eos_token_id=None, streamer=Blocking())))
    first.start()
    assert inside.wait(30)
    try:
        with pytest.raises(ConcurrentUseError, match="already generating"):
            generator.generate("the answer", max_new_tokens=12)
        # Another decoder sharing the same drafter object is refused too: the drafter holds the state.
        other = SpeculativeDecoder(model, generator.decoder.drafter, StaticTreeBuilder(tree_from_choices(TREE)),
                                   make_verifier(model), GreedyAcceptor())
        with pytest.raises(ConcurrentUseError):
            other.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4)
    finally:
        release.set()
        first.join(60)
    assert results["first"].token_ids == expected.token_ids
    # From inside the streamer (the same thread): refused, surfaced as the streamer's failure.
    class Reentrant(Recorder):
        def put(self, value):
            super().put(value)
            generator.generate("hello", max_new_tokens=2)

    with pytest.raises(StreamerError) as caught:
        generator.generate("hello world", max_new_tokens=4, streamer=Reentrant())
    assert isinstance(caught.value.__cause__, ConcurrentUseError)
    assert generator.generate("hello world", max_new_tokens=12, eos_token_id=None).token_ids == expected.token_ids


def test_one_decoder_per_thread_sharing_the_weights_is_correct(model, tokenizer):
    prompts = ["hello world", "the answer is", "what is the", "the lazy dog"]
    drafter = MedusaDrafter.from_model(model, num_heads=3, seed=0)
    expected = {p: medusa_generator(model, tokenizer).generate(p, max_new_tokens=16, eos_token_id=None).token_ids
                for p in prompts}
    results, errors = {}, []

    def work(prompt):
        try:  # its own drafter object over the same heads module, its own verifier; the model is shared
            own = MedusaDrafter(model, drafter.heads)
            generator = TextGenerator.from_pretrained(model, tokenizer=tokenizer, drafter=own, tree=TREE)
            for _ in range(2):
                results[prompt] = generator.generate(prompt, max_new_tokens=16, eos_token_id=None).token_ids
        except Exception as exc:  # noqa: BLE001 -- reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and results == expected


def test_from_pretrained_loads_the_model_directory_and_heads_by_path_or_name(model, tmp_path):
    from spec.errors import CheckpointError
    from spec.trees import save_tree

    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    make_tokenizer().save_pretrained(model_dir)
    drafter = MedusaDrafter.from_model(model, num_heads=3, seed=0)
    drafter.save_pretrained(model_dir / "heads" / "medusa")
    save_tree(model_dir / "trees" / "medusa.json", tree_from_choices(TREE))
    expected = medusa_generator(model, make_tokenizer()).generate("hello world", max_new_tokens=12, eos_token_id=None)
    by_name = TextGenerator.from_pretrained(model_dir, drafter="medusa", dtype="float64")
    assert by_name.decoder.tree_builder.tree().num_nodes == len(TREE) + 1  # the tree saved beside the heads
    by_path = TextGenerator.from_pretrained(model_dir, drafter=model_dir / "heads" / "medusa", dtype="float64")
    assert by_path.decoder.tree_builder.tree().max_depth == 3  # no tree given: a chain as deep as the heads
    as_trained = TextGenerator.from_pretrained(model_dir, drafter="medusa", dtype="float64", draft_weights="float")
    # Heads loaded here draft in int8 on the CPU unless told otherwise; output is the same either way.
    assert [g.decoder.drafter.draft_weights for g in (by_name, by_path, as_trained)] == ["int8", "int8", None]
    for generator in (by_name, by_path, as_trained):
        assert generator.generate("hello world", max_new_tokens=12, eos_token_id=None).token_ids == expected.token_ids
    with pytest.raises(ConfigurationError, match="draft_weights"):
        TextGenerator.from_pretrained(model_dir, drafter="medusa", draft_weights="int4")
    with pytest.raises(CheckpointError, match="heads/.*medusa"):
        TextGenerator.from_pretrained(model_dir, drafter="eagle")


def test_the_autoregressive_decoder_is_safe_to_share_between_threads(model, tokenizer):
    generator = TextGenerator.from_pretrained(model, tokenizer=tokenizer)  # no drafter: autoregressive
    prompts = ["hello world", "the answer is", "what is the"]
    expected = {p: generator.generate(p, max_new_tokens=16, eos_token_id=None).token_ids for p in prompts}
    results = {}
    threads = [threading.Thread(target=lambda p=p: results.setdefault(p, generator.generate(
        p, max_new_tokens=16, eos_token_id=None).token_ids)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == expected


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_beams=2), "beam"), (dict(return_dict_in_generate=True), "ids tensor"),
    (dict(attention_mask=torch.tensor([[0, 1, 1, 1]])), "unpadded"), (dict(max_length=10), "max_new_tokens"),
    (dict(repetition_penalty=1.2), "repetition_penalty"), (dict(stop_strings=["x"]), "tokenizer"),
])
def test_custom_generate_refuses_what_it_cannot_honour(model, kwargs, message):
    from spec.errors import SpecError

    with pytest.raises(SpecError, match=message):
        model.generate(torch.tensor([[1, 5, 9, 2]]), custom_generate=CUSTOM_GENERATE, trust_remote_code=True,
                       max_new_tokens=4, **kwargs)


def test_stop_strings_decode_a_window_that_sees_every_match():
    """StopStrings decodes only the last 4 * longest + 4 ids; on a byte-level tokenizer (multi-byte characters
    split across tokens) it must stop exactly where searching the whole decoded text would."""
    from spec.apps.shipped import shipped_names, shipped_path
    from spec.text import StopStrings
    from transformers import AutoTokenizer

    if not shipped_names():
        pytest.skip("the shipped (byte-level) tokenizer is not installed")
    byte_level = AutoTokenizer.from_pretrained(shipped_path(), local_files_only=True)
    rng = torch.Generator().manual_seed(0)
    texts = ["def f(x):\n    return x  # \u00e9t\u00e9 \u4e2d\u6587 \U0001F600 ok\n\n", "a" * 40 + " b\u00e9b\u00e9 c"]
    checked = 0
    for text in texts:
        ids = byte_level(text).input_ids
        for _ in range(20):
            start = int(torch.randint(0, len(text) - 3, (1,), generator=rng))
            stop = text[start: start + int(torch.randint(1, 4, (1,), generator=rng))]
            matcher = StopStrings(byte_level, [stop])
            first = next((n for n in range(1, len(ids) + 1) if stop in byte_level.decode(ids[:n])), None)
            windowed = next((n for n in range(1, len(ids) + 1) if matcher(ids[:n])), None)
            assert windowed == first, (stop, windowed, first)
            checked += first is not None
    assert checked >= 30
