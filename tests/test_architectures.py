"""Tree verification is exact on every tested transformers architecture, or refused when the model is built.

``ARCHITECTURES`` is the list: one tiny random model per entry (``SIZE`` below, float64, weights scaled
as in ``tiny_model`` so greedy argmax has no near-ties). For a supported entry, ``make_verifier(model)``
picks the verifier the entry names, and speculative greedy decoding through it (and through the generic
verifier where the fast one was picked) is token-identical to the model's own ``generate``, from a short
prompt (trees cross the sliding windows) and from a long one (trees reach the end of the context). Every
tree node's logits also equal the model's own forward over that node's path. For a refused entry, every
verifier constructor raises ``UnsupportedError`` naming the feature, and with the refusal bypassed tree
verification really is wrong or crashes.

``docs/architectures.md``'s table is rendered from the same list (``test_docs_table_is_rendered_from_this_list``);
``SPEC_WRITE_DOCS=1 python -m pytest tests/test_architectures.py`` rewrites it.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Optional

import pytest
import torch
import transformers

from spec import (FastTreeVerifier, GreedyAcceptor, SelfDraftVerifier, SpeculativeDecoder, StaticTreeBuilder,
                  TreeAttentionVerifier, make_verifier)
from spec.errors import SpecError, UnsupportedError
from spec.protocols import Draft
from spec.testing.assertions import assert_same_tokens
from spec.testing.drafters import OracleDrafter
from spec.testing.models import model_from_config
from spec.runtime import support

VOCAB, HIDDEN, CONTEXT = 96, 32, 128
# Every model's size, under each name the config classes use; an entry gets the ones its class declares.
SIZE = {
    "vocab_size": VOCAB, "hidden_size": HIDDEN, "n_embd": HIDDEN, "d_model": HIDDEN,
    "num_hidden_layers": 2, "num_layers": 2, "n_layer": 2, "n_layers": 2,
    "num_attention_heads": 4, "num_heads": 4, "n_head": 4, "n_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
    "intermediate_size": 2 * HIDDEN, "ffn_dim": 2 * HIDDEN,
    "max_position_embeddings": CONTEXT, "n_positions": CONTEXT, "n_ctx": CONTEXT, "max_seq_len": CONTEXT,
    "tie_word_embeddings": False, "bos_token_id": None, "eos_token_id": None, "pad_token_id": None,
}
# Rotary scaling factors for a head_dim of 8 (one per frequency).
SHORT, LONG = [1.0, 1.1, 1.3, 1.6], [1.0, 2.0, 4.0, 8.0]
WINDOW = 8
FAST, GENERIC = "fast", "generic"
VERIFIER_NAMES = {FAST: "FastTreeVerifier", GENERIC: "TreeAttentionVerifier"}


@dataclass(frozen=True)
class Arch:
    """One tested configuration: ``settings`` go to ``config_class`` on top of ``SIZE``."""

    name: str
    config_class: type
    settings: dict = field(default_factory=dict)
    verifier: str = GENERIC  # what make_verifier picks
    refused: Optional[str] = None  # or the feature every verifier refuses it for

    def config(self) -> transformers.PretrainedConfig:
        declared = {name for cls in self.config_class.__mro__ for name in vars(cls).get("__annotations__", {})}
        # A copy: transformers fills in (and so would change) the rotary parameters it is given.
        return self.config_class(**{k: v for k, v in SIZE.items() if k in declared}, **copy.deepcopy(self.settings))

    @property
    def id(self) -> str:
        return self.name.replace(" ", "_").replace(",", "")


def rope(kind: str, **params) -> dict:
    return {"rope_parameters": {"rope_type": kind, **params}}


def window(size: int = WINDOW, **more) -> dict:
    return {"sliding_window": size, **more}


LONGROPE = "length-dependent rotary scaling"
ROW_WINDOWS = "row-indexed local windows"
ROW_CAUSAL = "row-indexed causal masks"
ALIBI = "ALiBi"

ARCHITECTURES = [
    Arch("Llama", transformers.LlamaConfig, verifier=FAST),
    Arch("Llama, rotary linear", transformers.LlamaConfig, rope("linear", factor=2.0), verifier=FAST),
    Arch("Llama, rotary dynamic", transformers.LlamaConfig, rope("dynamic", factor=2.0)),
    Arch("Llama, rotary llama3", transformers.LlamaConfig,
         rope("llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=32),
         verifier=FAST),
    Arch("Llama, rotary yarn", transformers.LlamaConfig, rope("yarn", factor=4.0, original_max_position_embeddings=32),
         verifier=FAST),
    Arch("Llama, rotary longrope within its original length", transformers.LlamaConfig,
         rope("longrope", factor=1.0, original_max_position_embeddings=CONTEXT, short_factor=SHORT, long_factor=LONG)),
    Arch("Llama, rotary longrope past its original length", transformers.LlamaConfig,
         rope("longrope", factor=4.0, original_max_position_embeddings=32, short_factor=SHORT, long_factor=LONG),
         refused=LONGROPE),
    Arch("Qwen2", transformers.Qwen2Config, verifier=FAST),
    Arch("Qwen2, window on layer 1 only", transformers.Qwen2Config,
         window(use_sliding_window=True, max_window_layers=1)),
    Arch("Qwen3", transformers.Qwen3Config),
    Arch("Qwen3, window on every layer", transformers.Qwen3Config,
         window(use_sliding_window=True, max_window_layers=0)),
    Arch("Mistral", transformers.MistralConfig, window(None), verifier=FAST),
    Arch("Mistral, window", transformers.MistralConfig, window(), verifier=FAST),
    Arch("Mistral, window shorter than the tree", transformers.MistralConfig, window(4), verifier=FAST),
    Arch("Mixtral, window shorter than the tree", transformers.MixtralConfig,
         window(4, num_local_experts=4, num_experts_per_tok=2, experts_implementation="eager")),
    Arch("GPT-2", transformers.GPT2Config),
    Arch("GPT-NeoX", transformers.GPTNeoXConfig),
    Arch("GPT-J", transformers.GPTJConfig, {"rotary_dim": 4}),
    Arch("Phi", transformers.PhiConfig),
    Arch("Phi-3", transformers.Phi3Config),
    Arch("Phi-3, window", transformers.Phi3Config, window()),
    Arch("Phi-3, 128k-style longrope", transformers.Phi3Config,
         {"original_max_position_embeddings": 32, **rope("longrope", short_factor=SHORT, long_factor=LONG)},
         refused=LONGROPE),
    Arch("Gemma", transformers.GemmaConfig),
    Arch("Gemma 2, window on alternate layers", transformers.Gemma2Config, window()),
    Arch("Gemma 3, window on layer 0", transformers.Gemma3TextConfig,
         window(layer_types=["sliding_attention", "full_attention"])),
    Arch("OPT", transformers.OPTConfig, {"word_embed_proj_dim": HIDDEN}),
    Arch("Falcon", transformers.FalconConfig),
    Arch("Falcon, new decoder architecture", transformers.FalconConfig,
         {"new_decoder_architecture": True, "num_kv_heads": 2}),
    Arch("Falcon, ALiBi", transformers.FalconConfig, {"alibi": True}, refused=ALIBI),
    Arch("StableLM", transformers.StableLmConfig),
    Arch("StarCoder2, window", transformers.Starcoder2Config, window()),
    Arch("OLMo 2", transformers.Olmo2Config),
    Arch("Cohere", transformers.CohereConfig),
    Arch("Cohere 2, window on layer 0", transformers.Cohere2Config,
         window(layer_types=["sliding_attention", "full_attention"])),
    Arch("Granite", transformers.GraniteConfig,
         {"embedding_multiplier": 2.0, "residual_multiplier": 0.5, "attention_multiplier": 0.25,
          "logits_scaling": 2.0}),
    Arch("CodeGen", transformers.CodeGenConfig, {"rotary_dim": 4}),
    Arch("GPT-BigCode, multi-query", transformers.GPTBigCodeConfig),
    Arch("GPT-BigCode, multi-head", transformers.GPTBigCodeConfig, {"multi_query": False}),
    Arch("GPT-Neo, local window on layer 1", transformers.GPTNeoConfig,
         {"attention_types": [[["global", "local"], 1]], "window_size": WINDOW}, refused=ROW_WINDOWS),
    Arch("GPT-Neo, global layers only", transformers.GPTNeoConfig, {"attention_types": [[["global"], 2]]},
         refused=ROW_CAUSAL),
    Arch("Bloom", transformers.BloomConfig, refused=ALIBI),
    Arch("MPT", transformers.MptConfig, refused=ALIBI),
]
SUPPORTED = [a for a in ARCHITECTURES if a.refused is None]
REFUSED = [a for a in ARCHITECTURES if a.refused is not None]

# A branching tree 5 deep: accepted paths put nodes in rows past their depth, and reach past 4-token windows.
CHOICES = [[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 0], [0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0, 0]]
NEW_TOKENS = 40
# Logit checks, (prefix length, trees verified): past the windows and across the refused longrope configs' original
# length of 32; then deep enough into the context that a tree's rows (not its positions) run past its end.
PREFIXES = ((30, 2), (CONTEXT - 5, 1))
# Greedy runs: a short prompt (trees cross the windows) and a long one (trees reach the context's last position).
PROMPT_LENGTHS = (5, CONTEXT - NEW_TOKENS)


@lru_cache(maxsize=None)
def build(name: str):
    arch = next(a for a in ARCHITECTURES if a.name == name)
    return model_from_config(arch.config(), seed=0)


def prompt(length: int, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (1, length), generator=torch.Generator().manual_seed(seed))


def verifier_kinds(arch: Arch) -> list[str]:
    """make_verifier's pick ("auto"), and the generic verifier too where that pick is the fast one."""
    return ["auto", GENERIC] if arch.verifier == FAST else ["auto"]


@pytest.mark.parametrize("arch", SUPPORTED, ids=lambda a: a.id)
def test_make_verifier_picks_the_listed_verifier(arch):
    m = build(arch.name)
    assert support.unsupported_reason(m) is None
    assert type(make_verifier(m)).__name__ == VERIFIER_NAMES[arch.verifier]


@pytest.mark.parametrize("arch", SUPPORTED, ids=lambda a: a.id)
def test_speculative_greedy_equals_generate(arch):
    m = build(arch.name)
    for seed, length in enumerate(PROMPT_LENGTHS):
        p = prompt(length, seed)
        expected = m.generate(p, max_new_tokens=NEW_TOKENS, do_sample=False)
        assert expected.shape[1] == length + NEW_TOKENS
        for kind in verifier_kinds(arch):
            decoder = SpeculativeDecoder(m, OracleDrafter(expected, VOCAB, accuracy=0.9, max_depth=5, seed=seed),
                                         StaticTreeBuilder.from_choices(CHOICES), make_verifier(m, kind),
                                         GreedyAcceptor())
            out = decoder.generate(p, max_new_tokens=NEW_TOKENS)
            assert_same_tokens(out.sequences, expected, f"{arch.name} ({kind} verifier, prompt of {length})")
            # Long accepted paths: the cache was compacted and trees sat in rows past their depth.
            assert max(s.accepted for s in out.steps) >= 3


def tree_logits_error(m, verifier, prefix: torch.Tensor, seed: int, rounds: int) -> float:
    """Largest gap between a verified tree's logits and the model's own forward over each node's path.

    Verifies ``rounds`` trees: the first on ``prefix`` (its last token the root), each next one after
    committing the tree's deepest path and a new root.
    """
    tree = StaticTreeBuilder.from_choices(CHOICES).tree()
    generator = torch.Generator().manual_seed(seed)
    verifier.reset()
    verifier.prefill(prefix[:-1])
    context, error = prefix, 0.0  # the root last, not cached yet
    for _ in range(rounds):
        tokens = torch.randint(0, VOCAB, (tree.num_nodes,), generator=generator)
        tokens[0] = context[-1]
        result = verifier.verify(Draft(tree=tree, tokens=tokens))
        with torch.no_grad():
            for node in range(tree.num_nodes):
                path = list(tree.path_to(node))
                own = m(torch.cat([context, tokens[path[1:]]])[None]).logits[0, -1]
                error = max(error, float((result.logits[node] - own).abs().max()))
        deepest = list(tree.path_to(tree.num_nodes - 1))
        verifier.commit(tuple(deepest))
        bonus = torch.randint(0, VOCAB, (1,), generator=generator)
        context = torch.cat([context, tokens[deepest[1:]], bonus])
    return error


@pytest.mark.parametrize("arch", SUPPORTED, ids=lambda a: a.id)
def test_every_tree_node_gets_the_models_own_logits(arch):
    """Stronger than greedy equality (which a small error can pass): the logits at every node, past the windows
    and with rows past the end of the context."""
    m = build(arch.name)
    # Eager attention in transformers (Gemma 2's, for its soft-capping) takes its softmax in float32.
    tolerance = 1e-5 if m.config._attn_implementation == "eager" else 1e-9
    for kind in verifier_kinds(arch):
        for length, rounds in PREFIXES:
            error = tree_logits_error(m, make_verifier(m, kind), prompt(length, seed=7)[0], seed=3, rounds=rounds)
            assert error < tolerance, (kind, length, error)


CONSTRUCTORS = {
    "TreeAttentionVerifier": TreeAttentionVerifier,
    "FastTreeVerifier": FastTreeVerifier,
    "make_verifier": make_verifier,
    "make_verifier-generic": lambda m: make_verifier(m, "generic"),
    "make_verifier-fast": lambda m: make_verifier(m, "fast"),
    "SelfDraftVerifier": lambda m: SelfDraftVerifier(m, exit_layer=1),
}


@pytest.mark.parametrize("construct", list(CONSTRUCTORS), ids=list(CONSTRUCTORS))
@pytest.mark.parametrize("arch", REFUSED, ids=lambda a: a.id)
def test_refused_at_construction_naming_the_feature(arch, construct):
    m = build(arch.name)
    with pytest.raises(UnsupportedError) as refusal:
        CONSTRUCTORS[construct](m)
    message = str(refusal.value)
    assert f"exactly: {arch.refused}:" in message
    assert "model.generate" in message  # what to do instead


@pytest.mark.parametrize("arch", REFUSED, ids=lambda a: a.id)
def test_without_the_refusal_tree_verification_would_be_wrong(arch, monkeypatch):
    """The refusal is needed: bypassed, tree verification differs from the model's own logits, or crashes."""
    m = build(arch.name)
    assert support.unsupported_reason(m).startswith(f"{arch.refused}:")
    monkeypatch.setattr(support, "unsupported_reason", lambda model: None)
    if getattr(m.config, "max_position_embeddings", None) is None:  # Bloom and MPT do not state one
        monkeypatch.setattr(m.config, "max_position_embeddings", CONTEXT, raising=False)
    verifier = TreeAttentionVerifier(m)
    for length, rounds in PREFIXES:
        try:
            error = tree_logits_error(m, verifier, prompt(length, seed=7)[0], seed=3, rounds=rounds)
        except SpecError:
            raise
        except (ValueError, RuntimeError):  # transformers' own errors, raised mid-forward
            return
        if error > 1e-3:
            return
    pytest.fail(f"{arch.name}: tree verification matched the model without the refusal")


# ---- docs/architectures.md ------------------------------------------------------------------------------

DOCS = Path(__file__).resolve().parent.parent / "docs" / "architectures.md"
BEGIN = "<!-- BEGIN generated by tests/test_architectures.py; SPEC_WRITE_DOCS=1 rewrites it -->"
END = "<!-- END generated -->"


def render_table() -> str:
    lines = [BEGIN, "", "| architecture | config (on top of the tiny sizes) | `make_verifier(model)` |",
             "|---|---|---|"]
    refusals = []
    for arch in ARCHITECTURES:
        settings = ", ".join(f"{k}={v!r}" for k, v in arch.settings.items())
        config = f"`{arch.config_class.__name__}({settings})`"
        if arch.refused is None:
            chosen = f"{arch.verifier} (`{VERIFIER_NAMES[arch.verifier]}`)"
        else:
            chosen = f"refused: {arch.refused}"
            refusals.append(f"- **{arch.name}**: {support.unsupported_reason(build(arch.name))}.")
        lines.append(f"| {arch.name} | {config} | {chosen} |")
    lines += ["", f"{len(SUPPORTED)} verified exactly, {len(REFUSED)} refused. The refusals, as raised:", "",
              *refusals, "", END]
    return "\n".join(lines)


def test_docs_table_is_rendered_from_this_list():
    table = render_table()
    text = DOCS.read_text() if DOCS.exists() else ""
    if os.environ.get("SPEC_WRITE_DOCS") == "1":
        if BEGIN in text and END in text:
            text = text[: text.index(BEGIN)] + table + text[text.index(END) + len(END):]
        else:
            text = text + ("\n" if text else "") + table + "\n"
        DOCS.write_text(text)
    assert table in text, "docs/architectures.md is out of date: rerun this test with SPEC_WRITE_DOCS=1"
