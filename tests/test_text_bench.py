"""Spec-Bench's question format in ``spec bench --prompts``: reading it, multi-turn prompts through the chat
template, and the per-category table with the mean accepted length as Spec-Bench and EAGLE define it."""

from __future__ import annotations

import json

import pytest
import torch

from spec import AutoregressiveDecoder, GreedyAcceptor, MedusaDrafter, SpeculativeDecoder, make_verifier
from spec.apps.shipped import shipped_names
from spec.bench import DecoderMethod, run_benchmark
from spec.bench.metrics import mean_accepted_tokens
from spec.bench.prompts import (MEAN_ACCEPTED_DEFINITION, CategoryRecorder, category_table, expand_turns,
                                first_answer, prompt_categories, read_bench_prompts)
from spec.errors import DataError, TokenizerError
from spec.testing.models import tiny_model
from spec.trees import StaticTreeBuilder, tree_from_choices
from test_text import make_tokenizer

QUESTIONS = [
    {"question_id": 81, "category": "writing", "turns": ["hello world", "what is the answer?"]},
    {"question_id": 82, "category": "math", "turns": ["what is the answer? forty"]},
    {"question_id": 83, "category": "writing", "turns": ["the lazy dog"]},
]


def write_jsonl(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def test_spec_bench_questions_and_plain_prompts_are_read(tmp_path):
    questions = read_bench_prompts(write_jsonl(tmp_path / "q.jsonl", QUESTIONS + [{"prompt": "def f():"},
                                                                                  {"text": "x", "category": "code"}]))
    assert [(q.question_id, q.category, q.turns, q.chat) for q in questions] == [
        (81, "writing", ("hello world", "what is the answer?"), True), (82, "math", ("what is the answer? forty",), True),
        (83, "writing", ("the lazy dog",), True), (4, "prompts", ("def f():",), False), (5, "code", ("x",), False)]


@pytest.mark.parametrize("record, message", [
    ({"question_id": 1, "category": "writing", "turns": []}, "turns"),
    ({"question_id": 1, "category": "writing", "turns": ["ok", ""]}, "turns"),
    ({"question_id": 1, "category": "writing", "turns": "hello"}, "turns"),
    ({"question_id": 1, "category": 7, "turns": ["hi"]}, "category"),
    ({"question_id": True, "category": "x", "turns": ["hi"]}, "question_id"),
    ({"prompt": "hi", "category": ""}, "category"),
    ({"question": "hi"}, "turns"),
])
def test_malformed_questions_are_refused_with_the_line(tmp_path, record, message):
    with pytest.raises(DataError, match=message) as caught:
        read_bench_prompts(write_jsonl(tmp_path / "q.jsonl", [{"prompt": "fine"}, record]))
    assert "q.jsonl:2" in str(caught.value)


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", vocab_size=90)


def test_later_turns_include_the_reference_answers_through_the_chat_template(model, tmp_path):
    tokenizer = make_tokenizer()
    questions = read_bench_prompts(write_jsonl(tmp_path / "q.jsonl", QUESTIONS[:1]))
    decoder = AutoregressiveDecoder(model)
    turns = expand_turns(questions, tokenizer, first_answer(decoder, 10, None))
    assert [(t.question_id, t.turn, t.category) for t in turns] == [(81, 0, "writing"), (81, 1, "writing")]
    first = tokenizer(tokenizer.apply_chat_template([{"role": "user", "content": "hello world"}],
                                                    add_generation_prompt=True, tokenize=False),
                      add_special_tokens=False, return_tensors="pt").input_ids
    assert torch.equal(turns[0].ids, first)
    answer = tokenizer.decode(decoder.generate(first, max_new_tokens=10).new_tokens, skip_special_tokens=True)
    conversation = [{"role": "user", "content": "hello world"}, {"role": "assistant", "content": answer},
                    {"role": "user", "content": "what is the answer?"}]
    second = tokenizer(tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False),
                       add_special_tokens=False, return_tensors="pt").input_ids
    assert torch.equal(turns[1].ids, second)
    with pytest.raises(TokenizerError, match="chat template"):
        expand_turns(questions, make_tokenizer(chat_template=False), first_answer(decoder, 4, None))


def test_per_category_table_pools_steps_as_spec_bench_does(model, tmp_path):
    tokenizer = make_tokenizer()
    turns = expand_turns(read_bench_prompts(write_jsonl(tmp_path / "q.jsonl", QUESTIONS)), tokenizer,
                         first_answer(AutoregressiveDecoder(model), 8, None))
    drafter = MedusaDrafter.from_model(model, num_heads=2, seed=0)
    decoder = SpeculativeDecoder(model, drafter, StaticTreeBuilder(tree_from_choices([[0], [1], [0, 0]])),
                                 make_verifier(model), GreedyAcceptor())
    methods = [DecoderMethod("autoregressive", AutoregressiveDecoder(model)), DecoderMethod("medusa", decoder)]
    recorders = [CategoryRecorder(m, prompt_categories(turns), warmup=1) for m in methods]
    report = run_benchmark(recorders, [t.ids for t in turns], max_new_tokens=12, repeats=2, warmup=1,
                           profile_overhead=True)
    assert report.method("medusa").matches_baseline
    by_category = {c: [t for t in turns if t.category == c] for c in ("writing", "math")}
    for recorder in recorders:  # timed runs only: repeats x turns of the category
        assert {c: len(runs) for c, runs in recorder.runs.items()} == {c: 2 * len(ts) for c, ts in by_category.items()}
    # Pooled over every step of every prompt (not a mean of per-prompt means).
    outputs = [decoder.generate(t.ids, max_new_tokens=12) for t in by_category["writing"]]
    pooled = sum(s.accepted + 1 for o in outputs for s in o.steps) / sum(len(o.steps) for o in outputs)
    assert mean_accepted_tokens(outputs) == pytest.approx(pooled)
    table = category_table(recorders, "autoregressive")
    assert "| writing | medusa |" in table and f"| {pooled:.2f} |" in table.split("| writing | medusa |")[1].split("\n")[0]
    assert "| math | autoregressive |" in table and "1.00x | 1.00 |" in table
    assert MEAN_ACCEPTED_DEFINITION in table


@pytest.mark.skipif(not shipped_names(), reason="the shipped model is not installed")
def test_spec_bench_cli_writes_the_category_table(tmp_path, capsys):
    from spec.apps.cli import main

    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "import os\n", "category": "imports"},
                                                 {"prompt": "def add(a, b):", "category": "functions"}])
    out = tmp_path / "bench"
    assert main(["bench", "--prompts", str(prompts), "--max-new-tokens", "8", "--repeats", "1", "--warmup", "0",
                 "--no-transformers", "--no-profile", "--out", str(out)]) == 0
    table = (out / "categories.md").read_text()
    for row in ("| imports | autoregressive |", "| imports | medusa |", "| functions | medusa |"):
        assert row in table
    assert "Spec-Bench and EAGLE" in table and table in capsys.readouterr().out
    spec_bench = write_jsonl(tmp_path / "q.jsonl", QUESTIONS)
    assert main(["bench", "--prompts", str(spec_bench), "--no-transformers", "--out", str(out)]) == 2
    assert "chat template" in capsys.readouterr().err


def test_spec_bench_runs_multi_turn_questions_on_a_chat_model_directory(tmp_path, capsys):
    from spec.apps.cli import main

    model_dir = tmp_path / "model"
    model = tiny_model("llama", vocab_size=90, dtype=torch.float32)
    model.save_pretrained(model_dir)
    make_tokenizer().save_pretrained(model_dir)
    MedusaDrafter.from_model(model, num_heads=2, seed=0).save_pretrained(model_dir / "heads" / "medusa")
    questions = write_jsonl(tmp_path / "q.jsonl", QUESTIONS)
    out = tmp_path / "bench"
    assert main(["bench", "--model", str(model_dir), "--prompts", str(questions), "--drafters", "medusa",
                 "--max-new-tokens", "8", "--repeats", "1", "--warmup", "0", "--no-transformers", "--no-profile",
                 "--out", str(out)]) == 0, capsys.readouterr().err
    table = (out / "categories.md").read_text()
    for row in ("| writing | autoregressive |", "| writing | medusa |", "| math | medusa |"):
        assert row in table
    assert "DIFFERS" not in (out / "report.md").read_text()  # the second turn too: greedy output is the model's
    assert main(["bench", "--model", str(model_dir), "--out", str(out)]) == 2
    assert "--model needs --prompts" in capsys.readouterr().err
    assert main(["bench", "--model", str(model_dir), "--prompts", str(questions), "--drafters", "hydra",
                 "--out", str(out)]) == 2
    assert "choose from medusa" in capsys.readouterr().err
