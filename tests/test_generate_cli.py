"""``spec generate``: the streamed text is transformers generate's, on the shipped model and on a tiny random
model directory with a chat template (``--chat``); refusals exit 2 with the fix and no traceback."""

from __future__ import annotations

import io
import sys

import pytest
import torch

from spec.apps.cli import main
from spec.apps.shipped import heldout_prompts, load_shipped, shipped_names
from spec.testing.models import tiny_model
from test_text import make_tokenizer

needs_shipped = pytest.mark.skipif(not shipped_names(), reason="the shipped model is not installed")


def run_cli(args, capsys, monkeypatch, stdin: str = ""):
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    status = main(["generate", *args])
    out = capsys.readouterr()
    return status, out.out, out.err


@pytest.fixture(scope="module")
def shipped():
    return load_shipped()


def hf_text(model, decoding, ids, max_new_tokens, **kwargs):
    """transformers generate's greedy text (``decoding``: the tokenizer that decodes it)."""
    out = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False, **kwargs)
    return decoding.decode(out[0, len(ids):], skip_special_tokens=True)


@needs_shipped
def test_shipped_greedy_text_is_transformers_generate(shipped, capsys, monkeypatch):
    model, tokenizer = shipped
    prompt = heldout_prompts()[1]
    expected = hf_text(model, tokenizer, tokenizer(prompt).input_ids, 32)
    status, out, err = run_cli(["--max-new-tokens", "32"], capsys, monkeypatch, stdin=prompt)  # prompt on stdin
    assert status == 0 and out == expected + "\n"
    footer = err.strip().splitlines()[-1]
    assert footer.startswith("[32 tokens in") and "tokens/s" in footer and "mean accepted length" in footer
    assert "speedup" not in err and "accepted drafts + 1" in footer
    # A stop string inside the text: the same cut as transformers' stop_strings, through another drafter.
    stop = expected[len(expected) // 2: len(expected) // 2 + 3]
    cut = hf_text(model, tokenizer, tokenizer(prompt).input_ids, 32, stop_strings=[stop], tokenizer=tokenizer)
    status, out, err = run_cli(["--prompt", prompt, "--max-new-tokens", "32", "--drafter", "medusa", "--stop", stop],
                               capsys, monkeypatch)
    assert status == 0 and out == cut + "\n" and stop in cut and len(cut) < len(expected)
    assert "stopped: stop_string" in err


@needs_shipped
def test_shipped_text_pipeline_is_transformers_generate(shipped):
    from spec.apps.shipped import shipped_path
    from spec.text import TextGenerator

    model, tokenizer = shipped
    generator = TextGenerator.from_pretrained(shipped_path(), drafter="hydra")
    prompt = heldout_prompts()[2]
    out = generator.generate(prompt, max_new_tokens=24, stop_strings=["\n\n\n"])
    assert out.text == hf_text(model, tokenizer, tokenizer(prompt).input_ids, 24, stop_strings=["\n\n\n"],
                               tokenizer=tokenizer)
    assert out.mean_accepted_length > 1  # trained heads: several tokens per step
    # The same through transformers' own generate, handing the loop to spec.
    from spec.text import CUSTOM_GENERATE

    ids = torch.tensor([tokenizer(prompt).input_ids])
    for kwargs in ({}, {"stop_strings": [out.text[10:13]], "tokenizer": tokenizer}):
        expected = model.generate(ids, max_new_tokens=24, do_sample=False, **kwargs)
        got = model.generate(ids, custom_generate=CUSTOM_GENERATE, trust_remote_code=True,
                             drafter=generator.decoder.drafter, tree=generator.decoder.tree_builder,
                             max_new_tokens=24, **kwargs)
        assert torch.equal(got, expected)


@needs_shipped
def test_chat_on_a_tokenizer_without_template_is_refused(capsys, monkeypatch):
    status, out, err = run_cli(["--chat", "--drafter", "none"], capsys, monkeypatch, stdin="hello\n")
    assert status == 2 and "chat template" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def chat_model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("chat-model")
    model = tiny_model("llama", vocab_size=90, dtype=torch.float32)
    model.generation_config.eos_token_id = 2  # "</s>", which ends each turn of the template
    model.save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path, model


def test_chat_session_is_transformers_generate_turn_by_turn(chat_model_dir, capsys, monkeypatch):
    path, model = chat_model_dir
    tokenizer = make_tokenizer()
    status, out, err = run_cli(["--model", str(path), "--chat", "--system", "the lazy dog", "--max-new-tokens",
                                "12", "--tree", "[[0], [0, 0]]", "--drafter", "none"], capsys, monkeypatch,
                               stdin="hello world\nwhat is the answer?\n\n")
    assert status == 2 and "--tree" in err  # no drafter: a tree does not apply
    status, out, err = run_cli(["--model", str(path), "--chat", "--system", "the lazy dog", "--max-new-tokens",
                                "12"], capsys, monkeypatch, stdin="hello world\nwhat is the answer?\n\n")
    assert status == 0, err
    messages = [{"role": "system", "content": "the lazy dog"}]
    expected = []
    for turn in ("hello world", "what is the answer?"):
        messages.append({"role": "user", "content": turn})
        ids = tokenizer(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
                        add_special_tokens=False).input_ids
        answer = hf_text(model, tokenizer, ids, 12)
        messages.append({"role": "assistant", "content": answer})
        expected.append(answer)
    assert out == "".join(a + "\n" for a in expected)
    assert err.count("mean accepted length") == 2
    # One prompt with a stop string, through the same model directory.
    full = hf_text(model, tokenizer, tokenizer("the answer is").input_ids, 16, eos_token_id=None)
    stop = full[4:7]
    cut = hf_text(model, tokenizer, tokenizer("the answer is").input_ids, 16, stop_strings=[stop],
                  tokenizer=tokenizer)
    status, out, err = run_cli(["--model", str(path), "the answer is", "--max-new-tokens", "16", "--stop", stop],
                               capsys, monkeypatch)
    assert status == 0 and out == cut + "\n" and stop in cut


@pytest.mark.parametrize("args, message", [
    (["x", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["x", "--stop", ""], "--stop is empty"),
    (["x", "--top-k", "5"], "--temperature 0"),
    (["x", "--top-p", "1.5", "--temperature", "1"], "--top-p"),
    (["x", "--system", "be brief"], "add --chat"),
    (["x", "--chat"], "stdin"),
    (["x", "--prompt-index", "0"], "give one of them"),
    (["x", "--prompt", "y"], "given twice"),
    (["   "], "prompt is empty"),
    (["x", "--drafter", "eagle-x"], "--drafter"),
    (["x", "--model", "/nonexistent/model"], "does not exist"),
])
def test_bad_options_are_refused_before_loading(args, message, capsys, monkeypatch):
    if not shipped_names() and "--model" not in args:
        pytest.skip("the shipped model is not installed")
    status, out, err = run_cli(args, capsys, monkeypatch)
    assert status == 2 and message in err and "Traceback" not in err and out == ""


def test_help_explains_the_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert exit_.value.code == 0
    for option in ("--chat", "--stop", "--drafter", "--tree", "--temperature", "--verifier", "--compile", "stdin",
                   "mean accepted length"):
        assert option in text


def test_sampling_options_reach_the_decoder_and_a_seed_repeats(chat_model_dir, capsys, monkeypatch):
    path, model = chat_model_dir
    args = ["--model", str(path), "the answer is", "--max-new-tokens", "12", "--temperature", "1.5", "--top-k", "40",
            "--top-p", "0.95"]
    runs = [run_cli(args + ["--seed", str(seed)], capsys, monkeypatch)[1] for seed in (1, 1, 2, 3)]
    assert runs[0] == runs[1]  # same seed, same text
    greedy = run_cli(["--model", str(path), "the answer is", "--max-new-tokens", "12"], capsys, monkeypatch)[1]
    assert len(set(runs[1:] + [greedy])) > 1  # sampling is on: seeds (or greedy) give different texts
