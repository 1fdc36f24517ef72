"""The losslessness grid: every composition of drafter x tree builder x candidate kind x sampling.

On a tiny Llama with a 3-token vocabulary (heads perturbed so ``q`` differs from ``p``),
each composition is checked two ways:

* **exact**: :func:`spec.testing.exact.composition_gap` over the real
  ``drafter.propose -> tree_builder.select -> acceptor.accept`` path, every draw
  enumerated; the gap must be <= 1e-9;
* **end to end**: ``SpeculativeDecoder.generate`` sampled ``samples`` times (seeds
  ``0..samples-1``, so the outcome is fixed), Pearson's chi-square of the 3-token
  continuations against the model's exact distribution. False-alarm rate ``ALPHA = 1e-4``
  per composition: a correct sampler fails with that probability over a random choice
  of seeds; over the whole grid, at most (compositions x 1e-4).

A composition the stages refuse would be listed as refused: the refusal comes from
:func:`spec.protocols.check_composition`, not from this table. Today none is (Kangaroo's drafts
carry their per-node state, so a pruning builder may prune them too).

``python -m spec.testing.grid`` runs the whole grid and prints the markdown table kept in
docs/losslessness.md (``--samples``, ``--json PATH``); tests run a covering subset.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections import Counter
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Iterator, Optional

import attrs
import torch

from spec.errors import IncompatibleStagesError
from spec.protocols import DraftContext, SamplingParams
from spec.protocols.compat import feature_layers
from spec.sampling import target_probs
from spec.testing.models import tiny_model

ALPHA = 1e-4
TOLERANCE = 1e-9
SAMPLES = 2000
VOCAB = 3
NEW = 3
PROMPT = (1, 2, 0, 2)

DRAFTERS = ("medusa", "hydra++", "clover", "kangaroo", "eagle", "eagle3")
BUILDERS = ("static", "optimal", "dynamic")
CANDIDATES = ("top_k", "sample_with_replacement", "sample_without_replacement")
SAMPLINGS: dict[str, dict[str, Any]] = {
    "temperature": dict(temperature=0.9),
    "top_k": dict(temperature=0.8, top_k=2),
    "top_p": dict(temperature=1.2, top_p=0.8),
}


@attrs.frozen
class GridCase:
    drafter: str
    builder: str
    candidates: str
    sampling: str

    @property
    def name(self) -> str:
        return f"{self.drafter}/{self.builder}/{self.candidates}/{self.sampling}"

    @property
    def params(self) -> SamplingParams:
        return SamplingParams(**SAMPLINGS[self.sampling])


def all_cases() -> list[GridCase]:
    """Every composition; Kangaroo drafts top-k candidates only (it has no sampled mode)."""
    return [GridCase(*combo) for combo in itertools.product(DRAFTERS, BUILDERS, CANDIDATES, SAMPLINGS)
            if combo[0] != "kangaroo" or combo[2] == "top_k"]


def rotated_cases() -> list[GridCase]:
    """Every drafter x builder x candidates once, the sampling setting rotated: the exact checks' subset."""
    rotation = itertools.cycle(SAMPLINGS)
    return [GridCase(c.drafter, c.builder, c.candidates, next(rotation))
            for c in all_cases() if c.sampling == next(iter(SAMPLINGS))]


def covering_cases() -> list[GridCase]:
    """A pairwise covering subset of the compositions: every pair of levels of any two factors that
    occurs in some composition occurs in one of these (chosen greedily, deterministic)."""
    cases = all_cases()

    def pairs(c: GridCase) -> set:
        values = list(enumerate(attrs.astuple(c)))
        return {(a, b) for a, b in itertools.combinations(values, 2)}

    uncovered = set().union(*(pairs(c) for c in cases))
    chosen = []
    while uncovered:
        best = max(cases, key=lambda c: len(pairs(c) & uncovered))
        chosen.append(best)
        uncovered -= pairs(best)
    return chosen


@lru_cache(maxsize=None)
def target_model():
    return tiny_model("llama", seed=4, vocab_size=VOCAB, hidden_size=16)


def _perturb(module: torch.nn.Module, seed: int) -> None:
    """Heads that differ from the lm_head, so q differs from p and acceptance is not trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(torch.randn(param.shape, generator=g, dtype=param.dtype) * 0.3)


def build_stages(case: GridCase, acceptor=None, builder_class=None):
    """(drafter, tree builder, verifier, acceptor) for ``case`` on :func:`target_model`; fresh every call."""
    from spec.acceptors import RejectionSamplingAcceptor
    from spec.bench.pairing import verifier_for
    from spec.drafters import CloverDrafter, HydraDrafter, KangarooDrafter, MedusaDrafter
    from spec.drafters.draft_vocab import DraftVocabulary
    from spec.drafters.eagle import EagleDrafter
    from spec.drafters.eagle3 import Eagle3Drafter
    from spec.trees import AcceptanceStats, DynamicTreeBuilder, StaticTreeBuilder, optimal_tree, tree_from_choices
    from spec.verifiers import make_verifier

    m = target_model()
    if case.drafter == "kangaroo":
        drafter = KangarooDrafter.from_model(m, exit_layer=1, threshold=0.1, max_depth=2, seed=0)
        _perturb(drafter.adapter, 1)
        verifier = drafter.verifier
    else:
        if case.drafter == "medusa":
            drafter = MedusaDrafter.from_model(m, num_heads=2, seed=0, candidates=case.candidates)
        elif case.drafter == "hydra++":
            drafter = HydraDrafter.hydra_plus_plus(m, num_heads=2, num_layers=1, seed=0, candidates=case.candidates)
        elif case.drafter == "clover":
            drafter = CloverDrafter.from_model(m, num_heads=2, seed=0, candidates=case.candidates)
        elif case.drafter == "eagle":
            drafter = EagleDrafter.from_model(m, max_depth=2, seed=0, candidates=case.candidates)
        else:  # a 2-token draft vocabulary: q is zero on the third token, which the target may still want
            drafter = Eagle3Drafter.from_model(m, max_depth=2, seed=0, candidates=case.candidates,
                                               draft_vocab=DraftVocabulary(VOCAB, torch.tensor([2, 0])))
        _perturb(drafter.heads, 1)
        # EAGLE-3 reads intermediate layers: the verifier reports what the drafter declares.
        verifier = verifier_for(m, drafter) if case.drafter == "eagle3" else make_verifier(m)
    if case.builder == "static":
        builder = StaticTreeBuilder(tree_from_choices([[0], [1], [0, 0]]))
    elif case.builder == "optimal":  # the DP's best 3-candidate tree for a measured-looking table
        stats = AcceptanceStats(probs=((0.55, 0.2, 0.1), (0.45, 0.15, 0.05)))
        builder = StaticTreeBuilder(optimal_tree(stats, budget=3).tree)
    else:  # a 6-node template, 3 kept by confidence: siblings compete by value
        builder = (builder_class or DynamicTreeBuilder)(depth=2, width=2, total_tokens=3)
    return drafter, builder, verifier, acceptor or RejectionSamplingAcceptor()


def make_decoder(case: GridCase, acceptor=None, builder_class=None):
    """The composition as a ``SpeculativeDecoder``; raises IncompatibleStagesError where the stages refuse it."""
    from spec.pipelines import SpeculativeDecoder

    drafter, builder, verifier, acceptor = build_stages(case, acceptor, builder_class)
    return SpeculativeDecoder(target_model(), drafter, builder, verifier, acceptor)


# ---- the model's own distributions ---------------------------------------------------------------------
@lru_cache(maxsize=None)
def _logits_after(tokens: tuple[int, ...]) -> torch.Tensor:
    with torch.no_grad():
        return target_model()(torch.tensor([tokens])).logits[0, -1].double()


def exact_distribution(sampling: SamplingParams, new: int = NEW) -> dict[tuple, float]:
    """P(continuation) for every ``new``-token continuation of PROMPT, from the model's processed distributions."""
    probs: dict[tuple, float] = {(): 1.0}
    for _ in range(new):
        grown = {}
        for prefix, weight in probs.items():
            p = target_probs(_logits_after(PROMPT + prefix), sampling)
            for token in range(VOCAB):
                grown[prefix + (token,)] = weight * float(p[token])
        probs = grown
    return probs


# ---- the two checks ------------------------------------------------------------------------------------
def exact_gap(case: GridCase, acceptor=None, builder_class=None, configure=None) -> float:
    """One step's exact gap (composition_gap), the drafter primed with the prompt as the pipeline does.
    ``configure(drafter)``, if given, adjusts the drafter first (e.g. a reduced draft vocabulary)."""
    from spec.testing.exact import composition_gap

    drafter, builder, _, acceptor = build_stages(case, acceptor, builder_class)
    if configure is not None:
        configure(drafter)
    if case.drafter == "kangaroo":
        raise IncompatibleStagesError("Kangaroo's drafts are only defined with its verifier; checked end to end.")
    prompt = torch.tensor(PROMPT)
    with torch.no_grad():
        states = target_model()(prompt[None, :-1], output_hidden_states=True).hidden_states
    layers = feature_layers(drafter.traits.features)  # the features the drafter reads (EAGLE-3: several layers)
    hidden = states[-1][0] if layers is None else torch.cat([states[k][0] for k in layers], dim=-1)
    drafter.reset()
    drafter.commit(prompt[:-1], hidden)
    context = DraftContext(tokens=prompt)
    return composition_gap(drafter, builder, acceptor, lambda prefix: _logits_after(PROMPT + prefix), context,
                           case.params)


@contextmanager
def rooted_at_prompt(verifier) -> Iterator[None]:
    """For the block: ``verifier`` opts out of ``PrefillsRoot``, so the prompt's last token is the first tree's root.

    Otherwise the first of the NEW tokens would be a plain draw from the prefill and the other two would see trees
    one deep at most, and a wrong acceptor would get past the test far more often (a mutant's p-value went from
    1e-7 to 4e-3). The prefill's own draw is tested on its own (tests/test_first_token.py)."""
    own = vars(verifier)
    had, saved = "prefill_root" in own, own.get("prefill_root")
    verifier.prefill_root = None
    try:
        yield
    finally:
        if had:
            verifier.prefill_root = saved
        else:
            del verifier.prefill_root


def sample_counts(decoder, sampling: dict[str, Any], samples: int = SAMPLES) -> tuple[Counter, float]:
    """Counts of each continuation over seeds ``0..samples-1``, and the mean accepted length over all steps."""
    counts: Counter = Counter()
    prompt = torch.tensor([PROMPT])
    gained, steps = 0, 0
    with rooted_at_prompt(decoder.verifier):
        for seed in range(samples):
            out = decoder.generate(prompt, max_new_tokens=NEW, seed=seed, **sampling)
            counts[tuple(out.new_tokens.tolist())] += 1
            gained += sum(s.accepted + 1 for s in out.steps)
            steps += len(out.steps)
    return counts, gained / max(steps, 1)


def chi_square(case: GridCase, samples: int = SAMPLES, acceptor=None, builder_class=None) -> tuple[float, float]:
    """(p-value, mean accepted length over every step) of ``samples`` end-to-end generations against the
    exact distribution."""
    return decoder_chi_square(make_decoder(case, acceptor, builder_class), case.sampling, samples)


def decoder_chi_square(decoder, sampling: str = "top_p", samples: int = SAMPLES) -> tuple[float, float]:
    """:func:`chi_square` for any decoder of :func:`target_model` (e.g. a composition outside the grid), at
    the ``SAMPLINGS[sampling]`` setting."""
    from spec.testing.stats import chi_square_pvalue

    counts, mean_accepted = sample_counts(decoder, SAMPLINGS[sampling], samples)
    return chi_square_pvalue(counts, exact_distribution(GridCase("-", "-", "-", sampling).params)), mean_accepted


def run_grid(cases: list[GridCase], samples: int = SAMPLES, progress: bool = True) -> list[dict[str, Any]]:
    from tqdm import tqdm

    rows = []
    for case in tqdm(cases, disable=not progress, desc="grid"):
        row: dict[str, Any] = attrs.asdict(case)
        start = time.perf_counter()
        try:
            make_decoder(case)
        except IncompatibleStagesError as refusal:
            row.update(status="refused", reason=str(refusal).split(";")[0])
            rows.append(row)
            continue
        try:
            row["exact_gap"] = exact_gap(case)
        except IncompatibleStagesError:
            row["exact_gap"] = None
        row["p_value"], _ = chi_square(case, samples)
        row["status"] = "pass" if (row["exact_gap"] is None or row["exact_gap"] <= TOLERANCE) and \
            row["p_value"] > ALPHA else "FAIL"
        row["seconds"] = round(time.perf_counter() - start, 1)
        rows.append(row)
    return rows


def markdown_table(rows: list[dict[str, Any]], samples: int) -> str:
    lines = [f"| drafter | tree builder | candidates | sampling | exact gap (one step) | chi-square p ({samples} samples) | verdict |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] == "refused":
            lines.append(f"| {r['drafter']} | {r['builder']} | {r['candidates']} | {r['sampling']} | - | - | "
                         f"refused at construction: {r['reason']} |")
            continue
        gap = "end to end only" if r["exact_gap"] is None else f"{r['exact_gap']:.1e}"
        lines.append(f"| {r['drafter']} | {r['builder']} | {r['candidates']} | {r['sampling']} | {gap} | "
                     f"{r['p_value']:.3g} | {r['status']} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spec.testing.grid", description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=SAMPLES, help="end-to-end samples per composition")
    parser.add_argument("--covering", action="store_true", help="only the pairwise covering subset the tests run")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = run_grid(covering_cases() if args.covering else all_cases(), args.samples)
    print(markdown_table(rows, args.samples))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0 if all(r["status"] != "FAIL" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
