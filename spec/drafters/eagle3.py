"""EAGLE-3 drafter (Li et al., 2025, "EAGLE-3: Scaling up Inference Acceleration of Large Language Models via
Training-Time Test").

EAGLE-3 keeps EAGLE's one decoder layer over (token, feature) pairs but changes what it reads and predicts:

* **Fused features**: instead of the target's last hidden state, the residual streams after three of its
  layers, low, middle and high (the paper: layers 2, L/2 and L-3), concatenated ``[3H]`` and fused by
  ``fc`` (3H -> H) into ``g``. The verifier reports them (``traits.features == "layers:<a>,<b>,<c>"``;
  ``verifier_for`` builds one that does), and nothing extra is computed for other drafters.
* **The layer reads 2H**: ``h = [norm(E(x)) ; norm(g)]`` goes into attention (q, k and v take 2H inputs);
  the residual stream is ``g``. Further down a tree a node's ``g`` is its parent's output (the drafter's
  own, unnormalised prediction), as in training-time test.
* **Own head on a reduced vocabulary**: ``logits = lm_head_d(norm(x))`` over ``K`` draft tokens chosen
  by frequency on the training data, with the maps ``d2t`` (draft index -> target id) and ``t2d`` (target
  id -> member) saved with the weights (:class:`~spec.drafters.draft_vocab.DraftVocabulary`). Only draft
  tokens can be proposed; verification is on the full vocabulary, so output is unchanged (greedy) or
  exactly distributed (a sampled draft's ``q`` is zero outside the draft vocabulary).
* **No feature regression**: it is trained only through its tokens, unrolled on its own predictions
  (training-time test, ``spec.training.eagle``), so its outputs need not stay near the target's features.

Drafting, the cache and trees are EAGLE's (:class:`~spec.drafters.eagle.EagleDrafter`).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from spec.drafters.draft_vocab import DraftVocabulary
from spec.drafters.eagle import EagleDrafter
from spec.errors import ConfigurationError
from spec.models import hidden_size, lm_head, output_vocab_size
from spec.protocols import DrafterTraits
from spec.runtime import build_decoder_layer
from spec.runtime.features import check_features, num_layers

_LAYER = "EAGLE-3 draft layer"


def default_layers(count: int) -> tuple[int, int, int]:
    """The paper's layers ``(2, L // 2, L - 3)`` for an ``L``-layer model when they are three distinct layers
    below ``L`` (from 7 layers on); shallower models get ``(1, L // 2, L - 1)`` (``(0, 1, 1)`` for 2 layers), so
    the streams still differ where they can: the shipped 6-layer model reads layers 1, 3 and 5."""
    paper = (2, count // 2, count - 3)
    if len(set(paper)) == 3 and all(0 <= k < count for k in paper):
        return paper
    return (1 if count >= 3 else 0, count // 2, count - 1)


def features_name(layers: Sequence[int]) -> str:
    return "layers:" + ",".join(str(k) for k in layers)


class Eagle3Heads(nn.Module):
    """The trainable part of an EAGLE-3 drafter: ``fc`` (len(layers) * H -> H), one decoder layer whose
    attention reads ``2H``, a norm before its own ``lm_head`` ``[K, H]``, and the vocabulary maps."""

    def __init__(self, layer: nn.Module, hidden: int, vocab: int, draft_tokens: Sequence[int], max_depth: int,
                 layers: Sequence[int], eps: float) -> None:
        super().__init__()
        if max_depth < 1:
            raise ValueError(f"EAGLE-3 needs max_depth >= 1, got {max_depth}.")
        if not isinstance(layers, (list, tuple)) or not layers or not all(isinstance(k, int) and k >= 0 for k in layers):
            raise ValueError(f"layers must be a non-empty list of layer counts >= 0, got {layers!r}.")
        if not isinstance(draft_tokens, (list, tuple)) or not all(
                isinstance(t, int) and not isinstance(t, bool) for t in draft_tokens):
            raise ValueError(f"draft_tokens must be a list of token ids, got {type(draft_tokens).__name__}.")
        # On the CPU even when the module is built on the meta device: the maps are checked now.
        vocabulary = DraftVocabulary(vocab, torch.tensor(draft_tokens, dtype=torch.long, device="cpu"))
        self.hidden, self.vocab, self.max_depth, self.layers = hidden, vocab, max_depth, tuple(layers)
        self.fc = nn.Linear(len(layers) * hidden, hidden, bias=False)
        attn = layer.self_attn
        for name in ("q_proj", "k_proj", "v_proj"):  # attention reads [norm(E(x)) ; norm(g)]
            old = getattr(attn, name)
            new = nn.Linear(2 * hidden, old.out_features, bias=old.bias is not None,
                            device=old.weight.device, dtype=old.weight.dtype)
            setattr(attn, name, new)
        self.layer = layer
        self.hidden_norm = nn.RMSNorm(hidden, eps=eps)
        self.norm = nn.RMSNorm(hidden, eps=eps)
        self.lm_head = nn.Linear(hidden, vocabulary.size, bias=False)
        # The maps are part of what was trained; a checkpoint keeps d2t in its config (draft_tokens, JSON),
        # not in the weights file, which holds floating-point tensors only. t2d follows from it.
        self.register_buffer("d2t", vocabulary.d2t, persistent=False)
        self.register_buffer("t2d", vocabulary.t2d, persistent=False)

    def read(self, features: torch.Tensor) -> torch.Tensor:
        """The target's fused features ``[..., len(layers) * H]`` -> ``g`` ``[..., H]``."""
        return self.fc(features)

    def step(self, embedded: torch.Tensor, g: torch.Tensor, attention) -> torch.Tensor:
        """Pairs (``E(x)``, ``g``) ``[..., H]`` each -> the layer's output ``[..., H]`` (the next ``g``)."""
        h = torch.cat([self.layer.input_layernorm(embedded), self.hidden_norm(g)], dim=-1)
        x = g + attention(h)
        return x + self.layer.mlp(self.layer.post_attention_layernorm(x))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., H]`` -> logits over the draft vocabulary ``[..., K]``."""
        return self.lm_head(self.norm(x))

    def set_vocabulary(self, vocab: DraftVocabulary, target_lm_head: nn.Linear) -> None:
        """Use ``vocab``'s tokens, the head restarted from ``target_lm_head``'s rows for them (a fresh drafter
        choosing its vocabulary from the training data before training; the head is rebuilt if the size differs)."""
        if vocab.vocab_size != self.vocab:
            raise ConfigurationError(f"This draft vocabulary indexes {vocab.vocab_size} target tokens but the EAGLE-3 "
                                     f"head's target has {self.vocab}; build it from this model's token counts.")
        weight = self.lm_head.weight
        head = nn.Linear(self.hidden, vocab.size, bias=False, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            head.weight.copy_(target_lm_head.weight[vocab.d2t.to(target_lm_head.weight.device)])
        self.lm_head = head
        self.register_buffer("d2t", vocab.d2t.to(self.d2t.device), persistent=False)
        self.register_buffer("t2d", vocab.t2d.to(self.t2d.device), persistent=False)


class Eagle3Drafter(EagleDrafter):
    """Drafts a tree with EAGLE-3: fused low/middle/high features, a 2H-input layer, its own draft-vocabulary head."""

    drafter_type = "eagle3"
    draft_vocab_in_heads = True
    hyperparameter_names = frozenset({"hidden_size", "vocab_size", "draft_tokens", "max_depth", "layers",
                                      "rms_norm_eps"})

    def __init__(self, model, heads: Eagle3Heads, candidates: str = "top_k") -> None:
        # The layers first: a model without them cannot feed this drafter whatever else matches.
        check_features(model, features_name(heads.layers), "This EAGLE-3 drafter")
        super().__init__(model, heads, candidates)
        # Checked again here: maps loaded from a checkpoint may have been edited.
        self.draft_vocab = DraftVocabulary.from_maps(heads.d2t, heads.t2d)

    @classmethod
    def from_model(cls, model, max_depth: int = 5, draft_vocab: Optional[DraftVocabulary] = None,
                   layers: Optional[Sequence[int]] = None, seed: Optional[int] = None,
                   candidates: str = "top_k") -> "Eagle3Drafter":
        """Fresh (untrained) EAGLE-3 heads for ``model``.

        ``draft_vocab``: the reduced vocabulary (by token frequency on the training data, e.g.
        ``DraftVocabulary.from_corpus``); None keeps every token. ``layers``: the target layers to fuse
        (default :func:`default_layers`). The head starts from the target's lm_head rows for the draft tokens.
        """
        count = num_layers(model)
        layers = tuple(default_layers(count) if layers is None else layers)
        check_features(model, features_name(layers), "This EAGLE-3 drafter")
        vocab = output_vocab_size(model)
        draft_vocab = draft_vocab or DraftVocabulary(vocab, torch.arange(vocab))
        if draft_vocab.vocab_size != vocab:
            raise ConfigurationError(f"This draft vocabulary indexes {draft_vocab.vocab_size} target tokens but the "
                                     f"model has {vocab}; build it from this model's token counts.")
        hyper = {"hidden_size": hidden_size(model), "vocab_size": vocab, "draft_tokens": draft_vocab.d2t.tolist(),
                 "max_depth": max_depth, "layers": list(layers),
                 "rms_norm_eps": float(getattr(model.config, "rms_norm_eps", 1e-6))}
        if seed is not None:
            torch.manual_seed(seed)
        heads = cls.build_heads(model, hyper)
        with torch.no_grad():  # the head starts from the target's lm_head rows for the draft tokens
            heads.lm_head.weight.copy_(lm_head(model).weight[draft_vocab.d2t.to(lm_head(model).weight.device)])
        return cls(model, heads.to(device=lm_head(model).weight.device, dtype=lm_head(model).weight.dtype), candidates)

    def hyperparameters(self) -> dict:
        return {"hidden_size": self.heads.hidden, "vocab_size": self.heads.vocab,
                "draft_tokens": self.heads.d2t.tolist(), "max_depth": self.heads.max_depth,
                "layers": list(self.heads.layers), "rms_norm_eps": float(self.heads.norm.eps)}

    @classmethod
    def build_heads(cls, model, hyper: dict) -> Eagle3Heads:
        layer = build_decoder_layer(model, _LAYER)  # first: refuses unsupported architectures
        layers = hyper["layers"]
        if not isinstance(layers, list) or not all(isinstance(k, int) and not isinstance(k, bool) for k in layers):
            raise ValueError(f"layers must be a list of whole numbers, got {layers!r}.")
        return Eagle3Heads(layer, hyper["hidden_size"], hyper["vocab_size"], hyper["draft_tokens"],
                           hyper["max_depth"], layers, hyper["rms_norm_eps"])

    @property
    def traits(self) -> DrafterTraits:
        base = super().traits
        return DrafterTraits(candidate_kinds=base.candidate_kinds, log_confidence=True,
                             features=features_name(self.heads.layers))

    def use_draft_vocab(self, vocab: Optional[DraftVocabulary]):
        """EAGLE-3's vocabulary is part of its trained head; a different one is refused."""
        raise ConfigurationError("An EAGLE-3 drafter's draft vocabulary is trained with its head and saved with it "
                                 "(d2t, t2d); to use another, train a drafter with that vocabulary "
                                 "(spec train --drafter eagle3).")

    def vocabulary(self) -> None:
        return None  # its own head, trained on its draft vocabulary

    def logits(self, predicted: torch.Tensor, vocabulary=None) -> torch.Tensor:
        return self.heads.logits(predicted)
