"""Issue #22: the bad-input matrix. Every bad input, through the Python API and every command, is refused
with a typed error whose message names the fix; every valid edge input gives exactly the right result; no
command prints a traceback; a crash at any write point leaves the old files or the new ones, both loadable.

Each row is (id, call, expectation). An expectation is ``(ErrorType, keyword)``: the call must raise exactly
that ``SpecError`` subclass (not a subclass of it, not a raw exception) with a message matching the keyword
(a regular expression naming the fix); or a function checking the call's result. Command-line rows run
``spec.apps.cli.main([...])`` in-process: exit status 2, ``spec <command>: error: ...`` on stderr with the
keyword, no traceback; and the command function again to check the error's type. No row loads the shipped
model: every command refuses before it would.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import struct
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import pytest
import torch

import spec.errors as errors
from spec import (
    AutoregressiveDecoder,
    CloverDrafter,
    HydraDrafter,
    KangarooDrafter,
    MedusaDrafter,
    RejectionSamplingAcceptor,
    SpeculativeDecoder,
    StaticTreeBuilder,
    TreeAttentionVerifier,
)
from spec.errors import (
    CheckpointError,
    ConfigurationError,
    ContextLengthError,
    DataError,
    IncompatibleDrafterError,
    InputError,
    IntegrityError,
    InvalidTreeError,
    OptionError,
    PathError,
    SamplingParamsError,
    SpecError,
)
from spec.trees import chain_tree, draw_tree, load_tree, save_tree, tree_from_choices, tree_from_json, tree_to_json
from spec.trees.io import load_stats

from helpers import model

ROOT = Path(__file__).resolve().parents[1]
PROMPT = torch.tensor([[1, 2, 3]])
NEW = 6  # tokens per generate call in the rows


class Row(NamedTuple):
    id: str
    call: Callable[["Context"], Any]
    expect: Any  # (ErrorType, keyword) or a check(result, ctx)


class Cli(NamedTuple):
    id: str
    argv: Callable[["Context"], list[str]]
    error: type
    keyword: str


# ---- shared state: tiny models, decoders, files -------------------------------------------------------
class Context:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.count = 0
        self.m = model("llama")  # float64, vocab 96, hidden 32, 2 layers, context 512
        self.m32 = model("llama", dtype=torch.float32)
        self.decoders = {name: self._decoders(m) for name, m in (("64", self.m), ("32", self.m32))}
        self.afile = self.write("afile", "not a directory")
        self.data_txt = self.write("data.txt", "def add(a, b):\n    return a + b\n" * 20)
        self.stats = self.write("stats.json", json.dumps({"format": "spec-acceptance-stats", "version": 1,
                                                          "probs": [[0.5, 0.2], [0.4, 0.1]]}))
        self.tree = self.write("tree.json", "[[0], [1], [0, 0]]")
        self.model_ok = self._model_dir()

    def _decoders(self, m):
        drafter = MedusaDrafter.from_model(m, num_heads=2, seed=0)
        spec_decoder = SpeculativeDecoder(m, drafter, StaticTreeBuilder(chain_tree(2)), TreeAttentionVerifier(m),
                                          RejectionSamplingAcceptor())
        return {"sd": spec_decoder, "ar": AutoregressiveDecoder(m)}

    def fresh(self, name: str = "d") -> Path:
        self.count += 1
        return self.root / f"{self.count}-{name}"

    def empty_dir(self) -> Path:
        path = self.fresh("empty")
        path.mkdir()
        return path

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.fresh(name)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    def _model_dir(self) -> Path:
        path = self.fresh("hf-model")
        self.m.save_pretrained(path, safe_serialization=True)
        (path / "tokenizer.json").write_text("{}")  # present; no row gets far enough to load it
        return path

    def model_dir(self, keep=("config.json", "model.safetensors", "tokenizer.json"), extra=None) -> Path:
        path = self.fresh("hf-model")
        path.mkdir()
        for name in keep:
            os.link(self.model_ok / name, path / name)
        for name, content in (extra or {}).items():
            (path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
        return path


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    return Context(tmp_path_factory.mktemp("matrix"))


def check_row(row: Row, ctx: Context) -> None:
    if isinstance(row.expect, tuple):
        error, keyword = row.expect
        with pytest.raises(SpecError) as info:
            row.call(ctx)
        assert type(info.value) is error, f"{type(info.value).__name__} raised, {error.__name__} expected: {info.value}"
        assert re.search(keyword, str(info.value)), f"the message does not name the fix ({keyword!r}): {info.value}"
    else:
        row.expect(row.call(ctx), ctx)


# ==== 1. generate arguments (both decoders) =============================================================
def gen(decoder: str, dtype: str = "64", **kwargs):
    def call(ctx):
        args = dict(input_ids=PROMPT, max_new_tokens=NEW) | kwargs
        return ctx.decoders[dtype][decoder].generate(**args)
    return call


GREEDY = None  # filled lazily: the greedy continuation of PROMPT (the same for both decoders)


def greedy(ctx) -> list[int]:
    global GREEDY
    if GREEDY is None:
        GREEDY = gen("ar")(ctx).new_tokens.tolist()
    return GREEDY


def stops_after(position: int):
    def check(out, ctx):
        assert out.new_tokens.tolist() == greedy(ctx)[: position + 1]
    return check


def new_tokens(count: int):
    def check(out, ctx):
        assert out.new_tokens.numel() == count and torch.equal(out.sequences[0, :3], PROMPT[0])
    return check


SAMPLE = dict(temperature=1.0, seed=7)
GENERATE_CASES = [
    # -- eos_token_id: an integer (Python, NumPy, 0-d tensor) or a list of them, in the vocabulary
    ("eos-text-is-not-split-into-chars", dict(eos_token_id="81"), (InputError, "encode it with the tokenizer")),
    ("eos-bytes", dict(eos_token_id=b"8"), (InputError, "tokenizer")),
    ("eos-float", dict(eos_token_id=5.0), (InputError, "must be an integer")),
    ("eos-0d-float-tensor", dict(eos_token_id=torch.tensor(5.0)), (InputError, "must be an integer")),
    ("eos-bool", dict(eos_token_id=True), (InputError, "must be an integer")),
    ("eos-list-with-text", dict(eos_token_id=[1, "a"]), (InputError, "must be an integer")),
    ("eos-dict", dict(eos_token_id={5: 1}), (InputError, "list of token ids")),
    ("eos-2d-tensor", dict(eos_token_id=torch.tensor([[5]])), (InputError, "1-d list")),
    ("eos-object", dict(eos_token_id=object()), (InputError, "list of token ids")),
    ("eos-negative", dict(eos_token_id=-1), (InputError, r"vocabulary \[0, 96\); use ids from this model")),
    ("eos-out-of-vocab", dict(eos_token_id=1000), (InputError, "use ids from this model's tokenizer")),
    ("eos-int-stops-at-first", dict(eos_token_id="G2"), stops_after(2)),
    ("eos-0d-int-tensor-is-that-int", dict(eos_token_id="T2"), "same:G2"),
    ("eos-numpy-int-is-that-int", dict(eos_token_id="N2"), "same:G2"),
    ("eos-list-of-numpy-ints", dict(eos_token_id="L2"), "same:G2"),
    ("eos-set-stops-at-first-of-either", dict(eos_token_id="S1,4"), stops_after(1)),
    ("eos-empty-list-means-none", dict(eos_token_id=[]), "same:none"),
    # -- stop_sequences: a list of token-id lists
    ("stop-text-is-not-split", dict(stop_sequences="12"), (InputError, r"list of token-id lists, e\.g\. \[\[13, 13\]\]")),
    ("stop-flat-list", dict(stop_sequences=[5]), (InputError, r"write \[\[5\]\]")),
    ("stop-flat-numpy", dict(stop_sequences=[np.int64(5)]), (InputError, r"write \[\[")),
    ("stop-int", dict(stop_sequences=5), (InputError, "list of token-id lists")),
    ("stop-empty-inner", dict(stop_sequences=[[]]), (InputError, "at least one token id")),
    ("stop-inner-text", dict(stop_sequences=["ab"]), (InputError, "encode it with the tokenizer")),
    ("stop-float-id", dict(stop_sequences=[[1.5]]), (InputError, "must be an integer")),
    ("stop-out-of-vocab", dict(stop_sequences=[[1000]]), (InputError, "use ids from this model's tokenizer")),
    ("stop-negative", dict(stop_sequences=[[-1]]), (InputError, r"vocabulary \[0, 96\)")),
    ("stop-1d-tensor", dict(stop_sequences=torch.tensor([1, 2])), (InputError, r"2-d \[count, length\]")),
    ("stop-2d-tensor-is-the-list", dict(stop_sequences="P"), "same:stoplist"),
    ("stop-tensor-rows-are-lists", dict(stop_sequences="R"), "same:stoplist"),
    ("stop-empty-outer-means-none", dict(stop_sequences=[]), "same:none"),
    ("stop-sequence-stops-exactly", dict(stop_sequences="Q"), stops_after(2)),
    # -- sampling parameters: numbers are numbers, not bools or strings; NumPy numbers are their value
    ("seed-2**70", dict(seed=2**70, temperature=1.0), (SamplingParamsError, r"below 2\*\*64")),
    ("seed-float", dict(seed=1.0, temperature=1.0), (SamplingParamsError, "must be an integer")),
    ("seed-bool", dict(seed=True, temperature=1.0), (SamplingParamsError, "must be an integer")),
    ("seed-negative", dict(seed=-3, temperature=1.0), (SamplingParamsError, "non-negative integer")),
    ("seed-text", dict(seed="3", temperature=1.0), (SamplingParamsError, "must be an integer")),
    ("seed-largest", dict(seed=2**64 - 1, temperature=1.0), new_tokens(NEW)),
    ("seed-numpy-is-that-int", dict(seed=np.int64(7), temperature=1.0), "same:sample"),
    ("seed-0d-tensor-is-that-int", dict(seed=torch.tensor(7), temperature=1.0), "same:sample"),
    ("temperature-bool-is-not-1", dict(temperature=True, seed=1), (SamplingParamsError, "must be a number")),
    ("temperature-text", dict(temperature="1"), (SamplingParamsError, "must be a number")),
    ("temperature-none", dict(temperature=None), (SamplingParamsError, "must be a number")),
    ("temperature-nan", dict(temperature=float("nan")), (SamplingParamsError, "finite number >= 0")),
    ("temperature-inf", dict(temperature=float("inf")), (SamplingParamsError, "finite number >= 0")),
    ("temperature-negative", dict(temperature=-0.5), (SamplingParamsError, "0 means greedy")),
    ("temperature-numpy-is-that-float", dict(temperature=np.float64(1.0), seed=7), "same:sample"),
    ("temperature-1e-300-in-float64-is-greedy", dict(temperature=1e-300, seed=0), "same:none"),
    ("top_p-bool", dict(top_p=True, temperature=1.0), (SamplingParamsError, "must be a number")),
    ("top_p-zero", dict(top_p=0.0, temperature=1.0), (SamplingParamsError, r"\(0, 1\]")),
    ("top_p-above-one", dict(top_p=1.5, temperature=1.0), (SamplingParamsError, r"1 disables")),
    ("top_k-float", dict(top_k=1.5, temperature=1.0), (SamplingParamsError, "must be an integer")),
    ("top_k-bool", dict(top_k=True, temperature=1.0), (SamplingParamsError, "must be an integer")),
    ("top_k-zero", dict(top_k=0, temperature=1.0), (SamplingParamsError, "None \\(no limit\\)")),
    ("top_k-numpy-is-that-int", dict(top_k=np.int64(3), temperature=1.0, seed=7), "same:topk"),
    # -- the prompt
    ("prompt-empty-list-blames-emptiness", dict(input_ids=[]), (InputError, "prompt is empty; give at least one")),
    ("prompt-empty-tensor", dict(input_ids=torch.zeros(1, 0, dtype=torch.long)), (InputError, "prompt is empty")),
    ("prompt-text", dict(input_ids="abc"), (InputError, "encode text with the tokenizer")),
    ("prompt-none", dict(input_ids=None), (InputError, "encode text with the tokenizer")),
    ("prompt-ragged", dict(input_ids=[[1, 2], [3]]), (InputError, "rows of equal length")),
    ("prompt-float", dict(input_ids=[1.5, 2.0]), (InputError, r"convert with \.long\(\)")),
    ("prompt-bool", dict(input_ids=torch.tensor([[True, False]])), (InputError, r"\.long\(\)")),
    ("prompt-0d", dict(input_ids=torch.tensor(3)), (InputError, r"shape \[1, length\]")),
    ("prompt-3d", dict(input_ids=torch.zeros(1, 1, 3, dtype=torch.long)), (InputError, r"shape \[1, length\]")),
    ("prompt-batch-2", dict(input_ids=torch.zeros(2, 3, dtype=torch.long)), (InputError, "once per sequence")),
    ("prompt-overflowing-int", dict(input_ids=[2**63]), (InputError, "list of integers")),
    ("prompt-meta-device", dict(input_ids=torch.tensor([[1, 2]], device="meta")), (InputError, "real token ids")),
    ("prompt-out-of-vocab", dict(input_ids=torch.tensor([[5, 96]])), (InputError, r"\[0, 96\)")),
    ("prompt-numpy-is-the-tensor", dict(input_ids=np.array([1, 2, 3])), "same:none"),
    ("prompt-int8-is-the-tensor", dict(input_ids=torch.tensor([[1, 2, 3]], dtype=torch.int8)), "same:none"),
    ("prompt-1d-list-is-the-tensor", dict(input_ids=[1, 2, 3]), "same:none"),
    # -- max_new_tokens
    ("max_new_tokens-float", dict(max_new_tokens=4.0), (InputError, "max_new_tokens .*must be an integer")),
    ("max_new_tokens-bool", dict(max_new_tokens=True), (InputError, "must be an integer")),
    ("max_new_tokens-text", dict(max_new_tokens="4"), (InputError, "must be an integer")),
    ("max_new_tokens-negative", dict(max_new_tokens=-1), (InputError, "integer >= 0")),
    ("max_new_tokens-over-context", dict(max_new_tokens=600), (ContextLengthError, "ask for at most 509 new tokens")),
    ("max_new_tokens-numpy", dict(max_new_tokens=np.int64(4)), new_tokens(4)),
    ("max_new_tokens-0d-tensor", dict(max_new_tokens=torch.tensor(4)), new_tokens(4)),
    ("max_new_tokens-zero", dict(max_new_tokens=0), new_tokens(0)),
]


def _resolve(kwargs: dict, ctx: Context) -> dict:
    """Cases that need the model's greedy tokens name them symbolically: G<i> (an int), T<i> (a 0-d tensor),
    N<i> (a NumPy int), L<i> (a list of NumPy ints), S<i>,<j> (a set); stop sequences P, Q, R."""
    out = dict(kwargs)
    tokens = greedy(ctx)
    eos = out.get("eos_token_id")
    if isinstance(eos, str) and eos[:1] in "GTNLS" and eos[1:2].isdigit():
        kind, rest = eos[0], eos[1:]
        if kind == "S":
            out["eos_token_id"] = {tokens[int(i)] for i in rest.split(",")}
        else:
            t = tokens[int(rest)]
            out["eos_token_id"] = {"G": t, "T": torch.tensor(t), "N": np.int64(t), "L": [np.int64(t)]}[kind]
    stop = out.get("stop_sequences")
    if stop in ("P", "Q", "R"):
        seq = tokens[1:3]
        out["stop_sequences"] = {"P": torch.tensor([seq]), "Q": [seq], "R": [torch.tensor(seq)]}[stop]
    return out


REFERENCES = {"none": {}, "G2": {"eos_token_id": "G2"}, "sample": SAMPLE, "topk": dict(top_k=3, **SAMPLE),
              "stoplist": {"stop_sequences": "Q"}}


def generate_rows() -> list[Row]:
    rows = []
    for decoder in ("sd", "ar"):
        for case_id, kwargs, expect in GENERATE_CASES:
            def call(ctx, decoder=decoder, kwargs=kwargs):
                return gen(decoder, **_resolve(kwargs, ctx))(ctx)
            if isinstance(expect, str):  # "same:<reference>"
                reference = REFERENCES[expect.split(":")[1]]

                def expect(out, ctx, decoder=decoder, reference=reference):
                    ref = gen(decoder, **_resolve(reference, ctx))(ctx)
                    assert torch.equal(out.sequences, ref.sequences), (out.new_tokens.tolist(), ref.new_tokens.tolist())
            rows.append(Row(f"{decoder}-{case_id}", call, expect))
    # Tiny temperatures: refused where the logits' dtype would overflow, identically by both decoders.
    for decoder in ("sd", "ar"):
        rows.append(Row(f"{decoder}-temperature-1e-300-in-float32", gen(decoder, "32", temperature=1e-300, seed=0),
                        (SamplingParamsError, "use temperature=0 for greedy decoding")))
        rows.append(Row(f"{decoder}-temperature-1e-30-in-float32-works", gen(decoder, "32", temperature=1e-30, seed=0),
                        new_tokens(NEW)))
    return rows


# ==== 2. tree files ==================================================================================
def tree_file(content: str | bytes):
    return lambda ctx: load_tree(ctx.write("tree", content))


def spec_tree(**fields) -> str:
    return json.dumps({"format": "spec-tree", "version": 1, "choices": [[0], [1]], "metadata": {}} | fields)


def saved_tree_edited(edit: Callable[[str], str]):
    def call(ctx):
        path = ctx.fresh("tree")
        save_tree(path, tree_from_choices([[0], [1], [0, 0]]), {"expected_length": 1.5, "costs": {1: 0.1, 16: 0.2}})
        path.write_text(edit(path.read_text()))
        return load_tree(path)
    return call


def tree_is(choices: list, metadata: dict | None = None):
    def check(result, ctx):
        tree, meta = result
        assert tree == tree_from_choices(choices)
        if metadata is not None:
            assert meta == metadata
    return check


def save_then_load(metadata):
    def call(ctx):
        path = ctx.fresh("tree")
        save_tree(path, tree_from_choices([[0], [0, 0]]), metadata)
        return load_tree(path)
    return call


def round_tripped(result, ctx):
    tree, meta = result
    assert tree == tree_from_choices([[0], [0, 0]]) and meta["a"] == [1, 2.5] and meta["b"] == {"c": None}
    assert np.isnan(meta["nan"])


def drawn(result, ctx):
    assert result.stat().st_size > 1000


TREE_ROWS = [
    Row("tree-missing-file", lambda c: load_tree(c.root / "missing.json"), (PathError, "does not exist; check the path")),
    Row("tree-directory", lambda c: load_tree(c.root), (PathError, "give the file itself")),
    Row("tree-not-utf8", tree_file(b"\xff\xfe[[0]]"), (InvalidTreeError, "save it as UTF-8")),
    Row("tree-float-ranks-not-truncated", tree_file("[[0.9], [1.7]]"), (InvalidTreeError, "whole numbers .* without quotes or decimals")),
    Row("tree-integral-float-rank", tree_file("[[1.0]]"), (InvalidTreeError, "whole numbers")),
    Row("tree-string-rank-not-coerced", tree_file('[["1"]]'), (InvalidTreeError, "without quotes")),
    Row("tree-bool-rank-not-coerced", tree_file("[[true]]"), (InvalidTreeError, "whole numbers")),
    Row("tree-nan-rank", tree_file("[[NaN]]"), (InvalidTreeError, "whole numbers")),
    Row("tree-infinity-rank", tree_file("[[Infinity]]"), (InvalidTreeError, "whole numbers")),
    Row("tree-huge-float-rank", tree_file("[[1e300]]"), (InvalidTreeError, "whole numbers")),
    Row("tree-5000-digit-rank", tree_file("[[" + "9" * 5000 + "]]"), (InvalidTreeError, "write the file again")),
    Row("tree-deep-nesting", tree_file("[" * 100_000 + "]" * 100_000), (InvalidTreeError, "too deeply")),
    Row("tree-empty-file", tree_file(""), (InvalidTreeError, "not valid JSON")),
    Row("tree-null", tree_file("null"), (InvalidTreeError, "expected a choices list")),
    Row("tree-number", tree_file("5"), (InvalidTreeError, "expected a choices list")),
    Row("tree-choice-is-string", tree_file('["01"]'), (InvalidTreeError, r"list of ranks such as \[0, 1\]")),
    Row("tree-choice-is-object", tree_file('[{"a": 1}]'), (InvalidTreeError, "list of ranks")),
    Row("tree-choice-is-null", tree_file("[null]"), (InvalidTreeError, "list of ranks")),
    Row("tree-nested-choice", tree_file("[[[0]]]"), (InvalidTreeError, "whole numbers")),
    Row("tree-duplicate-choice", tree_file("[[0], [0]]"), (InvalidTreeError, "tree.*appears more than once")),
    Row("tree-missing-prefix", tree_file("[[0, 0]]"), (InvalidTreeError, "add every prefix")),
    Row("tree-negative-rank", tree_file("[[-1]]"), (InvalidTreeError, "0-based top-k")),
    Row("tree-metadata-list", tree_file(spec_tree(metadata=[1, 2])), (InvalidTreeError, "metadata must be a JSON object")),
    Row("tree-metadata-string", tree_file(spec_tree(metadata="x")), (InvalidTreeError, "metadata must be a JSON object")),
    Row("tree-version-2", tree_file(spec_tree(version=2)), (InvalidTreeError, "reads version 1 .*save_tree")),
    Row("tree-version-string", tree_file(spec_tree(version="1")), (InvalidTreeError, "reads version 1")),
    Row("tree-version-bool", tree_file(spec_tree(version=True)), (InvalidTreeError, "reads version 1")),
    Row("tree-version-missing", tree_file(json.dumps({"format": "spec-tree", "choices": [[0]]})), (InvalidTreeError, "version")),
    Row("tree-choices-not-list", tree_file(spec_tree(choices=5)), (InvalidTreeError, r"such as \[\[0\], \[1\]")),
    Row("tree-unknown-field", tree_file(spec_tree(extra=1)), (InvalidTreeError, "unknown field.*'extra'")),
    Row("tree-edited-rank-fails-checksum", saved_tree_edited(lambda t: t.replace("[\n   1\n  ]", "[\n   2\n  ]")),
        (InvalidTreeError, "delete its sha256 field")),
    Row("tree-edited-metadata-fails-checksum", saved_tree_edited(lambda t: t.replace("1.5", "2.5")),
        (InvalidTreeError, "corrupt or was edited")),
    Row("tree-reindented-still-verifies", saved_tree_edited(lambda t: json.dumps(json.loads(t))),
        tree_is([[0], [1], [0, 0]], {"expected_length": 1.5, "costs": {"1": 0.1, "16": 0.2}})),
    Row("tree-utf8-bom-loads", tree_file(b"\xef\xbb\xbf[[0], [1]]"), tree_is([[0], [1]], {})),
    Row("tree-empty-choices-is-root-only", tree_file("[]"), tree_is([], {})),
    Row("tree-without-checksum-loads", tree_file(spec_tree()), tree_is([[0], [1]], {})),
    Row("tree-round-trip-with-metadata", save_then_load({"a": [1, 2.5], "b": {"c": None}, "nan": float("nan")}),
        round_tripped),
    Row("tree-from-json-bytes", lambda c: tree_from_json(b"[[0]]"), (InvalidTreeError, r"must be text \(str\)")),
    Row("save-tree-metadata-not-json", lambda c: save_tree(c.fresh("t"), chain_tree(1), {"x": object()}),
        (InvalidTreeError, "JSON-serialisable")),
    Row("save-tree-metadata-list", lambda c: save_tree(c.fresh("t"), chain_tree(1), [1]),
        (InvalidTreeError, r"must be a dict")),
    Row("save-tree-folder-is-a-file", lambda c: save_tree(c.afile / "t.json", chain_tree(1)),
        (PathError, "is a file, not a directory; choose another path")),
    Row("save-tree-onto-a-directory", lambda c: save_tree(c.root, chain_tree(1)), (PathError, "give a file name")),
    Row("tree-to-json-metadata-list", lambda c: tree_to_json(chain_tree(1), ["x"]), (InvalidTreeError, "must be a dict")),
    Row("draw-tree-1100-deep", lambda c: draw_tree(chain_tree(1100), c.fresh("deep") .with_suffix(".png")), drawn),
    Row("draw-tree-any-suffix-is-png", lambda c: draw_tree(chain_tree(2), c.fresh("tree.out")), drawn),
    Row("draw-tree-folder-is-a-file", lambda c: draw_tree(chain_tree(2), c.afile / "x.png"),
        (PathError, "choose another path")),
    Row("draw-tree-onto-a-directory", lambda c: draw_tree(chain_tree(2), c.root), (PathError, "give a file name")),
]


# ==== 3. statistics and cost-curve files ================================================================
def stats_file(data):
    from spec.trees.io import load_stats

    return lambda ctx: load_stats(ctx.write("stats", data if isinstance(data, (str, bytes)) else json.dumps(data)))


def curve_file(data):
    from spec.trees.io import load_cost_curve

    return lambda ctx: load_cost_curve(ctx.write("curve", data if isinstance(data, (str, bytes)) else json.dumps(data)))


STATS = {"format": "spec-acceptance-stats", "version": 1, "probs": [[0.5, 0.2]]}
STATS_ROWS = [
    Row("stats-missing", lambda c: load_stats(c.root / "no.json"), (PathError, "check the path")),
    Row("stats-no-probs", stats_file({"format": "spec-acceptance-stats"}), (ConfigurationError, r"probs\[depth\]\[rank\]")),
    Row("stats-bool-probs", stats_file(STATS | {"probs": [[True]]}), (ConfigurationError, "lists of numbers")),
    Row("stats-string-probs", stats_file(STATS | {"probs": "x"}), (ConfigurationError, "lists of numbers")),
    Row("stats-nan-prob", stats_file('{"format": "spec-acceptance-stats", "probs": [[NaN]]}'), (ConfigurationError, r"in \[0, 1\]")),
    Row("stats-samples-text", stats_file(STATS | {"samples": "abc"}), (ConfigurationError, "whole number >= 0")),
    Row("stats-not-utf8", stats_file(b"\xff{}"), (ConfigurationError, "save it as UTF-8")),
    Row("stats-wrong-format", stats_file({"probs": [[0.5]]}), (ConfigurationError, "AcceptanceStats.save")),
    Row("stats-valid", stats_file(STATS), lambda s, c: s.probs == ((0.5, 0.2),) or pytest.fail(str(s))),
    Row("curve-zero-seconds", curve_file({"1": 0.0, "2": 0.0}), (ConfigurationError, "finite and > 0")),
    Row("curve-negative", curve_file({"1": -1.0}), (ConfigurationError, "finite and > 0")),
    Row("curve-nan", curve_file('{"1": NaN}'), (ConfigurationError, "finite and > 0")),
    Row("curve-text-cost", curve_file({"1": "0.1"}), (ConfigurationError, "measure_verify_costs")),
    Row("curve-bad-key", curve_file({"abc": 0.1}), (ConfigurationError, "whole number of tree tokens")),
    Row("curve-zero-key", curve_file({"0": 0.1}), (ConfigurationError, "tree tokens >= 1")),
    Row("curve-empty", curve_file({}), (ConfigurationError, "non-empty JSON object")),
    Row("curve-list", curve_file([0.1]), (ConfigurationError, "non-empty JSON object")),
    Row("curve-valid", curve_file({"1": 0.01, "16": 0.02}), lambda r, c: r == {1: 0.01, 16: 0.02} or pytest.fail(str(r))),
]


# ==== 4. draft-head checkpoints ========================================================================
DRAFTERS = {
    "medusa": (MedusaDrafter, dict(num_heads=2)),
    "hydra": (HydraDrafter, dict(num_heads=2)),
    "hydra++": (HydraDrafter, dict(num_heads=2, prefix_layer=True)),
    "clover": (CloverDrafter, dict(num_heads=2)),
    "kangaroo": (KangarooDrafter, dict(exit_layer=1)),
}


def heads(kind="medusa", config=None, files=None, seed=0):
    """Save fresh heads of ``kind``, edit their config (``config(cfg)``) and files (``files(dir)``), load them."""
    def call(ctx):
        cls, kwargs = DRAFTERS[kind]
        directory = ctx.fresh(kind)
        drafter = cls.from_model(ctx.m, seed=seed, **kwargs)
        drafter.save_pretrained(directory)
        if config is not None:
            path = directory / "config.json"
            cfg = json.loads(path.read_text())
            config(cfg)
            path.write_text(json.dumps(cfg))
        if files is not None:
            files(directory)
        return cls.from_pretrained(directory, ctx.m)
    return call


def hyper(**values):
    return lambda cfg: cfg["hyperparameters"].update(values)


def base_model(**values):
    return lambda cfg: cfg["base_model"].update(values)


def top(**values):
    return lambda cfg: cfg.update(values)


def no_checksum(cfg):
    del cfg["weights_sha256"]


def rewrite_weights(transform, keep_checksum=False):
    """Replace the weights by ``transform(tensors)``; without the checksum (an old checkpoint) unless asked."""
    from safetensors.torch import load_file, save_file

    def files(directory):
        weights = directory / "model.safetensors"
        save_file(transform(load_file(weights)), weights)
        cfg = json.loads((directory / "config.json").read_text())
        if keep_checksum:
            from spec.io import sha256_hex

            cfg["weights_sha256"] = sha256_hex(weights.read_bytes())
        else:
            cfg.pop("weights_sha256")
        (directory / "config.json").write_text(json.dumps(cfg))
    return files


def flip_byte(directory):
    weights = directory / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))


def replace_with_dir(name):
    def files(directory):
        (directory / name).unlink()
        (directory / name).mkdir()
    return files


def write_file(name, content):
    def files(directory):
        (directory / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return files


def symlink_weights_outside(directory):
    outside = directory.parent / f"{directory.name}-outside.safetensors"
    os.replace(directory / "model.safetensors", outside)
    os.symlink(outside, directory / "model.safetensors")


def loads_like_saved(kind):
    def check(drafter, ctx):
        cls, kwargs = DRAFTERS[kind]
        fresh = cls.from_model(ctx.m, seed=0, **kwargs)
        module = drafter.adapter if kind == "kangaroo" else drafter.heads
        reference = fresh.adapter if kind == "kangaroo" else fresh.heads
        for (name, a), (_, b) in zip(module.state_dict().items(), reference.state_dict().items()):
            assert torch.equal(a, b), name
    return check


def interrupted_save_leaves_backup(ctx):
    """Where the exchange is unavailable, a crash between the two renames leaves only the backup."""
    directory = ctx.fresh("medusa")
    MedusaDrafter.from_model(ctx.m, num_heads=2, seed=0).save_pretrained(directory)
    os.replace(directory, directory.parent / f".{directory.name}.spec-old")
    return MedusaDrafter.from_pretrained(directory, ctx.m)


def save_into(path_fn):
    def call(ctx):
        return MedusaDrafter.from_model(ctx.m, num_heads=2).save_pretrained(path_fn(ctx))
    return call


def save_into_cwd(ctx):
    directory = ctx.fresh("cwd")
    directory.mkdir()
    here = os.getcwd()
    os.chdir(directory)
    try:
        MedusaDrafter.from_model(ctx.m, num_heads=2).save_pretrained(".")
    finally:
        os.chdir(here)


def foreign_files_are_kept(ctx):
    directory = ctx.fresh("medusa")
    directory.mkdir()
    (directory / "README.md").write_text("my notes")
    (directory / "runs").mkdir()
    (directory / "runs" / "log.txt").write_text("log")
    for seed in (0, 1):
        MedusaDrafter.from_model(ctx.m, num_heads=2, seed=seed).save_pretrained(directory)
    assert (directory / "README.md").read_text() == "my notes" and (directory / "runs" / "log.txt").read_text() == "log"
    assert not list(directory.parent.glob(f".{directory.name}.spec-*"))
    return MedusaDrafter.from_pretrained(directory, ctx.m)


def deep_json(depth=100_000):
    return "[" * depth + "]" * depth


CHECKPOINT_ROWS = [
    Row("heads-num_heads-text", heads(config=hyper(num_heads="2")), (CheckpointError, "num_heads must be an integer >= 1, got '2'.*save the heads again")),
    Row("heads-num_heads-float", heads(config=hyper(num_heads=2.0)), (CheckpointError, "num_heads must be an integer")),
    Row("heads-num_heads-zero", heads(config=hyper(num_heads=0)), (CheckpointError, "integer >= 1, got 0")),
    Row("heads-num_heads-null", heads(config=hyper(num_heads=None)), (CheckpointError, "integer >= 1, got None")),
    Row("heads-num_heads-150-beside-2", heads(config=hyper(num_heads=150)), (CheckpointError, "does not match its config.*save the heads again")),
    Row("heads-num_layers-text", heads(config=hyper(num_layers="1")), (CheckpointError, "num_layers must be an integer >= 0")),
    Row("heads-num_layers-2-beside-1", heads(config=hyper(num_layers=2)), (CheckpointError, "does not match its config")),
    Row("heads-bias-text", heads(config=hyper(lm_head_bias="false")), (CheckpointError, "lm_head_bias must be true or false")),
    Row("heads-bias-int", heads(config=hyper(lm_head_bias=0)), (CheckpointError, "must be true or false, got 0")),
    Row("heads-hidden-text", heads(config=hyper(hidden_size="32")), (CheckpointError, "hidden_size must be an integer")),
    Row("heads-vocab-text", heads(config=hyper(vocab_size="96")), (CheckpointError, "vocab_size must be an integer")),
    Row("heads-vocab-other-model", heads(config=hyper(vocab_size=97)), (IncompatibleDrafterError, "97 tokens .*use heads trained for this model")),
    Row("heads-fingerprint-vocab-text-no-contradiction", heads(config=base_model(vocab_size="96")),
        (CheckpointError, r"base_model\.vocab_size must be an integer, got '96'")),
    Row("heads-fingerprint-not-object", heads(config=top(base_model="x")), (CheckpointError, "model fingerprint.*save the heads again")),
    Row("heads-fingerprint-missing-field", heads(config=lambda c: c["base_model"].pop("probe")), (CheckpointError, "fields")),
    Row("heads-fingerprint-probe-text", heads(config=base_model(probe="abc")), (CheckpointError, r"base_model\.probe must be list")),
    Row("heads-fingerprint-probe-nan", heads(config=base_model(probe=[float("nan")] * 32)), (CheckpointError, "finite numbers")),
    Row("heads-fingerprint-other-model", heads(config=base_model(probe=[0.5] * 32)), (IncompatibleDrafterError, "train new ones")),
    Row("heads-format_version-text", heads(config=top(format_version="1")), (CheckpointError, "format_version '1'; this spec reads 1")),
    Row("heads-format_version-bool", heads(config=top(format_version=True)), (CheckpointError, "format_version True")),
    Row("heads-format_version-2", heads(config=top(format_version=2)), (CheckpointError, "save the heads again with this version")),
    Row("heads-drafter_type-list", heads(config=top(drafter_type=["medusa"])), (CheckpointError, "drafter_type must be a string")),
    Row("heads-drafter_type-other", heads(config=top(drafter_type="hydra")), (CheckpointError, "load it with that class")),
    Row("heads-hyperparameters-list", heads(config=top(hyperparameters=[1])), (CheckpointError, "must be a JSON object")),
    Row("heads-unknown-field", heads(config=top(surprise=1)), (CheckpointError, r"unknown field\(s\) \['surprise'\]")),
    Row("heads-checksum-malformed", heads(config=top(weights_sha256="zz")), (IntegrityError, "64 lowercase hex digits")),
    Row("heads-flipped-byte-in-tensor-data", heads(files=flip_byte), (IntegrityError, "does not match the SHA-256 .*Save the checkpoint again")),
    Row("heads-truncated", heads(files=lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:100])),
        (IntegrityError, "truncated or corrupt")),
    Row("heads-int32-weights-old-checkpoint", heads(files=rewrite_weights(lambda t: {k: v.to(torch.int32) for k, v in t.items()})),
        (IntegrityError, "non-floating-point tensors.*I32")),
    Row("heads-int32-weights-with-checksum", heads(files=rewrite_weights(lambda t: {k: v.to(torch.int32) for k, v in t.items()}, True)),
        (IntegrityError, "not one it wrote")),
    Row("heads-nan-weights", heads(files=rewrite_weights(lambda t: {k: torch.full_like(v, float("nan")) for k, v in t.items()}, True)),
        (IntegrityError, "NaN or infinite .*earlier checkpoint")),
    Row("heads-one-inf-weight-old-checkpoint", heads(files=rewrite_weights(
        lambda t: {k: (v.index_fill(0, torch.tensor([0]), float("inf")) if i == 0 else v) for i, (k, v) in enumerate(t.items())})),
        (IntegrityError, "NaN or infinite")),
    Row("heads-header-garbage-old-checkpoint", heads(config=no_checksum, files=write_file("model.safetensors", struct.pack("<Q", 2**40) + b"x" * 64)),
        (CheckpointError, "truncated or corrupt, save it again")),
    Row("heads-weights-is-a-directory", heads(files=replace_with_dir("model.safetensors")), (CheckpointError, "is a directory, not a file")),
    Row("heads-config-is-a-directory", heads(files=replace_with_dir("config.json")), (CheckpointError, "is a directory, not a file")),
    Row("heads-config-not-utf8", heads(files=write_file("config.json", b"\xff\xfe{}")), (CheckpointError, "save it as UTF-8")),
    Row("heads-config-deeply-nested", heads(files=write_file("config.json", deep_json())), (CheckpointError, "too deeply")),
    Row("heads-config-a-list", heads(files=write_file("config.json", "[]")), (CheckpointError, "must hold a JSON object")),
    Row("heads-config-invalid-json", heads(files=write_file("config.json", "{not json")), (CheckpointError, "not valid JSON")),
    Row("heads-config-missing", heads(files=lambda d: (d / "config.json").unlink()), (CheckpointError, "not a spec checkpoint")),
    Row("heads-weights-link-outside", heads(files=symlink_weights_outside), (CheckpointError, "leads outside .*Copy the file")),
    Row("heads-pickled-only", heads(files=lambda d: ((d / "model.safetensors").unlink(), (d / "pytorch_model.bin").write_bytes(b"\x80\x04x"))),
        (CheckpointError, "never unpickles .*safetensors with a tool you trust")),
    Row("heads-missing-directory", lambda c: MedusaDrafter.from_pretrained(c.root / "none", c.m), (CheckpointError, "does not exist; check the path")),
    Row("heads-path-is-a-file", lambda c: MedusaDrafter.from_pretrained(c.afile, c.m), (CheckpointError, "not a directory")),
    Row("hydra-num_layers-zero", heads("hydra", config=hyper(num_layers=0)), (CheckpointError, "num_layers >= 1")),
    Row("hydra-dropout-1.5", heads("hydra", config=hyper(dropout=1.5)), (CheckpointError, r"dropout must be a number in \[0, 1\)")),
    Row("hydra-dropout-1", heads("hydra", config=hyper(dropout=1.0)), (CheckpointError, r"\[0, 1\), got 1.0")),
    Row("hydra-dropout-text", heads("hydra", config=hyper(dropout="0")), (CheckpointError, "dropout must be a number")),
    Row("hydra++-prefix_layer-text", heads("hydra++", config=hyper(prefix_layer="yes")), (CheckpointError, "prefix_layer must be true or false")),
    Row("hydra++-prefix-layer-missing-from-weights", heads("hydra++", config=hyper(prefix_layer=False)), (CheckpointError, "does not match its config")),
    Row("clover-eps-negative", heads("clover", config=hyper(rms_norm_eps=-1.0)), (CheckpointError, r"rms_norm_eps must be a number in \(0, 1\]")),
    Row("clover-attention-heads-not-dividing", heads("clover", config=hyper(num_attention_heads=5)), (CheckpointError, "does not divide the hidden size")),
    Row("clover-num_heads-3-beside-2", heads("clover", config=hyper(num_heads=3)), (CheckpointError, "does not match its config")),
    Row("kangaroo-exit_layer-too-deep", heads("kangaroo", config=hyper(exit_layer=5)), (CheckpointError, "not below the model's 2 layers")),
    Row("kangaroo-threshold-2", heads("kangaroo", config=hyper(threshold=2)), (CheckpointError, "threshold must be a number")),
    Row("kangaroo-max_depth-zero", heads("kangaroo", config=hyper(max_depth=0)), (CheckpointError, "max_depth must be an integer >= 1")),
    *[Row(f"{kind}-old-checkpoint-without-checksum-loads", heads(kind, config=no_checksum), loads_like_saved(kind))
      for kind in DRAFTERS],
    Row("heads-interrupted-save-reads-backup", interrupted_save_leaves_backup, loads_like_saved("medusa")),
    Row("heads-foreign-files-kept-across-saves", foreign_files_are_kept, lambda d, c: None),
    Row("heads-save-onto-a-file", save_into(lambda c: c.afile), (PathError, "is a file; give a directory")),
    Row("heads-save-below-a-file", save_into(lambda c: c.afile / "heads"), (PathError, "choose another path")),
    Row("heads-save-into-the-current-directory", save_into_cwd, (PathError, "give a directory of its own")),
]


# ==== 5. names, paths and model directories ============================================================
def shipped(fn_name, *args):
    def call(ctx):
        import spec.apps.shipped as shipped_module

        return getattr(shipped_module, fn_name)(*args)
    return call


def model_directory(make, **kwargs):
    from spec.io import check_model_directory

    return lambda ctx: check_model_directory(make(ctx), **kwargs)


INDEX_ESCAPE = json.dumps({"weight_map": {"w": "../outside.safetensors"}})
PATH_ROWS = [
    Row("load_shipped-absolute-path", shipped("load_shipped", "/etc"), (CheckpointError, "plain name, not a path")),
    Row("load_shipped-dotdot", shipped("load_shipped", ".."), (CheckpointError, "plain name")),
    Row("load_shipped-dotdot-path", shipped("load_shipped", "../shipped"), (CheckpointError, "plain name")),
    Row("load_shipped-subpath", shipped("load_shipped", "spec-py-tiny/heads"), (CheckpointError, "from_pretrained instead")),
    Row("load_shipped-empty", shipped("load_shipped", ""), (CheckpointError, "plain name")),
    Row("load_shipped-none", shipped("load_shipped", None), (CheckpointError, "plain name")),
    Row("load_shipped-unknown", shipped("load_shipped", "nope"), (CheckpointError, "spec build-model --export")),
    Row("load_shipped-bad-dtype", lambda c: __import__("spec.apps.shipped", fromlist=["x"]).load_shipped(dtype="int8"),
        (ConfigurationError, "use 'auto' or one of")),
    Row("shipped-tree-dotdot", shipped("load_shipped_tree", "../medusa"), (CheckpointError, "plain name")),
    Row("shipped-drafter-dotdot", lambda c: __import__("spec.apps.shipped", fromlist=["x"]).load_shipped_drafter("../medusa", c.m),
        (CheckpointError, "shipped: ")),
    Row("heldout-limit-negative", shipped("heldout_prompts", "spec-py-tiny", -1), (ConfigurationError, "None \\(all prompts\\)")),
    Row("heldout-limit-zero-is-zero", shipped("heldout_prompts", "spec-py-tiny", 0), lambda r, c: r == [] or pytest.fail(r)),
    Row("heldout-limit-two", shipped("heldout_prompts", "spec-py-tiny", 2), lambda r, c: len(r) == 2 or pytest.fail(r)),
    Row("resolve-absolute-path-is-not-a-name", shipped("resolve_model_path", "/spec-py-tiny"),
        lambda r, c: r == Path("/spec-py-tiny") or pytest.fail(str(r))),
    Row("model-dir-missing", model_directory(lambda c: c.root / "nope"), (PathError, "local directories only \\(no model hub\\)")),
    Row("model-dir-is-a-file", model_directory(lambda c: c.afile), (PathError, "give the directory holding config.json")),
    Row("model-dir-without-config", model_directory(lambda c: c.model_dir(keep=("model.safetensors",))), (CheckpointError, "save_pretrained")),
    Row("model-dir-pickled-only", model_directory(lambda c: c.model_dir(keep=("config.json",), extra={"pytorch_model.bin": b"\x80"})),
        (CheckpointError, "never unpickles.*safe_serialization=True")),
    Row("model-dir-no-weights", model_directory(lambda c: c.model_dir(keep=("config.json",))), (CheckpointError, "safe_serialization=True")),
    Row("model-dir-index-leaves-directory", model_directory(lambda c: c.model_dir(keep=("config.json",),
                                                                                  extra={"model.safetensors.index.json": INDEX_ESCAPE})),
        (CheckpointError, "plain name, not a path")),
    Row("model-dir-index-missing-shard", model_directory(lambda c: c.model_dir(keep=("config.json",), extra={
        "model.safetensors.index.json": json.dumps({"weight_map": {"w": "shard-1.safetensors"}})})), (CheckpointError, "missing; save the model again")),
    Row("model-dir-index-not-json", model_directory(lambda c: c.model_dir(keep=("config.json",), extra={
        "model.safetensors.index.json": "{"})), (CheckpointError, "not valid JSON")),
    Row("model-dir-without-tokenizer", model_directory(lambda c: c.model_dir(keep=("config.json", "model.safetensors")), need_tokenizer=True),
        (CheckpointError, "tokenizer.save_pretrained")),
    Row("model-dir-ok", model_directory(lambda c: c.model_ok, need_tokenizer=True), lambda r, c: r == c.model_ok or pytest.fail(str(r))),
]


def manifest_dir(edit=None):
    from spec.io import atomic_write_bytes, manifest_bytes, verify_manifest

    def call(ctx):
        directory = ctx.fresh("manifest")
        directory.mkdir()
        (directory / "a.bin").write_bytes(b"weights")
        atomic_write_bytes(directory / "manifest.json", manifest_bytes(directory, ["a.bin"]))
        if edit is not None:
            edit(directory)
        return verify_manifest(directory)
    return call


def manifest_edit(name):
    def edit(directory):
        data = json.loads((directory / "manifest.json").read_text())
        data["sha256"] = {name: data["sha256"]["a.bin"]}
        (directory / "manifest.json").write_text(json.dumps(data))
    return edit


MANIFEST_ROWS = [
    Row("manifest-verifies", manifest_dir(), lambda r, c: None),
    Row("manifest-flipped-file", manifest_dir(lambda d: (d / "a.bin").write_bytes(b"weightz")), (IntegrityError, "write it again")),
    Row("manifest-missing-file", manifest_dir(lambda d: (d / "a.bin").unlink()), (IntegrityError, "incomplete")),
    Row("manifest-names-outside", manifest_dir(manifest_edit("../a.bin")), (IntegrityError, "plain name")),
    Row("manifest-not-a-manifest", manifest_dir(lambda d: (d / "manifest.json").write_text("[]")), (IntegrityError, "write the directory again")),
]

API_ROWS = generate_rows() + TREE_ROWS + STATS_ROWS + CHECKPOINT_ROWS + PATH_ROWS + MANIFEST_ROWS


@pytest.mark.parametrize("row", API_ROWS, ids=[r.id for r in API_ROWS])
def test_api(row, ctx):
    check_row(row, ctx)


def test_config_claiming_150_heads_allocates_nothing_before_refusing(ctx, monkeypatch):
    """The config is checked against the safetensors header on the meta device: no real head is built."""
    import spec.drafters.medusa as medusa

    built = []
    original = medusa.MedusaHeads.__init__

    def spy(self, *args, **kwargs):
        built.append(torch.get_default_device().type)
        original(self, *args, **kwargs)

    call = heads(config=hyper(num_heads=150))
    monkeypatch.setattr(medusa.MedusaHeads, "__init__", spy)
    with pytest.raises(CheckpointError, match="does not match its config"):
        call(ctx)
    # from_model (saving) builds one real module; loading built only on the meta device.
    assert built[0] == "cpu" and built[1:] == ["meta"], built


# ==== 6. every command, in-process ================================================================
def tree_args(action, *rest):
    return lambda c: ["tree", action, *[r(c) if callable(r) else r for r in rest]]


def optimise(*rest, stats=None, out=None):
    return lambda c: ["tree", "optimise", "--stats", str(stats(c) if stats else c.stats),
                      "--out", str(out(c) if out else c.fresh("opt.json")),
                      *[str(r(c)) if callable(r) else r for r in rest]]


def demo(*rest):
    return lambda c: ["demo", *[str(r(c)) if callable(r) else r for r in rest]]


def bench(*rest, out=None):
    return lambda c: ["bench", "--out", str(out(c) if out else c.fresh("bench")),
                      *[str(r(c)) if callable(r) else r for r in rest]]


def train(*rest, model=None, data=None, out=None, drafter="medusa"):
    def argv(c):
        return ["train", "--drafter", drafter, "--model", str(model(c) if model else c.model_ok),
                "--data", str(data(c) if data else c.data_txt), "--out", str(out(c) if out else c.fresh("train")),
                *[str(r(c)) if callable(r) else r for r in rest]]
    return argv


def build(*rest):
    return lambda c: ["build-model", *[str(r(c)) if callable(r) else r for r in rest]]


def text(content):
    return lambda c: c.write("file", content)


def prompts(content):
    return lambda c: c.write("prompts.jsonl", content)


CLI_ROWS = [
    # spec tree show / optimise
    Cli("tree-show-missing", tree_args("show", lambda c: str(c.root / "no.json")), PathError, "does not exist; check the path"),
    Cli("tree-show-directory", tree_args("show", lambda c: str(c.root)), PathError, "give the file itself"),
    Cli("tree-show-not-utf8", tree_args("show", lambda c: str(c.write("t", b"\xff[[0]]"))), InvalidTreeError, "save it as UTF-8"),
    Cli("tree-show-float-ranks", tree_args("show", lambda c: str(c.write("t", "[[0.9], [1.7]]"))), InvalidTreeError, "whole numbers"),
    Cli("tree-show-nan-rank", tree_args("show", lambda c: str(c.write("t", "[[NaN]]"))), InvalidTreeError, "whole numbers"),
    Cli("tree-show-deep", tree_args("show", lambda c: str(c.write("t", deep_json()))), InvalidTreeError, "too deeply"),
    Cli("tree-show-metadata-list", tree_args("show", lambda c: str(c.write("t", spec_tree(metadata=[1])))), InvalidTreeError, "JSON object"),
    Cli("tree-show-version-2", tree_args("show", lambda c: str(c.write("t", spec_tree(version=2)))), InvalidTreeError, "version 1"),
    Cli("tree-show-recorded-length-text", tree_args("show", lambda c: str(c.write("t", spec_tree(metadata={"expected_length": "x"})))),
        InvalidTreeError, "pass --stats to compute it"),
    Cli("tree-show-png-below-a-file", tree_args("show", lambda c: str(c.tree), "--png", lambda c: str(c.afile / "x.png")),
        PathError, "choose another path"),
    Cli("tree-show-stats-missing", tree_args("show", lambda c: str(c.tree), "--stats", lambda c: str(c.root / "no.json")),
        PathError, "check the path"),
    Cli("tree-optimise-depth-0-is-not-default", optimise("--depth", "0"), OptionError, "--depth must be an integer >= 1.*omit it"),
    Cli("tree-optimise-depth-negative", optimise("--depth", "-2"), OptionError, "--depth must be an integer >= 1"),
    Cli("tree-optimise-budget-0", optimise("--budget", "0"), OptionError, "--budget must be an integer >= 1"),
    Cli("tree-optimise-budget-over-capacity", optimise("--budget", "100"), OptionError, "lower --budget or raise --depth"),
    Cli("tree-optimise-greedy-budget-over-capacity", optimise("--budget", "100", "--method", "greedy"), OptionError, "lower --budget"),
    Cli("tree-optimise-cost-curve-zero-seconds", optimise("--cost-curve", lambda c: c.write("curve", '{"1": 0, "2": 0}')),
        ConfigurationError, "finite and > 0"),
    Cli("tree-optimise-cost-curve-missing", optimise("--cost-curve", lambda c: c.root / "no.json"), PathError, "check the path"),
    Cli("tree-optimise-cost-curve-with-greedy", optimise("--cost-curve", lambda c: c.write("curve", '{"1": 1, "2": 2}'), "--method", "greedy"),
        OptionError, "drop --method greedy"),
    Cli("tree-optimise-stats-missing", optimise(stats=lambda c: c.root / "no.json"), PathError, "check the path"),
    Cli("tree-optimise-stats-is-a-tree", optimise(stats=lambda c: c.tree), ConfigurationError, "AcceptanceStats.save"),
    Cli("tree-optimise-stats-bool-probs", optimise(stats=lambda c: c.write("s", json.dumps(STATS | {"probs": [[True]]}))),
        ConfigurationError, "lists of numbers"),
    Cli("tree-optimise-out-below-a-file", optimise(out=lambda c: c.afile / "o.json"), PathError, "choose another path"),
    Cli("tree-optimise-out-is-a-directory", optimise(out=lambda c: c.root), PathError, "give a file name inside it"),
    Cli("tree-optimise-png-below-a-file", optimise("--png", lambda c: c.afile / "x.png"), PathError, "choose another path"),
    # spec demo
    Cli("demo-tree-float-ranks", demo("--random-model", "--tree", "[[0.5]]"), InvalidTreeError, "--tree: choice"),
    Cli("demo-tree-missing-file", demo("--random-model", "--tree", lambda c: c.root / "no.json"), PathError, "check the path"),
    Cli("demo-tree-duplicate", demo("--random-model", "--tree", "[[0], [0]]"), InvalidTreeError, "more than once"),
    Cli("demo-tree-object-without-choices", demo("--random-model", "--tree", '{"format": "spec-tree"}'), InvalidTreeError, "choices list"),
    Cli("demo-tree-bad-version", demo("--random-model", "--tree", spec_tree(version=3)), InvalidTreeError, "version 1"),
    Cli("demo-max-new-tokens-0", demo("--random-model", "--max-new-tokens", "0"), OptionError, "--max-new-tokens must be an integer >= 1"),
    Cli("demo-max-new-tokens-negative", demo("--random-model", "--max-new-tokens", "-1"), OptionError, "--max-new-tokens"),
    Cli("demo-repeats-0", demo("--random-model", "--repeats", "0"), OptionError, "--repeats must be an integer in .1, 100."),
    Cli("demo-temperature-negative", demo("--temperature", "-1"), OptionError, "0 = greedy"),
    Cli("demo-temperature-nan", demo("--temperature", "nan"), OptionError, "finite number"),
    Cli("demo-temperature-inf", demo("--temperature", "inf"), OptionError, "finite number"),
    Cli("demo-temperature-1e-300", demo("--temperature", "1e-300"), OptionError, "--temperature 0 for greedy"),
    Cli("demo-seed-negative", demo("--random-model", "--seed", "-1"), OptionError, "64-bit seed"),
    Cli("demo-seed-2**64", demo("--random-model", "--seed", str(2**64)), OptionError, "64-bit seed"),
    Cli("demo-verifier-unknown", demo("--random-model", "--verifier", "bogus"), OptionError, "choose from auto, fast, generic"),
    Cli("demo-device-unknown", demo("--random-model", "--device", "tpu"), ConfigurationError, "'cpu' or 'cuda"),
    Cli("demo-dtype-float16-on-cpu", demo("--random-model", "--dtype", "float16"), ConfigurationError, "use one of"),
    Cli("demo-random-model-ignores-temperature", demo("--random-model", "--temperature", "0.5"), OptionError, "does not apply to --random-model"),
    Cli("demo-random-model-ignores-prompt", demo("--random-model", "--prompt", "x"), OptionError, "Drop it"),
    Cli("demo-random-model-ignores-drafter", demo("--random-model", "--drafter", "hydra"), OptionError, "does not apply"),
    Cli("demo-random-model-several-ignored", demo("--random-model", "--prompt-index", "1", "--drafter", "hydra"), OptionError, "Drop them"),
    Cli("demo-prompt-index-9999", demo("--prompt-index", "9999"), OptionError, r"in \[0, 31\].*32 held-out snippets"),
    Cli("demo-prompt-index-negative-is-not-last", demo("--prompt-index", "-1"), OptionError, r"in \[0, 31\]"),
    Cli("demo-drafter-unknown", demo("--drafter", "bogus"), OptionError, "choose from clover, .*medusa"),
    Cli("demo-drafter-path", demo("--drafter", "../medusa"), OptionError, "choose from"),
    Cli("demo-prompt-empty", demo("--prompt", ""), OptionError, "give some text"),
    Cli("demo-prompt-and-index", demo("--prompt", "x", "--prompt-index", "1"), OptionError, "give one of them"),
    # spec bench
    Cli("bench-num-prompts-0", bench("--num-prompts", "0"), OptionError, "--num-prompts must be an integer >= 1"),
    Cli("bench-num-prompts-negative-is-not-31", bench("--num-prompts", "-1"), OptionError, "--num-prompts must be an integer >= 1"),
    Cli("bench-num-prompts-over-available", bench("--num-prompts", "100"), OptionError, "pass at most 32"),
    Cli("bench-num-prompts-over-file", bench("--num-prompts", "2", "--prompts", prompts('{"prompt": "x"}\n')), OptionError, "pass at most 1"),
    Cli("bench-prompts-empty-file", bench("--prompts", prompts("")), DataError, "holds no prompts"),
    Cli("bench-prompts-blank-lines", bench("--prompts", prompts("\n  \n")), DataError, "holds no prompts"),
    Cli("bench-prompts-missing", bench("--prompts", lambda c: c.root / "no.jsonl"), PathError, "check the path"),
    Cli("bench-prompts-directory", bench("--prompts", lambda c: c.root), PathError, "give the file itself"),
    Cli("bench-prompts-not-utf8", bench("--prompts", prompts(b"\xff\n")), DataError, "save it as UTF-8"),
    Cli("bench-prompts-bad-json", bench("--prompts", prompts("{oops\n")), DataError, ":1 is not valid JSON"),
    Cli("bench-prompts-no-field", bench("--prompts", prompts('{"x": 1}\n')), DataError, "'prompt' \\(or 'text'\\)"),
    Cli("bench-prompts-empty-text", bench("--prompts", prompts('{"prompt": ""}\n')), DataError, "non-empty string"),
    Cli("bench-prompts-number", bench("--prompts", prompts('{"prompt": 5}\n')), DataError, "non-empty string"),
    Cli("bench-prompts-list-line", bench("--prompts", prompts('["x"]\n')), DataError, "each line must be an object"),
    Cli("bench-repeats-0", bench("--repeats", "0"), OptionError, "--repeats must be an integer >= 1"),
    Cli("bench-warmup-negative", bench("--warmup", "-1"), OptionError, "0 skips the warm-up"),
    Cli("bench-max-new-tokens-0", bench("--max-new-tokens", "0"), OptionError, "--max-new-tokens must be an integer >= 1"),
    Cli("bench-temperature-negative", bench("--temperature", "-1"), OptionError, "0 = greedy"),
    Cli("bench-temperature-1e-300", bench("--temperature", "1e-300"), OptionError, "0 for greedy decoding"),
    Cli("bench-drafters-unknown", bench("--drafters", "medusa,bogus"), OptionError, "unknown drafter 'bogus'"),
    Cli("bench-drafters-empty", bench("--drafters", ","), OptionError, "names no drafter"),
    Cli("bench-verifiers-unknown", bench("--verifiers", "fast,bogus"), OptionError, "generic\\+compile"),
    Cli("bench-verifiers-empty", bench("--verifiers", ""), OptionError, "names no verifier"),
    Cli("bench-out-is-a-file-found-first", bench(out=lambda c: c.afile), PathError, "is a file; give a directory"),
    Cli("bench-out-below-a-file", bench(out=lambda c: c.afile / "out"), PathError, "choose another path"),
    Cli("bench-out-current-directory", bench(out=lambda c: "."), PathError, "directory of its own"),
    Cli("bench-assistant-missing-is-local", bench("--assistant", lambda c: c.root / "no-model"), PathError, "no model hub"),
    Cli("bench-assistant-pickled", bench("--assistant", lambda c: c.model_dir(keep=("config.json",), extra={"pytorch_model.bin": b"\x80"})),
        CheckpointError, "never unpickles"),
    Cli("bench-assistant-without-transformers", bench("--assistant", lambda c: c.model_ok, "--no-transformers"), OptionError, "drop one of them"),
    Cli("bench-device-unknown", bench("--device", "tpu"), ConfigurationError, "'cpu' or 'cuda"),
    # spec train
    Cli("train-model-missing-is-local", train(model=lambda c: c.root / "no-model"), PathError, "no model hub"),
    Cli("train-model-is-a-file", train(model=lambda c: c.afile), PathError, "holding config.json"),
    Cli("train-model-pickled", train(model=lambda c: c.model_dir(keep=("config.json", "tokenizer.json"), extra={"pytorch_model.bin": b"\x80"})),
        CheckpointError, "never unpickles"),
    Cli("train-model-without-tokenizer", train(model=lambda c: c.model_dir(keep=("config.json", "model.safetensors"))),
        CheckpointError, "tokenizer.save_pretrained"),
    Cli("train-model-name-path", train(model=lambda c: "../spec-py-tiny"), PathError, "no model hub"),
    Cli("train-data-missing", train(data=lambda c: c.root / "no.txt"), PathError, "directory of them"),
    Cli("train-data-wrong-suffix", train(data=lambda c: c.stats), OptionError, "give a .txt or .py file"),
    Cli("train-data-empty-directory", train(data=lambda c: c.empty_dir()), PathError, "put the training text there"),
    Cli("train-out-is-a-file", train(out=lambda c: c.afile), PathError, "give a directory"),
    Cli("train-num-heads-0", train("--num-heads", "0"), OptionError, "--num-heads must be an integer >= 1"),
    Cli("train-num-layers-negative", train("--num-layers", "-1"), OptionError, "--num-layers must be an integer >= 0"),
    Cli("train-hydra-num-layers-0", train("--num-layers", "0", drafter="hydra"), OptionError, "first block reads the token"),
    Cli("train-steps-0", train("--steps", "0"), OptionError, "--steps must be an integer >= 1"),
    Cli("train-batch-size-0", train("--batch-size", "0"), OptionError, "--batch-size"),
    Cli("train-grad-accumulation-0", train("--grad-accumulation", "0"), OptionError, "--grad-accumulation"),
    Cli("train-block-size-1", train("--block-size", "1"), OptionError, "--block-size must be an integer >= 2"),
    Cli("train-block-size-over-context", train("--block-size", "4096"), OptionError, "over the model's context of 512"),
    Cli("train-lr-0", train("--lr", "0"), OptionError, r"--lr must be a finite number in \(0"),
    Cli("train-lr-nan", train("--lr", "nan"), OptionError, "--lr must be a finite number"),
    Cli("train-decay-0", train("--decay", "0"), OptionError, r"--decay must be a finite number in \(0, 1\]"),
    Cli("train-decay-1.5", train("--decay", "1.5"), OptionError, "--decay"),
    Cli("train-heldout-0", train("--heldout-fraction", "0"), OptionError, r"--heldout-fraction must be a finite number in \(0, 1\)"),
    Cli("train-heldout-1", train("--heldout-fraction", "1"), OptionError, "--heldout-fraction"),
    Cli("train-checkpoint-every-0", train("--checkpoint-every", "0"), OptionError, "--checkpoint-every"),
    Cli("train-eval-every-0", train("--eval-every", "0"), OptionError, "--eval-every"),
    Cli("train-distill-tokens-0", train("--distill-tokens", "0"), OptionError, "--distill-tokens"),
    Cli("train-seed-negative", train("--seed", "-1"), OptionError, "64-bit seed"),
    Cli("train-kangaroo-exit-layer-too-deep", train("--exit-layer", "2", drafter="kangaroo"), OptionError, "the model has 2 layers"),
    Cli("train-kangaroo-exit-layer-0", train("--exit-layer", "0", drafter="kangaroo"), OptionError, r"--exit-layer must be an integer in \[1, 1\]"),
    Cli("train-recipe-for-another-drafter", train("--recipe", "hydra"), ConfigurationError, "choose from"),
    # spec build-model
    Cli("build-steps-0", build("--steps", "0"), OptionError, "--steps must be an integer >= 1"),
    Cli("build-batch-size-0", build("--batch-size", "0"), OptionError, "--batch-size"),
    Cli("build-lr-negative", build("--lr", "-1"), OptionError, "--lr must be a finite number"),
    Cli("build-threads-0", build("--threads", "0"), OptionError, "--threads must be an integer >= 1"),
    Cli("build-head-steps-0", build("--head-steps", "0"), OptionError, "--head-steps"),
    Cli("build-heads-unknown", build("--heads", "bogus"), OptionError, "choose from clover, .*medusa"),
    Cli("build-trees-only-without-heads", build("--trees-only"), OptionError, "name at least one, e.g. --heads medusa"),
    Cli("build-work-is-a-file", build("--work", lambda c: c.afile), PathError, "is a file; give a directory"),
]

ARGPARSE_ROWS = [  # refused by argparse itself: SystemExit(2) with its usage and the reason on stderr
    ("tree-optimise-budget-text", optimise("--budget", "abc"), "invalid int value"),
    ("tree-optimise-method-unknown", optimise("--method", "best"), "invalid choice"),
    ("demo-max-new-tokens-float", demo("--max-new-tokens", "1.5"), "invalid int value"),
    ("bench-num-prompts-text", bench("--num-prompts", "many"), "invalid int value"),
    ("bench-compile-unknown", bench("--compile", "maybe"), "invalid choice"),
    ("train-drafter-unknown", train(drafter="bogus"), "invalid choice"),
    ("build-steps-text", build("--steps", "x"), "invalid int value"),
]


def run_command(argv: list[str]):
    """What ``main`` runs, without its error handling (to see the error's type)."""
    from spec.apps.cli import build_parser
    from spec.apps.shipped.build import main as build_main

    if argv[0] == "build-model":
        return build_main(argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


@pytest.mark.parametrize("row", CLI_ROWS, ids=[r.id for r in CLI_ROWS])
def test_cli(row, ctx, capsys):
    from spec.apps.cli import main

    argv = row.argv(ctx)
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    assert captured.err.startswith(f"spec {argv[0]}: error: "), captured.err
    assert re.search(row.keyword, captured.err), f"stderr does not name the fix ({row.keyword!r}): {captured.err}"
    with pytest.raises(SpecError) as info:
        run_command(argv)
    assert type(info.value) is row.error, f"{type(info.value).__name__}: {info.value}"


@pytest.mark.parametrize("case_id, argv, keyword", ARGPARSE_ROWS, ids=[r[0] for r in ARGPARSE_ROWS])
def test_cli_argparse(case_id, argv, keyword, ctx, capsys):
    from spec.apps.cli import main

    with pytest.raises(SystemExit) as info:
        main(argv(ctx))
    err = capsys.readouterr().err
    assert info.value.code == 2 and keyword in err and "usage: spec" in err and "Traceback" not in err


def test_no_command_row_loads_the_shipped_model(ctx, monkeypatch, capsys):
    """Every refusal above happens before the (slow) model load: make loading it fail loudly."""
    import spec.apps.shipped as shipped_module
    from spec.apps.cli import main

    def refuse(*args, **kwargs):
        raise AssertionError("a command loaded the shipped model before refusing its input")

    monkeypatch.setattr(shipped_module, "load_shipped", refuse)
    for row in CLI_ROWS:
        assert main(row.argv(ctx)) == 2, row.id
    capsys.readouterr()


def test_matrix_size():
    count = len(API_ROWS) + len(CLI_ROWS) + len(ARGPARSE_ROWS)
    assert count >= 150, count


# ==== 7. a crash at every write point leaves the old files or the new ones ================================
class Crash(Exception):
    """Stands in for the process dying at a write point."""


WRITE_POINTS = ("_write_file", "_replace", "_exchange", "_remove_tree")


def record_write_points(monkeypatch, crash_at: int | None = None, exchange: bool = True) -> list[str]:
    """Route every file-system change of spec.io.atomic (and every PNG matplotlib saves) through a counter
    that raises Crash at call number ``crash_at``; returns the list of points reached."""
    import matplotlib.figure

    from spec.io import atomic

    calls: list[str] = []

    def wrap(name, original):
        def point(*args, **kwargs):
            calls.append(name)
            if crash_at is not None and len(calls) == crash_at:
                raise Crash(f"crash at write point {crash_at} ({name})")
            if name == "_exchange" and not exchange:
                return False
            return original(*args, **kwargs)
        return point

    for name in WRITE_POINTS:
        monkeypatch.setattr(atomic, name, wrap(name, getattr(atomic, name)))
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", wrap("savefig", matplotlib.figure.Figure.savefig))
    return calls


def writes_in(action, monkeypatch, exchange: bool) -> list[str]:
    with monkeypatch.context() as patch:
        calls = record_write_points(patch, exchange=exchange)
        action()
    return calls


# save_pretrained over existing heads: (exchange available?, the write points of an uninterrupted save)
HEADS_POINTS = {
    True: ["_write_file", "_write_file", "_exchange", "_remove_tree"],
    False: ["_write_file", "_write_file", "_exchange", "_replace", "_replace", "_remove_tree"],
}


def heads_weights(drafter: MedusaDrafter) -> dict:
    return {k: v.clone() for k, v in drafter.heads.state_dict().items()}


def heads_version(directory: Path, m, old: dict, new: dict) -> str:
    loaded = heads_weights(MedusaDrafter.from_pretrained(directory, m))
    for name, weights in (("old", old), ("new", new)):
        if all(torch.equal(loaded[k], weights[k]) for k in weights):
            return name
    raise AssertionError("the heads loaded are neither the old nor the new ones")


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two-renames"])
def test_save_pretrained_write_points(exchange, ctx, monkeypatch, tmp_path):
    old, new = (MedusaDrafter.from_model(ctx.m, num_heads=2, seed=s) for s in (0, 1))
    old.save_pretrained(tmp_path / "h")
    assert writes_in(lambda: new.save_pretrained(tmp_path / "h"), monkeypatch, exchange) == HEADS_POINTS[exchange]
    assert heads_version(tmp_path / "h", ctx.m, heads_weights(old), heads_weights(new)) == "new"


@pytest.mark.parametrize("exchange, point", [(e, k) for e in (True, False) for k in range(1, len(HEADS_POINTS[e]) + 1)],
                         ids=[f"{'exchange' if e else 'two-renames'}-{k}-{HEADS_POINTS[e][k - 1]}"
                              for e in (True, False) for k in range(1, len(HEADS_POINTS[e]) + 1)])
def test_crash_during_save_pretrained_leaves_old_or_new_heads(exchange, point, ctx, monkeypatch, tmp_path):
    old, new = (MedusaDrafter.from_model(ctx.m, num_heads=2, seed=s) for s in (0, 1))
    old_w, new_w = heads_weights(old), heads_weights(new)
    directory = tmp_path / "h"
    old.save_pretrained(directory)
    with monkeypatch.context() as patch:
        record_write_points(patch, crash_at=point, exchange=exchange)
        with pytest.raises(Crash):
            new.save_pretrained(directory)
    # The crash is before the swap (old), or after it (new): both load, never a mix.
    # Two renames: a crash before the second leaves only the backup, which is read in place of the directory.
    last_old = HEADS_POINTS[exchange].index("_exchange") + 1 + (0 if exchange else 2)
    expected = "old" if point <= last_old else "new"
    assert heads_version(directory, ctx.m, old_w, new_w) == expected
    # The next save recovers whatever the crash left.
    new.save_pretrained(directory)
    assert heads_version(directory, ctx.m, old_w, new_w) == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h"]


@pytest.mark.parametrize("point", [1, 2])
def test_crash_during_first_save_leaves_nothing_half_written(point, ctx, monkeypatch, tmp_path):
    drafter = MedusaDrafter.from_model(ctx.m, num_heads=2, seed=0)
    with monkeypatch.context() as patch:
        record_write_points(patch, crash_at=point)
        with pytest.raises(Crash):
            drafter.save_pretrained(tmp_path / "h")
    with pytest.raises(CheckpointError, match="does not exist"):
        MedusaDrafter.from_pretrained(tmp_path / "h", ctx.m)


TREE_POINTS = ["_write_file", "_replace"]


@pytest.mark.parametrize("point", range(1, len(TREE_POINTS) + 1), ids=TREE_POINTS)
def test_crash_during_save_tree_leaves_old_or_new_tree(point, monkeypatch, tmp_path):
    old, new = tree_from_choices([[0], [1]]), tree_from_choices([[0], [0, 0], [0, 0, 0]])
    path = tmp_path / "tree.json"
    save_tree(path, old, {"v": "old"})
    assert writes_in(lambda: save_tree(path, new, {"v": "new"}), monkeypatch, True) == TREE_POINTS
    save_tree(path, old, {"v": "old"})
    with monkeypatch.context() as patch:
        record_write_points(patch, crash_at=point)
        with pytest.raises(Crash):
            save_tree(path, new, {"v": "new"})
    tree, meta = load_tree(path)
    assert (tree, meta) == (old, {"v": "old"})  # the rename is the last step: a crash before it keeps the old file
    assert [p.name for p in tmp_path.iterdir()] == ["tree.json"]  # no temporary left behind


def bench_report(marker: str):
    from spec.bench.report import STAGES
    from spec.bench.report import BenchReport, MethodReport

    method = MethodReport(name=f"method-{marker}", tokens_per_second=10.0, speedup=1.0, repeat_tokens_per_second=(10.0,),
                          mean_accepted=1.5, accepted_histogram={1: 2, 2: 1}, stages=dict.fromkeys(STAGES, 0.2),
                          mean_tree_size=3.0, peak_memory_mb=1.0, matches_baseline=True, mismatched_prompts=())
    return BenchReport(baseline=f"method-{marker}", methods=(method,), settings={"marker": marker})


def report_version(out: Path) -> str:
    from spec.io import readable_directory

    directory = readable_directory(out)
    marker = json.loads((directory / "report.json").read_text())["settings"]["marker"]
    assert f"| method-{marker} |" in (directory / "report.md").read_text()  # the markdown is from the same run
    for png in ("speedup.png", "accepted.png", "stages.png"):
        assert (directory / png).stat().st_size > 0
    return marker


REPORT_POINTS = ["_write_file", "_replace", "_write_file", "_replace", "savefig", "savefig", "savefig",
                 "_exchange", "_remove_tree"]


def test_bench_report_write_points(monkeypatch, tmp_path):
    from spec.apps.bench_cli import write_report

    write_report(bench_report("old"), tmp_path / "out")
    points = writes_in(lambda: write_report(bench_report("new"), tmp_path / "out"), monkeypatch, True)
    assert points == REPORT_POINTS and report_version(tmp_path / "out") == "new"


@pytest.mark.parametrize("point", range(1, len(REPORT_POINTS) + 1),
                         ids=[f"{k}-{name}" for k, name in enumerate(REPORT_POINTS, 1)])
def test_crash_during_bench_report_leaves_old_or_new_report(point, monkeypatch, tmp_path):
    from spec.apps.bench_cli import write_report

    out = tmp_path / "out"
    write_report(bench_report("old"), out)
    (out / "notes.txt").write_text("mine")
    with monkeypatch.context() as patch:
        record_write_points(patch, crash_at=point)
        with pytest.raises(Crash):
            write_report(bench_report("new"), out)
    assert report_version(out) == ("new" if point > REPORT_POINTS.index("_exchange") + 1 else "old")
    assert (out / "notes.txt").read_text() == "mine"


# ==== 8. the documentation lists every error ===========================================================
def test_docs_list_every_error_type_with_an_example_and_a_fix():
    doc = (ROOT / "docs" / "errors.md").read_text()
    rows = {}
    for line in doc.splitlines():
        match = re.match(r"\| `(\w+)` \(`\w+`\) \|(.*)\|$", line)
        if match:
            rows[match.group(1)] = [cell.strip() for cell in match.group(2).split(" | ")]
    classes = [obj for _, obj in inspect.getmembers(errors, inspect.isclass)
               if issubclass(obj, SpecError) and obj is not SpecError]
    missing = sorted(c.__name__ for c in classes if c.__name__ not in rows)
    assert not missing, f"docs/errors.md has no row for {missing}"
    for cls in classes:
        when, example, fix = rows[cls.__name__][:3]
        assert when and example.startswith("`") and fix, cls.__name__
        parent = cls.__mro__[1].__name__
        assert f"`{cls.__name__}` (`{parent}`)" in doc or f"`{cls.__name__}` (`{cls.__mro__[2].__name__}`)" in doc, cls
