"""A conformance kit for speculative sampling functions: is this sampler lossless?

Give :func:`check_sampler` any function that performs one speculative step (a chain
sampler such as transformers' ``_speculative_sampling``, or a tree acceptor) wrapped
as a :data:`Sampler`. The kit builds the scenarios itself (random target and draft
distributions over a tiny vocabulary, chains or branching trees, candidates drawn the
way each :class:`~spec.protocols.CandidateKind` says) and checks the one-step theorem
of ``docs/losslessness.md``:

    the tokens a step emits, continued with the target's own sampler up to
    ``depth + 1`` tokens, are distributed exactly as ``depth + 1`` tokens sampled
    from the target.

Two modes:

* ``"exact"``: the sampler draws every random number through the
  :class:`~spec.randomness.Randomness` it is given; the kit enumerates every outcome
  (``spec.testing.exact.enumerate_outcomes``), so the output distribution is exact and
  the verdict is the largest absolute difference from the target's (pass when
  ``<= tolerance``, default 1e-9: floating-point rounding only).
* ``"statistical"``: the sampler may use torch's global RNG. The kit seeds it per sample
  (fixed seeds: the verdict is deterministic), draws ``samples`` steps per scenario,
  continues each with the target and runs Pearson's chi-square test against the exact
  target distribution. The p-value reported is the smallest scenario's, Bonferroni
  corrected (times the number of scenarios); the sampler passes when it is above
  ``alpha`` (default 1e-4). So a lossless sampler fails with probability at most
  ``alpha`` over a random choice of seeds (the false-alarm rate); with the seeds fixed
  it either always passes or always fails. The total-variation distance between the
  empirical and the exact distribution is reported too, with the value sampling noise
  alone would give.

Adapters for common signatures: :func:`rejection_sampler` (anything with
``RejectionSamplingAcceptor``'s ``walk``), :func:`accept_sampler` (any ``Acceptor``'s
``accept``) and :func:`transformers_speculative_sampling`. ``docs/conformance.md`` shows
how to write one for another library's function.

``python -m spec.testing.conformance transformers`` checks transformers' function and the
project's own acceptor and its deliberately broken mutants, and prints the verdicts.
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from collections import Counter
from typing import Callable, Iterable, Literal, Optional, Sequence, Union

import attrs
import torch

from spec.errors import ConfigurationError, ShapeError
from spec.protocols import CandidateKind, CandidateTree, Draft, SamplingParams, Verification
from spec.randomness import Randomness, TorchRandomness
from spec.sampling import target_probs as processed_target_probs
from spec.testing.exact import enumerate_outcomes
from spec.testing.stats import chi_square_pvalue
from spec.trees import chain_tree, tree_from_choices

Prefix = tuple[int, ...]
Mode = Literal["exact", "statistical"]

#: Exact mode passes when the largest probability difference is at most this (rounding only).
DEFAULT_TOLERANCE = 1e-9
#: Statistical mode's false-alarm rate: a lossless sampler fails with at most this probability.
DEFAULT_ALPHA = 1e-4
#: The targets the kit samples: plain softmax, and a top-k'd one (zeros in p, -inf in its logits).
DEFAULT_TARGETS: tuple[SamplingParams, ...] = (SamplingParams(temperature=1.0), SamplingParams(temperature=1.0, top_k=2))
ALL_KINDS: tuple[CandidateKind, ...] = tuple(CandidateKind)
#: Chains of depth 1 to 3: what ``tree_shapes="chain"`` checks.
CHAIN_SHAPES: tuple[CandidateTree, ...] = (chain_tree(1), chain_tree(2), chain_tree(3))
#: Branching trees (width <= 3, depth <= 2) added by ``tree_shapes="tree"``.
BRANCHING_SHAPES: tuple[CandidateTree, ...] = (
    tree_from_choices([[0], [1]]),
    tree_from_choices([[0], [1], [0, 0], [0, 1]]),
    tree_from_choices([[0], [1], [2], [0, 0], [1, 0]]),
)


# ---- the input one step sees ------------------------------------------------------------------
def _check_tokens(instance: "ConformanceCase", attribute: attrs.Attribute, value: tuple[int, ...]) -> None:
    n = instance.tree.num_nodes
    if len(value) != n:
        raise ShapeError(f"ConformanceCase.tokens has {len(value)} entries but the tree has {n} nodes (root included).")


def _check_rows(name: str, value: torch.Tensor, n: int, vocab: Optional[int]) -> None:
    if not isinstance(value, torch.Tensor):
        raise ShapeError(f"ConformanceCase.{name} must be a torch.Tensor, got {type(value).__name__}.")
    if value.dim() != 2 or value.shape[0] != n or (vocab is not None and value.shape[1] != vocab):
        want = f"[{n}, {vocab if vocab is not None else 'V'}]"
        raise ShapeError(f"ConformanceCase.{name} must have shape {want} (one row per tree node), "
                         f"got {tuple(value.shape)}.")
    if value.dtype != torch.float64:
        raise ShapeError(f"ConformanceCase.{name} must be float64, got {value.dtype}.")


def _is_distribution(row: torch.Tensor) -> bool:
    return bool(torch.isfinite(row).all() and (row >= 0).all() and abs(float(row.sum()) - 1.0) <= 1e-9)


@attrs.frozen(eq=False)
class ConformanceCase:
    """One step's input, as the kit hands it to a sampler.

    ``tree``: the candidate tree (a chain for chain samplers). ``kind``: how the
    candidates were chosen. ``tokens``: one token per node, ``tokens[0]`` the root (the
    last committed token). ``draft_probs``: ``[n, V]`` float64, row ``i`` the draft
    distribution ``q`` node ``i``'s token was drawn from, shared by siblings and before any
    sibling was removed (the root's row is zeros); None for deterministic candidates.
    ``target_probs``: ``[n, V]`` float64, row ``i`` the target's processed next-token
    distribution after the path to node ``i`` (row 0: after the root).
    """

    tree: CandidateTree = attrs.field(validator=attrs.validators.instance_of(CandidateTree))
    kind: CandidateKind = attrs.field(validator=attrs.validators.instance_of(CandidateKind))
    tokens: tuple[int, ...] = attrs.field(converter=lambda t: tuple(int(x) for x in t), validator=_check_tokens)
    draft_probs: Optional[torch.Tensor]
    target_probs: torch.Tensor

    def __attrs_post_init__(self) -> None:
        n = self.tree.num_nodes
        _check_rows("target_probs", self.target_probs, n, None)
        vocab = self.vocab
        for i in range(n):
            if not _is_distribution(self.target_probs[i]):
                raise ShapeError(f"ConformanceCase.target_probs row {i} is not a distribution "
                                 "(non-negative, finite, summing to 1).")
        bad = [t for t in self.tokens if not 0 <= t < vocab]
        if bad:
            raise ShapeError(f"ConformanceCase.tokens {bad} are outside the vocabulary [0, {vocab}).")
        if self.draft_probs is None:
            if self.kind is not CandidateKind.DETERMINISTIC:
                raise ShapeError(f"A {self.kind.value} case needs draft_probs (the q its candidates were drawn from).")
            return
        _check_rows("draft_probs", self.draft_probs, n, vocab)
        for node in range(1, n):
            q = self.draft_probs[node]
            if not _is_distribution(q):
                raise ShapeError(f"ConformanceCase.draft_probs row {node} is not a distribution.")
            if self.kind is not CandidateKind.DETERMINISTIC and not float(q[self.tokens[node]]) > 0:
                raise ShapeError(f"Node {node}'s token {self.tokens[node]} has probability 0 under the q "
                                 f"it was supposedly drawn from (draft_probs row {node}).")
        for children in self.tree.children:
            if len(children) > 1 and not all(torch.equal(self.draft_probs[c], self.draft_probs[children[0]])
                                              for c in children[1:]):
                raise ShapeError(f"Siblings {list(children)} must share one draft_probs row (the q they were "
                                 "all drawn from).")

    @property
    def vocab(self) -> int:
        return int(self.target_probs.shape[1])

    @property
    def depth(self) -> int:
        return self.tree.max_depth

    @property
    def is_chain(self) -> bool:
        return all(len(children) <= 1 for children in self.tree.children)

    def draft(self) -> Draft:
        """The case as the project's :class:`~spec.protocols.Draft` (what acceptors take)."""
        probs = self.draft_probs if self.kind is not CandidateKind.DETERMINISTIC else None
        return Draft(tree=self.tree, tokens=torch.tensor(self.tokens, dtype=torch.long), kind=self.kind,
                     draft_probs=probs)


#: One speculative step: the tokens it emits (accepted candidates, then the bonus/correction token).
#: In exact mode it must draw only through the given Randomness; in statistical mode it may use
#: torch's global RNG instead (the kit seeds it per sample).
Sampler = Callable[[ConformanceCase, Randomness], Sequence[int]]


# ---- adapters ------------------------------------------------------------------------------
def rejection_sampler(acceptor) -> Sampler:
    """Adapter for anything with ``RejectionSamplingAcceptor``'s ``walk(draft, p_rows, randomness)``.

    Draws only through the randomness it is given: usable in exact mode.
    """

    def sampler(case: ConformanceCase, randomness: Randomness) -> Sequence[int]:
        return acceptor.walk(case.draft(), case.target_probs, randomness).new_tokens

    sampler.__name__ = sampler.__qualname__ = type(acceptor).__name__
    return sampler


def accept_sampler(acceptor, sampling: SamplingParams = SamplingParams(temperature=1.0)) -> Sampler:
    """Adapter for any :class:`~spec.protocols.Acceptor`: calls ``accept`` with logits ``log p``.

    ``sampling`` is what the acceptor is told: temperature 1 turns ``log p`` back into ``p``;
    temperature 0 (greedy) needs a greedy kit (``target_sampling=[SamplingParams()]``). The
    acceptor draws from torch's global RNG, so this is for statistical mode, or exact mode
    when it draws nothing at all (``GreedyAcceptor``).
    """

    def sampler(case: ConformanceCase, randomness: Randomness) -> Sequence[int]:
        n = case.tree.num_nodes
        verification = Verification(tree=case.tree, logits=case.target_probs.log(),
                                    hidden_states=torch.zeros(n, 1, dtype=torch.float64))
        return acceptor.accept(case.draft(), verification, sampling, None).new_tokens

    sampler.__name__ = sampler.__qualname__ = type(acceptor).__name__
    return sampler


def transformers_speculative_sampling(case: ConformanceCase, randomness: Randomness, **options) -> Sequence[int]:
    """Adapter for ``transformers.generation.utils._speculative_sampling`` (assisted generation's
    sampler, Leviathan et al. algorithm 1). Chains only; statistical mode only (it draws with
    ``torch.rand_like`` and ``torch.multinomial`` from torch's global RNG).

    The root is the prompt's last token, the ``gamma`` candidates follow it. Logits are float32
    as assisted generation passes them: ``candidate_logits = log q`` ``[1, gamma, V]``,
    ``new_logits = log p`` ``[1, gamma + 1, V]`` (``log 0 = -inf`` for tokens a top-k target
    removed; the softmax inside restores the zeros). A deterministic case is given the point
    mass on each candidate as its ``q``. ``options`` go to the function as keywords (bind them with
    ``functools.partial``, e.g. ``assistant_ensemble_weight``, a relaxation that is biased by design).
    """
    from transformers.generation.utils import _speculative_sampling

    if not case.is_chain or case.depth < 1:
        raise ShapeError("transformers' _speculative_sampling verifies a chain of at least one candidate.")
    gamma = case.depth
    candidate_input_ids = torch.tensor([case.tokens], dtype=torch.long)  # [1, 1 + gamma]
    if case.draft_probs is not None and case.kind is not CandidateKind.DETERMINISTIC:
        q = case.draft_probs[1:]
    else:
        q = torch.nn.functional.one_hot(torch.tensor(case.tokens[1:]), case.vocab).double()
    candidate_logits = q.log().float()[None]  # [1, gamma, V]
    new_logits = case.target_probs.log().float()[None]  # [1, gamma + 1, V]
    valid_tokens, _ = _speculative_sampling(candidate_input_ids, candidate_logits, gamma, new_logits, **options)
    return valid_tokens[0].tolist()


# ---- the report -----------------------------------------------------------------------------
def _tree_label(tree: CandidateTree) -> str:
    if all(len(c) <= 1 for c in tree.children):
        return f"chain{tree.max_depth}"
    return "tree" + "".join(str(len(c)) for c in tree.children if c)


def _sampling_label(sampling: SamplingParams) -> str:
    if sampling.is_greedy:
        return "greedy"
    label = f"T={sampling.temperature:g}"
    if sampling.top_k is not None:
        label += f",top_k={sampling.top_k}"
    if sampling.top_p < 1.0:
        label += f",top_p={sampling.top_p:g}"
    return label


@attrs.frozen
class ScenarioResult:
    """One scenario's verdict. Exact mode fills ``gap``; statistical mode ``p_value`` (uncorrected),
    ``tv`` (total variation, empirical vs exact) and ``tv_noise`` (its expected value for a lossless
    sampler, from sampling noise alone). ``error``: what the sampler raised or emitted wrongly."""

    tree: CandidateTree
    kind: CandidateKind
    target: SamplingParams
    passed: bool
    gap: Optional[float] = None
    p_value: Optional[float] = None
    tv: Optional[float] = None
    tv_noise: Optional[float] = None
    samples: int = 0
    outcomes: int = 0
    error: Optional[str] = None

    @property
    def label(self) -> str:
        return f"{_tree_label(self.tree)}/{self.kind.value}/{_sampling_label(self.target)}"

    def __str__(self) -> str:
        verdict = "pass" if self.passed else "FAIL"
        if self.error is not None:
            return f"{verdict}  {self.label}: {self.error}"
        if self.gap is not None:
            return f"{verdict}  {self.label}: gap {self.gap:.3g} ({self.outcomes} runs enumerated)"
        return (f"{verdict}  {self.label}: p {self.p_value:.3g}, TV {self.tv:.4f} (noise ~{self.tv_noise:.4f}), "
                f"{self.samples} samples")


@attrs.frozen
class ConformanceReport:
    """The kit's verdict on one sampler.

    ``gap``: exact mode, the largest absolute probability difference over every scenario the
    sampler completed (None if it completed none). ``p_value``: statistical mode, the smallest
    scenario p-value times the number of scenarios (Bonferroni, capped at 1); ``p_min``: that
    smallest p-value uncorrected. ``tv``: the largest scenario total-variation estimate, and
    ``tv_noise`` what sampling noise alone gives that scenario. ``samples``: sampled steps in all
    (statistical) or enumerated runs in all (exact). A scenario where the sampler raised or
    emitted something impossible fails, whatever the gap elsewhere (``errors``).
    """

    name: str
    mode: Mode
    passed: bool
    scenarios: tuple[ScenarioResult, ...]
    samples: int
    gap: Optional[float] = None
    p_value: Optional[float] = None
    tv: Optional[float] = None
    tolerance: float = DEFAULT_TOLERANCE
    alpha: float = DEFAULT_ALPHA
    seconds: float = 0.0

    @property
    def failures(self) -> tuple[ScenarioResult, ...]:
        return tuple(s for s in self.scenarios if not s.passed)

    @property
    def errors(self) -> tuple[str, ...]:
        return tuple(f"{s.label}: {s.error}" for s in self.scenarios if s.error is not None)

    @property
    def p_min(self) -> Optional[float]:
        measured = [s.p_value for s in self.scenarios if s.p_value is not None]
        return min(measured) if measured else None

    @property
    def tv_noise(self) -> Optional[float]:
        measured = [s for s in self.scenarios if s.tv is not None and s.error is None]
        return max(measured, key=lambda s: s.tv).tv_noise if measured else None

    def __str__(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        n = len(self.scenarios)
        if self.mode == "exact":
            if self.gap is None:
                detail = "no scenario completed"
            else:
                relation = "<=" if self.gap <= self.tolerance else ">"
                detail = f"exact gap {self.gap:.3g} {relation} tolerance {self.tolerance:g}"
        elif self.p_value is None:
            detail = "no scenario completed"
        else:
            relation = ">" if self.p_value > self.alpha else "<="
            detail = (f"p {self.p_value:.3g} {relation} alpha {self.alpha:g} (Bonferroni over {n} scenarios; "
                      f"smallest raw p {self.p_min:.3g}), max TV {self.tv:.4f} "
                      f"(sampling noise alone ~{self.tv_noise:.4f})")
        unit = "runs enumerated" if self.mode == "exact" else "samples"
        line = f"{verdict}  {self.name}: {detail}; {n} scenarios, {self.samples} {unit}"
        if self.errors:
            line += f"; sampler failed outright in {len(self.errors)} scenario(s), first {self.errors[0]}"
        elif not self.passed:
            line += f"; first failure {self.failures[0].label}"
        return line

    def details(self) -> str:
        """The verdict, then one line per scenario."""
        return "\n".join([str(self)] + ["  " + str(s) for s in self.scenarios])


# ---- the scenarios -----------------------------------------------------------------------
def _stream_seed(*parts: int) -> int:
    """A seed for a named stream (distinct tuples give distinct, unrelated seeds)."""
    seed = 0x5EED
    for part in parts:
        seed = (seed * 1_000_003 + int(part) + 1) % (2**61 - 1)
    return seed


class _RandomModel:
    """A fixed random distribution for every prefix (the kit's target or drafter).

    Each prefix's logits come from a generator seeded by (seed, prefix), so the model does not
    depend on the order it is queried in. ``floor`` (drafters) mixes in the uniform distribution
    to keep full support.
    """

    def __init__(self, vocab: int, seed: int, sharpness: float, sampling: Optional[SamplingParams] = None,
                 floor: float = 0.0) -> None:
        self.vocab, self.seed, self.sharpness, self.sampling, self.floor = vocab, seed, sharpness, sampling, floor
        self.cache: dict[Prefix, torch.Tensor] = {}

    def __call__(self, prefix: Prefix) -> torch.Tensor:
        row = self.cache.get(prefix)
        if row is None:
            generator = torch.Generator().manual_seed(_stream_seed(self.seed, len(prefix), *prefix))
            logits = torch.randn(self.vocab, generator=generator, dtype=torch.float64) * self.sharpness
            if self.sampling is not None:
                row = processed_target_probs(logits, self.sampling)
            else:
                row = logits.softmax(-1) * (1 - self.floor) + self.floor / self.vocab
            self.cache[prefix] = row
        return row


@attrs.frozen(eq=False)
class _Scenario:
    tree: CandidateTree
    kind: CandidateKind
    target_sampling: SamplingParams
    target: _RandomModel
    draft: _RandomModel
    fixed_tokens: Optional[tuple[int, ...]]  # deterministic kind: every node's token (root 0)

    def case(self, randomness: Randomness) -> ConformanceCase:
        """Fill the tree: given tokens, or children drawn from q through ``randomness``."""
        tree, n, vocab = self.tree, self.tree.num_nodes, self.target.vocab
        tokens = list(self.fixed_tokens) if self.fixed_tokens is not None else [0] + [-1] * (n - 1)
        paths: list[Prefix] = [()] * n
        q_rows = torch.zeros(n, vocab, dtype=torch.float64)
        for parent, children in enumerate(tree.children):
            if not children:
                continue
            q = self.draft(paths[parent])
            remaining = q
            for child in children:
                if self.fixed_tokens is None:
                    token = randomness.categorical(remaining)
                    tokens[child] = token
                    if self.kind is CandidateKind.SAMPLED_WITHOUT_REPLACEMENT:
                        remaining = remaining.index_fill(0, torch.tensor([token]), 0.0)
                q_rows[child] = q
                paths[child] = paths[parent] + (tokens[child],)
        p_rows = torch.stack([self.target(path) for path in paths])
        deterministic = self.kind is CandidateKind.DETERMINISTIC
        return ConformanceCase(tree=tree, kind=self.kind, tokens=tokens,
                               draft_probs=None if deterministic else q_rows, target_probs=p_rows)

    def target_law(self, length: int, prefix: Prefix = ()) -> dict[Prefix, float]:
        """Exact distribution of ``prefix`` continued by the target to ``length`` tokens."""
        dist = {prefix: 1.0}
        for _ in range(length - len(prefix)):
            grown: dict[Prefix, float] = {}
            for seq, weight in dist.items():
                p = self.target(seq).tolist()
                for token, prob in enumerate(p):
                    if prob > 0:
                        grown[seq + (token,)] = grown.get(seq + (token,), 0.0) + weight * prob
            dist = grown
        return dist


def _deterministic_tokens(tree: CandidateTree, target: _RandomModel, generator: torch.Generator) -> tuple[int, ...]:
    """Distinct siblings (as top-k drafters make them), each the target's argmax half of the time."""
    tokens, paths = [0] * tree.num_nodes, [()] * tree.num_nodes
    for parent, children in enumerate(tree.children):
        taken: list[int] = []
        best = int(target(paths[parent]).argmax())
        for child in children:
            options = [t for t in range(target.vocab) if t not in taken]
            coin = float(torch.rand((), generator=generator))
            if best in options and coin < 0.5:
                token = best
            else:
                token = options[int(torch.randint(len(options), (), generator=generator))]
            taken.append(token)
            tokens[child], paths[child] = token, paths[parent] + (token,)
    return tuple(tokens)


def _resolve_shapes(tree_shapes: Union[str, Iterable[CandidateTree]]) -> tuple[CandidateTree, ...]:
    if tree_shapes == "chain":
        return CHAIN_SHAPES
    if tree_shapes == "tree":
        return CHAIN_SHAPES[:2] + BRANCHING_SHAPES
    if isinstance(tree_shapes, str):
        raise ConfigurationError(f"tree_shapes must be 'chain', 'tree' or a list of CandidateTree, got {tree_shapes!r}.")
    shapes = tuple(tree_shapes)
    if not shapes or not all(isinstance(t, CandidateTree) for t in shapes):
        raise ConfigurationError("tree_shapes must be 'chain', 'tree' or a non-empty list of CandidateTree.")
    return shapes


def _scenarios(shapes: Sequence[CandidateTree], kinds: Sequence[CandidateKind], targets: Sequence[SamplingParams],
               vocab: int, seed: int, target_sharpness: float, draft_sharpness: float) -> list[_Scenario]:
    scenarios = []
    for index, (tree, kind, sampling) in enumerate(itertools.product(shapes, kinds, targets)):
        target = _RandomModel(vocab, _stream_seed(seed, index, 1), target_sharpness, sampling=sampling)
        draft = _RandomModel(vocab, _stream_seed(seed, index, 2), draft_sharpness, floor=0.05)
        fixed = None
        if kind is CandidateKind.DETERMINISTIC:
            fixed = _deterministic_tokens(tree, target, torch.Generator().manual_seed(_stream_seed(seed, index, 3)))
        scenarios.append(_Scenario(tree, kind, sampling, target, draft, fixed))
    return scenarios


# ---- running the check ------------------------------------------------------------------
class _BadOutput(Exception):
    pass


def _emitted(tokens: Sequence[int], length: int, vocab: int) -> Prefix:
    try:
        out = tuple(int(t) for t in tokens)
    except (TypeError, ValueError) as error:
        raise _BadOutput(f"returned {tokens!r}, not a sequence of token ids ({error})") from None
    if not 1 <= len(out) <= length:
        raise _BadOutput(f"emitted {len(out)} tokens {list(out)}; one step emits 1 to depth + 1 = {length}")
    if any(not 0 <= t < vocab for t in out):
        raise _BadOutput(f"emitted {list(out)}, outside the vocabulary [0, {vocab})")
    return out


def _describe(error: BaseException) -> str:
    if isinstance(error, _BadOutput):
        return f"sampler {error}"
    return f"sampler raised {type(error).__name__}: {error}"


def _exact_scenario(sampler: Sampler, scenario: _Scenario, tolerance: float) -> ScenarioResult:
    length = scenario.tree.max_depth + 1
    vocab = scenario.target.vocab

    def run(randomness: Randomness) -> Prefix:
        case = scenario.case(randomness)
        return _emitted(sampler(case, randomness), length, vocab)

    state = torch.get_rng_state()
    try:
        outcomes = enumerate_outcomes(run)
    except Exception as error:  # noqa: BLE001 - any failure of the sampler is a verdict, not a crash of the kit
        return ScenarioResult(scenario.tree, scenario.kind, scenario.target_sampling, passed=False,
                              error=_describe(error))
    if not torch.equal(state, torch.get_rng_state()):
        torch.set_rng_state(state)
        raise ConfigurationError(
            "The sampler drew from torch's global RNG in exact mode, so its outcomes cannot be enumerated; "
            "draw through the Randomness argument, or run check_sampler(..., mode='statistical').")
    emitted: dict[Prefix, float] = {}
    for weight, tokens in outcomes:
        emitted[tokens] = emitted.get(tokens, 0.0) + weight
    produced: dict[Prefix, float] = {}
    for prefix, weight in emitted.items():
        for seq, w in scenario.target_law(length, prefix).items():
            produced[seq] = produced.get(seq, 0.0) + weight * w
    target = scenario.target_law(length)
    gap = max(abs(produced.get(k, 0.0) - target.get(k, 0.0)) for k in set(produced) | set(target))
    return ScenarioResult(scenario.tree, scenario.kind, scenario.target_sampling, passed=gap <= tolerance,
                          gap=gap, outcomes=len(outcomes))


def _statistical_scenario(sampler: Sampler, scenario: _Scenario, index: int, samples: int, seed: int,
                          threshold: float) -> ScenarioResult:
    length = scenario.tree.max_depth + 1
    vocab = scenario.target.vocab
    draft_generator = torch.Generator().manual_seed(_stream_seed(seed, index, 10))
    continue_generator = torch.Generator().manual_seed(_stream_seed(seed, index, 11))
    draws, global_randomness = TorchRandomness(draft_generator), TorchRandomness(None)
    counts: Counter = Counter()
    for sample in range(samples):
        # The CPU default generator only: torch.manual_seed would also queue lazy CUDA/XPU seeding per call.
        torch.default_generator.manual_seed(_stream_seed(seed, index, 12, sample))
        case = scenario.case(draws)
        try:
            prefix = _emitted(sampler(case, global_randomness), length, vocab)
        except Exception as error:  # noqa: BLE001
            return ScenarioResult(scenario.tree, scenario.kind, scenario.target_sampling, passed=False,
                                  samples=sample, error=_describe(error))
        seq = list(prefix)
        while len(seq) < length:
            p = scenario.target(tuple(seq))
            seq.append(int(torch.multinomial(p, 1, generator=continue_generator)))
        counts[tuple(seq)] += 1
    expected = scenario.target_law(length)
    p_value = chi_square_pvalue(counts, expected)
    keys = set(counts) | set(expected)
    tv = 0.5 * sum(abs(counts.get(k, 0) / samples - expected.get(k, 0.0)) for k in keys)
    tv_noise = 0.5 * sum(math.sqrt(2 * p * (1 - p) / (math.pi * samples)) for p in expected.values())
    return ScenarioResult(scenario.tree, scenario.kind, scenario.target_sampling, passed=p_value > threshold,
                          p_value=p_value, tv=tv, tv_noise=tv_noise, samples=samples, outcomes=len(counts))


def check_sampler(
    sampler: Sampler,
    *,
    tree_shapes: Union[Literal["chain", "tree"], Iterable[CandidateTree]] = "chain",
    kinds: Sequence[CandidateKind] = ALL_KINDS,
    vocab: int = 3,
    mode: Mode = "exact",
    samples: int = 3000,
    alpha: float = DEFAULT_ALPHA,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
    target_sampling: Sequence[SamplingParams] = DEFAULT_TARGETS,
    target_sharpness: float = 1.5,
    draft_sharpness: float = 2.5,
    name: Optional[str] = None,
) -> ConformanceReport:
    """Check that ``sampler`` is lossless on every scenario of trees x kinds x targets.

    ``tree_shapes``: ``"chain"`` (chains of depth 1-3, for chain samplers), ``"tree"`` (chains of
    depth 1-2 and three branching trees), or your own trees. ``kinds``: which candidate kinds.
    ``target_sampling``: how each scenario's random target logits become ``p`` (default: plain
    softmax and top-k 2; ``[SamplingParams()]`` for a greedy target). ``mode``: ``"exact"``
    (enumerate; pass when the gap is ``<= tolerance``) or ``"statistical"`` (``samples`` steps
    per scenario; pass when the Bonferroni-corrected chi-square p-value is ``> alpha``, so a
    lossless sampler fails with probability at most ``alpha``). Deterministic for a given ``seed``;
    torch's global RNG state is restored afterwards.
    """
    if mode not in ("exact", "statistical"):
        raise ConfigurationError(f"mode must be 'exact' or 'statistical', got {mode!r}.")
    if isinstance(vocab, bool) or not isinstance(vocab, int) or vocab < 2:
        raise ConfigurationError(f"vocab must be an integer >= 2, got {vocab!r}.")
    if mode == "statistical" and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
        raise ConfigurationError(f"samples must be a positive integer, got {samples!r}.")
    if not 0.0 < alpha < 1.0:
        raise ConfigurationError(f"alpha must be in (0, 1), got {alpha!r}.")
    shapes = _resolve_shapes(tree_shapes)
    kinds = tuple(kinds)
    if not kinds or not all(isinstance(k, CandidateKind) for k in kinds):
        raise ConfigurationError(f"kinds must be a non-empty list of CandidateKind, got {kinds!r}.")
    targets = tuple(target_sampling)
    if not targets:
        raise ConfigurationError("target_sampling must list at least one SamplingParams.")
    widest = max(len(c) for tree in shapes for c in tree.children)
    if widest > vocab and any(k is not CandidateKind.SAMPLED_WITH_REPLACEMENT for k in kinds):
        raise ConfigurationError(f"A tree node has {widest} children but the vocabulary has {vocab} tokens; "
                                 "distinct siblings need vocab >= the widest node.")
    name = name or getattr(sampler, "__qualname__", None) or type(sampler).__name__
    scenarios = _scenarios(shapes, kinds, targets, vocab, seed, target_sharpness, draft_sharpness)
    start = time.perf_counter()
    state = torch.get_rng_state()
    try:
        if mode == "exact":
            results = tuple(_exact_scenario(sampler, s, tolerance) for s in scenarios)
            gaps = [r.gap for r in results if r.gap is not None]
            gap = max(gaps) if gaps else None
            return ConformanceReport(name=name, mode=mode, passed=all(r.passed for r in results), scenarios=results,
                                     samples=sum(r.outcomes for r in results), gap=gap, tolerance=tolerance,
                                     alpha=alpha, seconds=time.perf_counter() - start)
        threshold = alpha / len(scenarios)  # Bonferroni: P(any scenario fails | lossless) <= alpha
        results = tuple(_statistical_scenario(sampler, s, i, samples, seed, threshold)
                        for i, s in enumerate(scenarios))
        p_values = [r.p_value for r in results if r.p_value is not None]
        p_value = min(1.0, min(p_values) * len(results)) if p_values else None
        tvs = [r.tv for r in results if r.tv is not None]
        return ConformanceReport(name=name, mode=mode, passed=all(r.passed for r in results), scenarios=results,
                                 samples=sum(r.samples for r in results), p_value=p_value,
                                 tv=max(tvs) if tvs else None, tolerance=tolerance, alpha=alpha,
                                 seconds=time.perf_counter() - start)
    finally:
        torch.set_rng_state(state)


# ---- a command that reproduces the published results -----------------------------------------
def transformers_report(*, samples: int = 3000, seed: int = 0, alpha: float = DEFAULT_ALPHA,
                        kinds: Sequence[CandidateKind] = (CandidateKind.SAMPLED_WITH_REPLACEMENT,)) -> ConformanceReport:
    """The published check of transformers' ``_speculative_sampling``: chains of depth 1-3, the
    default targets, statistical mode (``docs/conformance.md`` gives the measured result)."""
    import transformers

    return check_sampler(transformers_speculative_sampling, tree_shapes="chain", kinds=kinds, mode="statistical",
                         samples=samples, alpha=alpha, seed=seed,
                         name=f"transformers {transformers.__version__} _speculative_sampling")


def project_reports(seed: int = 0, typical_samples: int = 1000) -> list[ConformanceReport]:
    """The project's acceptors and its deliberately broken mutants, exact mode on chains and trees
    (and ``TypicalAcceptor``, documented as not lossless, statistically; 0 skips it)."""
    from spec.acceptors import GreedyAcceptor, RejectionSamplingAcceptor, TypicalAcceptor
    from spec.testing.mutants import BROKEN_REJECTION_ACCEPTORS

    greedy = [SamplingParams()]
    reports = [
        check_sampler(rejection_sampler(RejectionSamplingAcceptor()), tree_shapes="tree", seed=seed,
                      name="RejectionSamplingAcceptor"),
        check_sampler(rejection_sampler(RejectionSamplingAcceptor()), tree_shapes="tree", seed=seed,
                      target_sampling=greedy, name="RejectionSamplingAcceptor (temperature 0)"),
        check_sampler(accept_sampler(GreedyAcceptor(), SamplingParams()), tree_shapes="tree", seed=seed,
                      target_sampling=greedy, name="GreedyAcceptor (temperature 0)"),
    ]
    for broken in BROKEN_REJECTION_ACCEPTORS:
        reports.append(check_sampler(rejection_sampler(broken()), tree_shapes="tree", seed=seed,
                                     name=f"broken.{broken.__name__}"))
    if typical_samples:
        reports.append(check_sampler(accept_sampler(TypicalAcceptor()), tree_shapes="chain",
                                     kinds=[CandidateKind.DETERMINISTIC], mode="statistical",
                                     samples=typical_samples, seed=seed, name="TypicalAcceptor (not lossless)"))
    return reports


def format_table(reports: Sequence[ConformanceReport]) -> str:
    """One row per report: sampler, mode, verdict, gap or p-value, failed scenarios, seconds."""
    rows = [("sampler", "mode", "verdict", "measure", "failed", "seconds")]
    for r in reports:
        if r.mode == "exact":
            measure = "-" if r.gap is None else f"gap {r.gap:.3g}"
        else:
            measure = "-" if r.p_value is None else f"p {r.p_value:.3g} (min {r.p_min:.3g}), TV {r.tv:.4f}"
        if r.errors:
            measure += f"; raised in {len(r.errors)}"
        rows.append((r.name, r.mode, "PASS" if r.passed else "FAIL", measure,
                     f"{len(r.failures)}/{len(r.scenarios)}", f"{r.seconds:.1f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m spec.testing.conformance",
        description="Check speculative sampling functions for losslessness (docs/conformance.md).")
    parser.add_argument("subject", choices=["transformers", "project"],
                        help="transformers: transformers' _speculative_sampling (statistical), then the project's "
                             "table; project: only the project's acceptors and broken mutants")
    parser.add_argument("--samples", type=int, default=3000, help="samples per scenario for transformers (default 3000)")
    parser.add_argument("--kinds", default="sampled_with_replacement",
                        help="candidate kinds for transformers, comma-separated (deterministic: q = point mass)")
    parser.add_argument("--alpha", type=float, default=DEFAULT_ALPHA, help="false-alarm rate (default 1e-4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--details", action="store_true", help="print every scenario's result")
    args = parser.parse_args(argv)
    try:
        kinds = [CandidateKind(k.strip()) for k in args.kinds.split(",")]
    except ValueError:
        parser.error(f"--kinds takes {', '.join(k.value for k in CandidateKind)}; got {args.kinds!r}")
    # Every tensor here is tiny: extra threads only add OpenMP overhead (milliseconds per op on a busy machine).
    torch.set_num_threads(1)
    reports = []
    if args.subject == "transformers":
        report = transformers_report(samples=args.samples, seed=args.seed, alpha=args.alpha, kinds=kinds)
        print(report.details() if args.details else report)
        print()
        reports.append(report)
    project = project_reports(args.seed)
    if args.details:
        for report in project:
            print(report.details())
        print()
    reports.extend(project)
    print(format_table(reports))
    # Exit status 1 when transformers' function fails the kit (the project table is informational).
    return 0 if args.subject == "project" or reports[0].passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
