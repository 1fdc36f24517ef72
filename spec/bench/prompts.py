"""Benchmark prompts: spec's JSONL (``{"prompt": ...}``) and Spec-Bench's question format, with a per-category table.

Spec-Bench (and MT-Bench before it) writes one question per line::

    {"question_id": 81, "category": "writing", "turns": ["Compose a blog post ...", "Rewrite it ..."]}

Every turn is a prompt. Turn ``k`` is the conversation so far rendered with the tokenizer's chat template:
the earlier turns with the answers the reference decoder gave them, then turn ``k`` and the assistant's header.
Every method decodes the same token ids, so their times compare like for like (under greedy decoding each
method's own answers are these answers anyway).

Mean accepted length, as Spec-Bench and EAGLE (tau) report it: tokens gained per verify step, the accepted
drafted tokens plus the one token the target adds, pooled over every step of every prompt (not averaged per
prompt). ``spec.bench.metrics.mean_accepted_tokens`` computes it; autoregressive decoding scores 1.
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any, Callable, Optional, Sequence

import attrs
import torch

from spec.bench import metrics
from spec.bench.methods import Method, MethodRun
from spec.errors import DataError, PathError, TokenizerError
from spec.timing import active_timer

MEAN_ACCEPTED_DEFINITION = ("mean accepted length: tokens gained per verify step (accepted drafted tokens + the "
                            "target's one), pooled over every step of every prompt, as Spec-Bench and EAGLE (tau) "
                            "report it; 1 for autoregressive decoding")
DEFAULT_CATEGORY = "prompts"


def _turns(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(t, str) and t.strip() for t in value)


@attrs.frozen
class BenchQuestion:
    """One question: its id, category and user turns (one for a plain prompt)."""

    question_id: Any = attrs.field(validator=attrs.validators.instance_of((int, str)))
    category: str = attrs.field(validator=attrs.validators.instance_of(str))
    turns: tuple[str, ...] = attrs.field(converter=tuple)
    chat: bool = False  # Spec-Bench questions go through the chat template; plain prompts are raw text

    @turns.validator
    def _check(self, attribute, value):
        if not _turns(list(value)):
            raise DataError(f"Question {self.question_id!r}: turns must be a non-empty list of non-empty strings.")


def read_bench_prompts(path: str | os.PathLike) -> list[BenchQuestion]:
    """Questions from a JSONL file: each line ``{"prompt": ...}`` / ``{"text": ...}`` (raw text; an optional
    ``category``, default ``prompts``) or Spec-Bench's ``{"question_id", "category", "turns"}`` (through the chat template)."""
    from spec.io import parse_json, read_text

    questions = []
    for number, line in enumerate(read_text(path, "--prompts file", PathError, DataError).splitlines(), 1):
        if not line.strip():
            continue
        record = parse_json(line, f"{path}:{number}", DataError)
        where = f"{path}:{number}"
        if isinstance(record, dict) and "turns" in record:
            if not _turns(record["turns"]):
                raise DataError(f"{where}: 'turns' must be a non-empty list of non-empty strings, as in Spec-Bench's "
                                'question.jsonl: {"question_id": 1, "category": "writing", "turns": ["..."]}.')
            category = record.get("category", DEFAULT_CATEGORY)
            qid = record.get("question_id", number)
            if not isinstance(category, str) or not category or isinstance(qid, bool) \
                    or not isinstance(qid, (int, str)):
                raise DataError(f"{where}: 'category' must be a non-empty string and 'question_id' an integer or a "
                                f"string, got {category!r} and {qid!r}.")
            questions.append(BenchQuestion(qid, category, record["turns"], chat=True))
            continue
        text = record.get("prompt", record.get("text")) if isinstance(record, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where} has no non-empty string field 'prompt' (or 'text') and no Spec-Bench 'turns'; "
                            'each line must be an object such as {"prompt": "def add(a, b):"} or {"question_id": 1, '
                            '"category": "coding", "turns": ["Write a function ..."]}.')
        category = record.get("category", DEFAULT_CATEGORY)
        if not isinstance(category, str) or not category:
            raise DataError(f"{where}: 'category' must be a non-empty string, got {category!r}.")
        questions.append(BenchQuestion(record.get("question_id", number), category, [text]))
    if not questions:
        raise DataError(f"The --prompts file {path} holds no prompts; add lines such as {{\"prompt\": \"...\"}}.")
    return questions


@attrs.frozen
class BenchPrompt:
    """One turn to decode: its token ids ``[1, L]`` and where it came from."""

    ids: torch.Tensor
    category: str
    question_id: Any
    turn: int


def expand_turns(questions: Sequence[BenchQuestion], tokenizer: Any,
                 answer: Callable[[torch.Tensor], torch.Tensor]) -> list[BenchPrompt]:
    """Every turn of every question as token ids; ``answer(ids [1, L]) -> new ids`` gives the reference
    answer a later turn's conversation includes (called only for questions with more turns)."""
    prompts = []
    for question in questions:
        if not question.chat:
            ids = tokenizer(question.turns[0], return_tensors="pt").input_ids
            prompts.append(BenchPrompt(ids, question.category, question.question_id, 0))
            continue
        if not getattr(tokenizer, "chat_template", None):
            raise TokenizerError(f"Question {question.question_id!r} is in Spec-Bench's format, whose turns go "
                                 "through the chat template, and this tokenizer has none; give {\"prompt\": ...} "
                                 "lines for raw text, or a model whose tokenizer has a chat template.")
        messages: list[dict] = []
        for index, turn in enumerate(question.turns):
            messages.append({"role": "user", "content": turn})
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
            prompts.append(BenchPrompt(ids, question.category, question.question_id, index))
            if index + 1 < len(question.turns):
                reply = tokenizer.decode(answer(ids), skip_special_tokens=True)
                messages.append({"role": "assistant", "content": reply})
    return prompts


@attrs.define
class CategoryRecorder:
    """Wraps a method, keeping each timed run under its prompt's category (warm-up and profiled runs skipped),
    so one interleaved benchmark also yields a per-category table."""

    method: Method
    categories: dict[int, str]  # id(prompt tensor) -> category
    warmup: int
    runs: dict[str, list[MethodRun]] = attrs.field(factory=lambda: defaultdict(list))
    _seen: dict[int, int] = attrs.field(factory=dict)

    @property
    def name(self) -> str:
        return self.method.name

    def __getattr__(self, item):  # the runner reads .model / .decoder to find the device
        if item in {"method", "categories", "warmup", "runs", "_seen"}:  # not set yet: no recursion
            raise AttributeError(item)
        return getattr(self.method, item)

    def run(self, prompt, max_new_tokens, sampling):
        run = self.method.run(prompt, max_new_tokens, sampling)
        if active_timer() is None:  # profiled runs (under a ForwardTimer) are not timed runs
            calls = self._seen.get(id(prompt), 0)
            self._seen[id(prompt)] = calls + 1
            if calls >= self.warmup:
                self.runs[self.categories[id(prompt)]].append(run)
        return run


def category_table(recorders: Sequence[CategoryRecorder], baseline: str) -> str:
    """Markdown: tokens/s, speedup vs ``baseline`` and mean accepted length per category and method."""
    base = next(r for r in recorders if r.name == baseline)
    categories = list(base.runs)
    head = f"| category | method | tokens/s | speedup vs {baseline} | mean accepted length |"
    rows = [head, "|---|---|---|---|---|"]
    for category in categories:
        base_runs = base.runs[category]
        base_tps = metrics.tokens_per_second([r.new_tokens.numel() for r in base_runs], [r.seconds for r in base_runs])
        for recorder in recorders:
            runs = recorder.runs[category]
            tps = metrics.tokens_per_second([r.new_tokens.numel() for r in runs], [r.seconds for r in runs])
            outputs = [r.output for r in runs if r.output is not None]
            accepted = metrics.mean_accepted_tokens(outputs) if outputs else float("nan")
            rows.append(f"| {category} | {recorder.name} | {tps:.1f} | {metrics.speedup(tps, base_tps):.2f}x | "
                        + ("–" if accepted != accepted else f"{accepted:.2f}") + " |")
    return "\n".join(rows) + f"\n\nTokens/s: total new tokens over total seconds of the timed runs. The {MEAN_ACCEPTED_DEFINITION}.\n"


def prompt_categories(prompts: Sequence[BenchPrompt]) -> dict[int, str]:
    return {id(p.ids): p.category for p in prompts}


def first_answer(decoder: Any, max_new_tokens: int, eos_token_id: Optional[int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The reference answer for multi-turn questions: ``decoder``'s greedy continuation."""
    return lambda ids: decoder.generate(ids, max_new_tokens=max_new_tokens, eos_token_id=eos_token_id).new_tokens
