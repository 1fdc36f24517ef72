"""A reduced draft vocabulary: head drafters project onto the most frequent tokens only.

On a small model each head's vocabulary projection is a large share of the drafting
cost (4096 x 320 per head on the shipped model, about 15% of a whole forward pass).
Projecting onto the ``K`` most frequent tokens of the training data instead (as FR-Spec
and EAGLE-3 do) cuts that cost by ``V / K`` and rarely loses a candidate the target
would accept. Verification stays on the full vocabulary: greedy output is unchanged,
and a sampled draft's ``q`` is simply zero outside the subset, which rejection sampling
handles exactly. Plug-and-play: the heads' weights are sliced, not retrained.

EAGLE-3 trains its head on such a vocabulary from the start; its checkpoint keeps the two maps
(``d2t``: draft index -> target id; ``t2d``: target id -> in the draft vocabulary), checked to be
one injection by :meth:`DraftVocabulary.from_maps`.
"""

from __future__ import annotations

import weakref
from typing import Iterable, Optional, Sequence

import attrs
import torch
from torch import nn

from spec.errors import ConfigurationError


def _check_ids(instance, attribute, value) -> None:
    if not isinstance(value, torch.Tensor) or value.dim() != 1 or value.dtype != torch.long or value.numel() == 0:
        raise ConfigurationError("DraftVocabulary.token_ids must be a non-empty 1-D int64 tensor of token ids.")
    if int(value.min()) < 0 or int(value.max()) >= instance.vocab_size:
        raise ConfigurationError(
            f"DraftVocabulary.token_ids must lie in [0, {instance.vocab_size}); got ids from {int(value.min())} "
            f"to {int(value.max())}. Build it from token counts of this model's tokenizer.")
    if torch.unique(value).numel() != value.numel():
        raise ConfigurationError("DraftVocabulary.token_ids (the draft-to-target map) must not repeat a token: two "
                                 "draft indices for one target token is not an injection. Rebuild it with "
                                 "DraftVocabulary.from_counts.")


def stacked_projection(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``x`` ``[L, N, H]`` through projection ``l`` (``weight`` ``[L, K, H]``, ``bias`` ``[L, K]`` or None) for row
    ``l``, as one batched matmul -> ``[L, N, K]``."""
    out = torch.bmm(x.to(weight.dtype), weight.transpose(1, 2))
    return out if bias is None else out + bias[:, None, :]


@attrs.frozen(eq=False)
class DraftVocabulary:
    """``token_ids`` ``[K]``: the draft tokens, most frequent first; ``vocab_size``: the model's ``V``."""

    vocab_size: int
    token_ids: torch.Tensor = attrs.field(validator=_check_ids)
    _sliced: dict = attrs.field(factory=dict, init=False, repr=False)

    @classmethod
    def from_counts(cls, counts: torch.Tensor, size: int) -> "DraftVocabulary":
        """The ``size`` most frequent tokens of ``counts`` ``[V]`` (ties: lower id first)."""
        if counts.dim() != 1 or not 1 <= size <= counts.numel():
            raise ConfigurationError(f"size must be in [1, {counts.numel()}] for counts of {counts.numel()} tokens, "
                                     f"got {size}.")
        order = torch.sort(counts.double(), descending=True, stable=True).indices
        return cls(counts.numel(), order[:size].clone())

    @classmethod
    def from_corpus(cls, sequences: Iterable[Sequence[int] | torch.Tensor], vocab_size: int,
                    size: int) -> "DraftVocabulary":
        counts = torch.zeros(vocab_size, dtype=torch.float64)
        for seq in sequences:
            ids = torch.as_tensor(seq, dtype=torch.long).flatten()
            counts += torch.bincount(ids, minlength=vocab_size)[:vocab_size].double()
        return cls.from_counts(counts, size)

    @classmethod
    def from_maps(cls, d2t: torch.Tensor, t2d: torch.Tensor) -> "DraftVocabulary":
        """EAGLE-3's two maps: ``d2t`` ``[K]`` int64, draft index -> target token id, and ``t2d`` ``[V]`` bool,
        whether a target token is in the draft vocabulary. They must describe one injection: ``d2t``'s ids
        distinct and in range, and ``t2d`` true exactly at them."""
        if not isinstance(t2d, torch.Tensor) or t2d.dim() != 1 or t2d.dtype != torch.bool:
            raise ConfigurationError("The target-to-draft map t2d must be a 1-D bool tensor with one entry per target "
                                     f"token, got {getattr(t2d, 'dtype', type(t2d))} of shape "
                                     f"{tuple(getattr(t2d, 'shape', ()))}; rebuild the maps with "
                                     "DraftVocabulary.from_counts(...).t2d.")
        vocab = cls(t2d.numel(), d2t)  # checks d2t is an injection into [0, V)
        if not torch.equal(vocab.t2d.to(t2d.device), t2d):
            stray = int((vocab.t2d.to(t2d.device) != t2d).sum())
            raise ConfigurationError(
                f"The draft-to-target map d2t ({vocab.size} tokens) and the target-to-draft map t2d "
                f"({int(t2d.sum())} tokens marked) disagree on {stray} tokens, so they are not one injection of the "
                "draft vocabulary into the target's; rebuild both from the same token counts "
                "(DraftVocabulary.from_counts(...), then .token_ids and .t2d).")
        return vocab

    @property
    def d2t(self) -> torch.Tensor:
        """``[K]`` int64: draft index -> target token id (EAGLE-3's name for ``token_ids``)."""
        return self.token_ids

    @property
    def t2d(self) -> torch.Tensor:
        """``[V]`` bool: whether each target token is a draft token."""
        member = torch.zeros(self.vocab_size, dtype=torch.bool, device=self.token_ids.device)
        member[self.token_ids] = True
        return member

    @property
    def size(self) -> int:
        return self.token_ids.numel()

    def coverage(self, sequences: Iterable[Sequence[int] | torch.Tensor]) -> float:
        """Share of the tokens of ``sequences`` that are in the draft vocabulary (held-out data: how often
        the next token is even proposable)."""
        member = torch.zeros(self.vocab_size, dtype=torch.bool)
        member[self.token_ids] = True
        hit = total = 0
        for seq in sequences:
            ids = torch.as_tensor(seq, dtype=torch.long).flatten()
            hit += int(member[ids].sum())
            total += ids.numel()
        return hit / total if total else 0.0

    def weights(self, linears: Sequence[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The projections' rows for the draft tokens, stacked: ``[L, K, H]`` and bias ``[L, K]`` (or None).

        Cached per set of projections (Hydra slices one head's at a time, Medusa all heads' at once) until
        any of their weights changes: training updates them in place, which bumps ``_version``."""
        key = tuple(id(lin.weight) for lin in linears)
        stamp = tuple((lin.weight._version, lin.weight.device, lin.weight.dtype) for lin in linears)
        cached = self._sliced.get(key)
        # An id can be reused by a new module once the old one is freed: the weak references tell them apart.
        if cached is None or cached[0] != stamp or any(ref() is not lin.weight for ref, lin in zip(cached[3], linears)):
            ids = self.token_ids.to(linears[0].weight.device)
            weight = torch.stack([lin.weight.detach()[ids] for lin in linears])
            bias = None if linears[0].bias is None else torch.stack([lin.bias.detach()[ids] for lin in linears])
            if len(self._sliced) > 64:  # drafters come and go; keep the cache bounded
                self._sliced.clear()
            cached = self._sliced[key] = (stamp, weight, bias, [weakref.ref(lin.weight) for lin in linears])
        return cached[1], cached[2]

    def project(self, linears: Sequence[nn.Linear], x: torch.Tensor) -> torch.Tensor:
        """Logits over the draft tokens: ``x`` ``[L, N, H]`` through projection ``l`` for row ``l`` -> ``[L, N, K]``."""
        return stacked_projection(x, *self.weights(linears))

    def to_full(self, logits: torch.Tensor) -> torch.Tensor:
        """``[..., K]`` draft-token logits -> ``[..., V]`` logits, ``-inf`` outside the draft vocabulary."""
        full = logits.new_full((*logits.shape[:-1], self.vocab_size), float("-inf"))
        full[..., self.token_ids.to(logits.device)] = logits
        return full
