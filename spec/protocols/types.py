"""The attrs types that flow between stages.

Shapes are for a batch of one, which is what the pipelines support. ``n`` is the
tree's node count (root included), ``V`` the vocabulary and ``H`` the hidden size.
"""

from __future__ import annotations

import enum
import math
from typing import Any, Callable, Optional

import attrs
import torch

from spec.errors import SamplingParamsError, ShapeError
from spec.protocols.tree import CandidateTree


Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def _tensor_shape(*dims: str, dtype: Optional[torch.dtype] = None, floating: bool = False,
                  optional: bool = False) -> Validator:
    """Validator: a tensor whose dims match names resolved against the tree (``n``) or fixed ints."""

    def check(instance: Any, attribute: "attrs.Attribute[Any]", value: Any) -> None:
        if value is None:
            if optional:
                return
            raise ShapeError(f"{type(instance).__name__}.{attribute.name} is required, got None.")
        if not isinstance(value, torch.Tensor):
            raise ShapeError(f"{type(instance).__name__}.{attribute.name} must be a torch.Tensor, got {type(value)}.")
        if value.dim() != len(dims):
            raise ShapeError(
                f"{type(instance).__name__}.{attribute.name} must have shape [{', '.join(dims)}], "
                f"got {tuple(value.shape)}."
            )
        for size, dim in zip(value.shape, dims):
            if dim == "n" and size != instance.tree.num_nodes:
                raise ShapeError(
                    f"{type(instance).__name__}.{attribute.name} has {size} rows but the tree has "
                    f"{instance.tree.num_nodes} nodes (root included); shape must be [{', '.join(dims)}]."
                )
        if dtype is not None and value.dtype != dtype:
            raise ShapeError(f"{type(instance).__name__}.{attribute.name} must be {dtype}, got {value.dtype}.")
        if floating and not value.is_floating_point():
            raise ShapeError(f"{type(instance).__name__}.{attribute.name} must be floating point, got {value.dtype}.")

    return check


# ---- sampling parameters ----------------------------------------------------------------
def _check_temperature(instance: Any, attribute: "attrs.Attribute[Any]", value: Any) -> None:
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or math.isinf(value)
            or value < 0):
        raise SamplingParamsError(
            f"temperature must be a finite number >= 0 (0 means greedy), got {value!r}."
        )


def _check_top_k(instance: Any, attribute: "attrs.Attribute[Any]", value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise SamplingParamsError(f"top_k must be None (no limit) or an integer >= 1, got {value!r}.")


def _check_top_p(instance: Any, attribute: "attrs.Attribute[Any]", value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or not 0.0 < value <= 1.0:
        raise SamplingParamsError(f"top_p must be in (0, 1] (1 disables nucleus filtering), got {value!r}.")


def _check_seed(instance: Any, attribute: "attrs.Attribute[Any]", value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**64):
        raise SamplingParamsError(f"seed must be None or a non-negative integer below 2**64, got {value!r}.")


@attrs.frozen
class SamplingParams:
    """How the target's next-token distribution ``p`` is formed, as in transformers.

    Applied in transformers' order: temperature, then top-k, then top-p.
    ``temperature == 0`` means greedy decoding (argmax of the raw logits).
    """

    temperature: float = attrs.field(default=0.0, validator=_check_temperature)
    top_k: Optional[int] = attrs.field(default=None, validator=_check_top_k)
    top_p: float = attrs.field(default=1.0, validator=_check_top_p)
    seed: Optional[int] = attrs.field(default=None, validator=_check_seed)

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0


# ---- what moves between stages ------------------------------------------------------------
class CandidateKind(enum.Enum):
    """How a drafter chose its candidate tokens; tells the acceptor which test is lossless."""

    #: A deterministic function of the context (top-k of heads, n-gram lookup).
    DETERMINISTIC = "deterministic"
    #: Siblings drawn independently from the same draft distribution ``q`` (SpecInfer).
    SAMPLED_WITH_REPLACEMENT = "sampled_with_replacement"
    #: Siblings drawn from ``q`` without replacement (recursive rejection sampling).
    SAMPLED_WITHOUT_REPLACEMENT = "sampled_without_replacement"


@attrs.frozen
class DraftContext:
    """What a drafter knows at the start of a step.

    ``tokens``: ``[position + 1]`` int64, every committed token, the root last.

    Hidden states reach a drafter through one channel only, ``Drafter.commit``: the state
    that produced the root is the last one committed (none when the root is the prompt's
    only token).
    """

    tokens: torch.Tensor = attrs.field(validator=_tensor_shape("p", dtype=torch.long))

    @property
    def position(self) -> int:
        """Index of the root in the sequence (= number of tokens whose KV is cached)."""
        return self.tokens.shape[0] - 1

    @property
    def root_token(self) -> int:
        return int(self.tokens[-1])


@attrs.frozen
class Draft:
    """A filled candidate tree.

    ``tokens``: ``[n]`` int64, ``tokens[0]`` is the root token.
    ``draft_probs``: ``[n, V]`` optional; row i is the draft distribution ``q`` that
    node i's token was drawn from (shared by siblings). Required for sampled kinds.
    ``log_confidence``: ``[n]`` optional; the drafter's cumulative log-probability of
    each node's path (root 0), used by dynamic tree builders.
    ``node_states``: ``[n, H]`` optional; hidden states a paired verifier resumes from, one
    per node (a self-drafter's shallow layers). ``cache_rows``: ``[n]`` int64 optional; the
    shared cache row where each node's keys and values of those layers were written.
    """

    tree: CandidateTree
    tokens: torch.Tensor = attrs.field(validator=_tensor_shape("n", dtype=torch.long))
    kind: CandidateKind = CandidateKind.DETERMINISTIC
    draft_probs: Optional[torch.Tensor] = attrs.field(
        default=None, validator=_tensor_shape("n", "V", floating=True, optional=True)
    )
    log_confidence: Optional[torch.Tensor] = attrs.field(
        default=None, validator=_tensor_shape("n", floating=True, optional=True)
    )
    node_states: Optional[torch.Tensor] = attrs.field(
        default=None, validator=_tensor_shape("n", "H", floating=True, optional=True)
    )
    cache_rows: Optional[torch.Tensor] = attrs.field(
        default=None, validator=_tensor_shape("n", dtype=torch.long, optional=True)
    )

    def __attrs_post_init__(self) -> None:
        if self.kind is not CandidateKind.DETERMINISTIC and self.draft_probs is None:
            raise ShapeError(f"A {self.kind.value} draft must carry draft_probs (the q its tokens were drawn from).")

    def select_nodes(self, keep: list[int], kind: Optional[CandidateKind] = None) -> "Draft":
        """The draft restricted to nodes ``keep`` (the root and closed under parents), every per-node field alike.

        ``kind``: the survivors' kind when the selection decides it; survivors handed on as
        deterministic lose ``draft_probs``, which no longer says how they were chosen.
        """
        keep = sorted({int(node) for node in keep})  # the subtree's node order
        dropped_q = kind is CandidateKind.DETERMINISTIC

        def rows(value: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            return None if value is None else value[torch.tensor(keep, device=value.device)]

        return Draft(tree=self.tree.subtree(keep), tokens=self.tokens[torch.tensor(keep, device=self.tokens.device)],
                     kind=self.kind if kind is None else kind, draft_probs=None if dropped_q else rows(self.draft_probs),
                     log_confidence=rows(self.log_confidence), node_states=rows(self.node_states),
                     cache_rows=rows(self.cache_rows))


@attrs.frozen
class Verification:
    """The target's outputs at every tree node, from one forward pass.

    ``logits``: ``[n, V]`` next-token logits at each node.
    ``hidden_states``: ``[n, F]`` at each node, the features the verifier reports (``VerifierTraits.features``):
    last-layer states after the final norm (``"final"``, ``F = H``), the residual stream after some layers
    (``"layer:<k>"``, ``F = H``), or several such streams concatenated in the order named
    (``"layers:<a>,<b>,.."``, ``F = count * H``: EAGLE-3's low, middle and high layers). They reach the
    drafter through ``Drafter.commit``.
    """

    tree: CandidateTree
    logits: torch.Tensor = attrs.field(validator=_tensor_shape("n", "V", floating=True))
    hidden_states: torch.Tensor = attrs.field(validator=_tensor_shape("n", "H", floating=True))


def _check_path(instance: Any, attribute: "attrs.Attribute[Any]", value: Any) -> None:
    if not value or value[0] != 0:
        raise ShapeError(f"Acceptance.path must start at the root (node 0), got {value!r}.")


@attrs.frozen
class Acceptance:
    """The outcome of a step.

    ``path``: node indices from the root (included) down to the last accepted node.
    ``tokens``: the accepted candidate tokens (``len(path) - 1`` of them, root excluded).
    ``bonus_token``: sampled from the target at the end of the path; the next root.
    """

    path: tuple[int, ...] = attrs.field(converter=tuple, validator=_check_path)
    tokens: tuple[int, ...] = attrs.field(converter=tuple)
    bonus_token: int = attrs.field(converter=int)

    def __attrs_post_init__(self) -> None:
        if len(self.tokens) != len(self.path) - 1:
            raise ShapeError(
                f"Acceptance has {len(self.tokens)} tokens for a path of {len(self.path)} nodes; "
                "give one token per accepted non-root node."
            )

    @property
    def num_accepted(self) -> int:
        """Candidate tokens accepted (the bonus token not counted)."""
        return len(self.tokens)

    @property
    def new_tokens(self) -> tuple[int, ...]:
        return self.tokens + (self.bonus_token,)


@attrs.frozen
class StepStats:
    """What one decoding step did and cost (seconds, wall clock)."""

    tree_size: int
    accepted: int  # candidate tokens accepted, bonus not counted
    emitted: int  # tokens appended to the output (accepted + bonus, less any cut by EOS/max_new_tokens)
    draft_s: float = 0.0
    verify_s: float = 0.0
    accept_s: float = 0.0
    commit_s: float = 0.0
    # Of the above, seconds inside network forward passes; measured only under a spec.timing.ForwardTimer.
    forward_s: Optional[float] = None

    @property
    def overhead_s(self) -> Optional[float]:
        """Seconds of the step outside forward passes (None unless timed with a ForwardTimer)."""
        return None if self.forward_s is None else self.total_s - self.forward_s

    @property
    def total_s(self) -> float:
        return self.draft_s + self.verify_s + self.accept_s + self.commit_s


@attrs.frozen
class GenerationOutput:
    """``sequences``: ``[1, prompt_length + new tokens]`` int64, like transformers."""

    sequences: torch.Tensor
    prompt_length: int
    steps: tuple[StepStats, ...]
    prefill_s: float
    total_s: float

    @property
    def new_tokens(self) -> torch.Tensor:
        return self.sequences[0, self.prompt_length :]

    @property
    def mean_accepted_length(self) -> float:
        """Mean tokens gained per verify step: accepted candidates + the bonus (Medusa's definition)."""
        if not self.steps:
            return 0.0
        return sum(s.accepted + 1 for s in self.steps) / len(self.steps)

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens.numel() / self.total_s if self.total_s > 0 else float("inf")
