"""What every head drafter shares: the model it drafts for, a module ``heads`` with one head per depth,
its checkpoint format, the hidden state it drafts from and the checks before each draft.

A subclass supplies only what differs: ``hyperparameters`` (what a checkpoint records),
``build_heads`` (a fresh module from them) and ``draft`` (fill a tree from the hidden state).
Optionally ``extend_context``/``reset_context`` for heads that keep a context layer of their own.
"""

from __future__ import annotations

import os
import weakref
from typing import Any, Callable, ClassVar, Optional

import torch
from torch import nn

from spec.drafters.checkpointing import (
    check_model_dims,
    check_same_placement,
    load_drafter,
    load_state_strict,
    save_drafter,
)
from spec.drafters.draft_vocab import DraftVocabulary
from spec.drafters.sampled import CANDIDATE_MODES, check_candidate_mode
from spec.drafters.tree_filling import check_tree_fits, fill_top_k, root_only_draft
from spec.errors import ConfigurationError, IncompatibleDrafterError, InputError, ShapeError, UnsupportedError
from spec.models import ModelFingerprint, lm_head, model_device, model_placement, output_vocab_size
from spec.runtime.compiled import CompiledStep
from spec.runtime.context_layer import ContextLayerCache
from spec.runtime.int8 import Int8Linear, Int8Matrix, int8_supported, quantize_linears, quantize_rows
from spec.protocols import CandidateKind, CandidateTree, Draft, DraftContext, DrafterTraits, SamplingParams


class HeadDrafter:
    """Base of Medusa, Hydra and Clover. ``heads.heads`` holds one module per tree depth."""

    drafter_type: ClassVar[str]
    #: The keys of ``hyperparameters()``: a checkpoint with others is refused.
    hyperparameter_names: ClassVar[frozenset[str]]
    candidates: str = "top_k"
    draft_vocab: Optional[DraftVocabulary] = None
    #: True where the heads are trained on their draft vocabulary (EAGLE-3 keeps it in its weights);
    #: otherwise a reduced vocabulary slices full-vocabulary heads and is saved in the config.
    draft_vocab_in_heads: ClassVar[bool] = False
    #: The deterministic draft's pure tensor function, which :meth:`compile` compiles.
    top_k_function: ClassVar[Callable] = staticmethod(fill_top_k)
    #: Whether :meth:`compile` applies: a subclass whose ``draft`` hands ``compiled_fill`` to the fill (or calls it)
    #: opts in; otherwise compiling would change nothing while ``compiled`` said it had.
    compilable: ClassVar[bool] = False

    def __init__(self, model, heads: nn.Module, candidates: str = "top_k") -> None:
        # Heads with their own vocabulary projection say how wide it is; the others use the lm_head's.
        check_model_dims(model, vocab_size=getattr(heads, "vocab", output_vocab_size(model)), hidden=heads.hidden,
                         what=f"These {self.display_name} heads")
        check_same_placement(model, heads, f"These {self.display_name} heads")
        self.candidates = check_candidate_mode(candidates, type(self).__name__)
        self.model = model
        self.heads = heads.eval()  # dropout is for training; drafting is deterministic
        self._hidden: Optional[torch.Tensor] = None
        self._committed = 0
        #: The deterministic fill compiled by :meth:`compile` (None: eager).
        self.compiled_fill: Optional[CompiledStep] = None
        #: What :meth:`quantize` did: None (float weights) or "int8".
        self.draft_weights: Optional[str] = None
        self._int8_projections: dict = {}

    @property
    def display_name(self) -> str:
        return self.drafter_type.capitalize()

    # ---- what a subclass supplies ---------------------------------------------------------
    def hyperparameters(self) -> dict[str, Any]:
        """What ``build_heads`` needs to rebuild these heads (saved in the checkpoint's config)."""
        raise NotImplementedError

    @classmethod
    def build_heads(cls, model, hyper: dict[str, Any]) -> nn.Module:
        """Fresh heads for ``model`` from ``hyper``, on the current default device (meta when sizing a checkpoint)."""
        raise NotImplementedError

    def draft(self, tree: CandidateTree, context: DraftContext, sampling: SamplingParams,
              generator: Optional[torch.Generator], hidden: torch.Tensor) -> Draft:
        """Fill ``tree`` from ``hidden`` ``[H]``, the target's state that produced the root."""
        raise NotImplementedError

    def extend_context(self, hidden_states: torch.Tensor) -> None:
        """Newly committed positions' hidden states ``[m, H]``, for heads with a context layer."""

    def reset_context(self) -> None:
        """Forget the context layer's cache (a new sequence starts)."""

    # ---- construction and checkpoints -------------------------------------------------------
    @classmethod
    def fresh(cls, model, hyper: dict[str, Any], seed: Optional[int], candidates: str):
        """Untrained heads built from ``hyper`` in the model's dtype and on its device, started from its lm_head."""
        if seed is not None:
            torch.manual_seed(seed)
        heads = cls.build_heads(model, hyper).to(**model_placement(model))
        init = getattr(heads, "init_from_lm_head", None)
        if init is not None:
            init(lm_head(model))
        return cls(model, heads, candidates)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """``config.json`` (type, hyperparameters, base-model fingerprint, checksum, the draft vocabulary if
        reduced) + ``model.safetensors``."""
        save_drafter(directory, self.heads, self.drafter_type, self.hyperparameters(), self.fingerprint,
                     draft_vocab=None if self.draft_vocab is None or self.draft_vocab_in_heads
                     else self.draft_vocab.token_ids.tolist())

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, model, candidates: str = "top_k"):
        """Heads saved by ``save_pretrained`` for this exact model (with the draft vocabulary they were saved
        with); anything else is refused before loading."""
        hyper, state, ids = load_drafter(directory, model, cls.drafter_type, set(cls.hyperparameter_names),
                                         build=lambda h: cls.build_heads(model, h))
        heads = cls.build_heads(model, hyper).to(**model_placement(model))
        load_state_strict(heads, state, directory)
        drafter = cls(model, heads, candidates)
        if ids is not None and not cls.draft_vocab_in_heads:
            drafter.use_draft_vocab(DraftVocabulary(output_vocab_size(model), torch.tensor(ids, dtype=torch.long)))
        return drafter

    @staticmethod
    def input_embedding(model, hidden: int, what: str) -> nn.Module:
        """The model's input embedding, for heads that read drafted tokens beside the hidden state."""
        embedding = model.get_input_embeddings()
        if embedding is None or embedding.weight.shape[1] != hidden:
            raise UnsupportedError(
                f"{what} read the model's input embeddings alongside its hidden states, so their widths must "
                f"match; {type(model).__name__}'s input embedding is not {hidden} wide."
            )
        return embedding

    # ---- draft vocabulary ------------------------------------------------------------------
    def use_draft_vocab(self, vocab: Optional[DraftVocabulary]):
        """Project the heads onto ``vocab``'s tokens only (None: the whole vocabulary again). Returns self."""
        if vocab is not None:
            if vocab.vocab_size != output_vocab_size(self.model):
                raise IncompatibleDrafterError(
                    f"This draft vocabulary indexes a {vocab.vocab_size}-token vocabulary but the model has "
                    f"{output_vocab_size(self.model)}; build it from this model's token counts.")
        self.draft_vocab = vocab
        return self

    def projection(self, linear: nn.Linear) -> tuple[torch.Tensor | Int8Matrix, Optional[torch.Tensor]]:
        """``linear``'s weight ``[K, H]`` and bias ``[K]`` (or None) restricted to the draft vocabulary's rows
        (cached until the weights change), or whole without one; int8 after :meth:`quantize` (for ``project``)."""
        if self.draft_vocab is None:
            source, weight, bias = linear.weight, linear.weight, linear.bias
        else:  # the draft vocabulary caches its slice: the same tensor until the weights change
            source, stacked_bias = self.draft_vocab.weights([linear])
            weight, bias = source[0], None if stacked_bias is None else stacked_bias[0]
        if self.draft_weights != "int8" or not int8_supported(weight):
            return weight, bias
        # Keyed by the (cached) source tensor and its version; the model's own lm_head (EAGLE, Clover) is quantized
        # here too. An id can be reused by a new tensor once the old one is freed: the weak reference tells them apart.
        key = (id(source), source._version)
        cached = self._int8_projections.get(key)
        if cached is None or cached[0]() is not source:
            if len(self._int8_projections) >= 4 * max(self.num_heads, 1):  # one per depth (Hydra); stale ones go
                self._int8_projections.clear()
            cached = self._int8_projections[key] = (weakref.ref(source), quantize_rows(weight))
        return cached[1], bias

    # ---- int8 drafting -------------------------------------------------------------------------
    def quantize(self, weights: str = "int8"):
        """Draft with int8 copies of the heads' matrices and vocabulary projections (CPU; see
        :mod:`spec.runtime.int8`): on a CPU the draft is bound by reading weights, and int8 reads a quarter of
        the bytes. Verification keeps the target's weights, so decoding stays lossless. Checkpoints still save
        the float weights. Matrices the kernel cannot take (input width not a multiple of 16) stay float; if none
        fits, ``draft_weights`` stays None. Returns self."""
        if weights != "int8":
            raise ConfigurationError(f"quantize supports weights='int8' only, got {weights!r}.")
        device = next(self.heads.parameters()).device
        if device.type != "cpu":
            raise UnsupportedError(
                f"int8 draft weights run on the CPU only (torch's int8 weight kernel); these heads are on {device}. "
                "Draft in the model's own dtype there (bfloat16 on CUDA already halves the bytes).")
        quantize_linears(self.heads)
        if any(isinstance(m, Int8Linear) for m in self.heads.modules()):
            self.draft_weights = "int8"  # else no matrix fits the kernel (widths not multiples of 16): float
        return self

    @property
    def draft_vocab_size(self) -> int:
        return output_vocab_size(self.model) if self.draft_vocab is None else self.draft_vocab.size

    # ---- compilation ------------------------------------------------------------------------
    def compile(self, enabled: bool = True):
        """``torch.compile`` the deterministic draft (top-k candidates), one graph per tree shape: drafting is
        dozens of small operations per depth, whose per-operation overhead (Python, dispatch; kernel launches
        on a GPU) is most of its time on a small model. Sampled candidates stay eager (they draw on the host).
        Falls back to eager with a warning if compilation fails. Returns self."""
        if enabled and not self.compilable:
            raise UnsupportedError(
                f"The {self.display_name} drafter's draft is not compiled yet: it does not run through compiled_fill "
                "(EAGLE's depths run over a cache that grows every step); run it eagerly. A subclass whose draft passes "
                "compiled_fill to fill_depth_by_depth sets compilable = True.")
        self.compiled_fill = CompiledStep(self.top_k_function, enabled=True, what="drafter") if enabled else None
        # A step commits at most max_depth + 1 positions: the context layers' passes, padded to that, compile too.
        for layer in self.context_layers():
            layer.compile(self.max_depth + 1 if enabled else None)
        return self

    @property
    def compiled(self) -> bool:
        """Whether the deterministic draft runs compiled (false after a fallback to eager)."""
        return (self.compiled_fill is not None and self.compiled_fill.compiled
                and all(layer.compiled for layer in self.context_layers()))

    def context_layers(self) -> tuple[ContextLayerCache, ...]:
        """The layers this drafter runs over committed positions (Hydra++'s prefix layer, Clover's augmenting
        block), which :meth:`compile` compiles with the draft."""
        return ()

    # ---- descriptions ------------------------------------------------------------------------
    @property
    def traits(self) -> DrafterTraits:
        return DrafterTraits(candidate_kinds={CandidateKind.DETERMINISTIC, CANDIDATE_MODES[self.candidates]},
                             log_confidence=True)

    @property
    def fingerprint(self) -> ModelFingerprint:
        """The base model's fingerprint, read now (so it follows a backbone changed by training)."""
        return ModelFingerprint.of(self.model)

    @property
    def num_parameters(self) -> int:
        """Parameters of the drafter's own module (the model's embeddings and lm_head are not counted)."""
        return sum(p.numel() for p in self.heads.parameters())

    @property
    def num_heads(self) -> int:
        return len(self.heads.heads)

    @property
    def max_depth(self) -> int:
        return self.num_heads

    # ---- Drafter protocol ------------------------------------------------------------------
    def reset(self) -> None:
        self._hidden = None
        self._committed = 0
        self.reset_context()

    def commit(self, tokens: torch.Tensor, hidden_states: torch.Tensor) -> None:
        if tokens.shape[0] != hidden_states.shape[0]:
            raise ShapeError(f"commit got {tokens.shape[0]} tokens but {hidden_states.shape[0]} hidden states.")
        if hidden_states.shape[0]:
            self._hidden = hidden_states[-1]
            self.extend_context(hidden_states)
        self._committed += tokens.shape[0]

    @torch.no_grad()
    def propose(self, tree: CandidateTree, context: DraftContext, sampling: SamplingParams,
                generator: Optional[torch.Generator] = None) -> Draft:
        check_tree_fits(tree, self.num_heads, self.draft_vocab_size, f"{self.display_name} drafter")
        if context.position != self._committed:
            raise InputError(
                f"The {self.display_name} drafter was committed {self._committed} tokens but the root is at position "
                f"{context.position}; call drafter.commit with every token the verifier caches (prefill and steps).")
        if self._hidden is None or tree.num_nodes == 1:
            # No hidden state yet (one-token prompt): nothing to draft from this step.
            return root_only_draft(context.root_token, model_device(self.model))
        return self.draft(tree, context, sampling, generator, self._hidden)
