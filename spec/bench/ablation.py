"""Ablations: a grid of drafters x trees x verifiers x acceptors x sampling settings, measured like any benchmark."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import attrs
import torch

from spec.bench.methods import DecoderMethod, TransformersMethod
from spec.bench.report import BenchReport, save_report
from spec.bench.runner import run_benchmark
from spec.errors import IncompatibleStagesError, TreeTooDeepError


def _auto_verifier(model, features: str = "final"):
    from spec.verifiers import make_verifier

    return make_verifier(model, features=features)


@attrs.define
class Ablation:
    """Every combination of the named stages, with the autoregressive and transformers baselines.

    ``drafters``, ``tree_builders``, ``acceptors``: name -> stage. ``verifiers``: name -> a
    function ``(model, features=...)`` that builds a verifier reporting the hidden states the drafter
    reads (``drafter.traits.features``; default: ``make_verifier``); a drafter that brings its own
    verifier (Kangaroo) uses it instead. ``sampling``: name -> ``generate``
    keyword arguments (temperature, top_k, top_p, seed). The greedy acceptor is only paired
    with greedy settings. Each sampling setting is one
    interleaved benchmark run; the result is a list of flat records.
    """

    model: Any
    drafters: dict[str, Any]
    tree_builders: dict[str, Any]
    acceptors: dict[str, Any]
    sampling: dict[str, dict[str, Any]] = attrs.field(factory=lambda: {"greedy": {}})
    transformers_baselines: bool = True
    verifiers: dict[str, Callable[[Any, str], Any]] = attrs.field(factory=lambda: {"auto": _auto_verifier})

    def pipelines(self, sampling: dict[str, Any]) -> list[tuple[dict[str, str], DecoderMethod]]:
        from spec.pipelines import SpeculativeDecoder

        greedy = sampling.get("temperature", 0.0) == 0
        several = len(self.verifiers) > 1
        out = []
        for (d, drafter), (t, builder), (v, make), (a, acceptor) in itertools.product(
                self.drafters.items(), self.tree_builders.items(), self.verifiers.items(), self.acceptors.items()):
            if not greedy and type(acceptor).__name__ == "GreedyAcceptor":
                continue
            own = drafter.traits.verifier
            if own is not None and v != next(iter(self.verifiers)):
                continue  # a self-drafter's verifier is fixed: one row, not one per verifier
            try:
                verifier = own or make(self.model, features=drafter.traits.features)
                decoder = SpeculativeDecoder(self.model, drafter, builder, verifier, acceptor)
            except (IncompatibleStagesError, TreeTooDeepError):
                continue  # the stages refuse this combination (e.g. a pruning builder on a self-drafter)
            label = {"drafter": d, "tree": t, "verifier": "own" if own is not None else v, "acceptor": a}
            name = f"{d}/{t}/{label['verifier']}/{a}" if several else f"{d}/{t}/{a}"
            out.append((label, DecoderMethod(name, decoder)))
        return out

    def run(self, prompts: Sequence[torch.Tensor], max_new_tokens: int, repeats: int = 3, warmup: int = 1,
            out_dir: Optional[str | Path] = None, progress: bool = False,
            eos_token_id: Optional[int] = None) -> list[dict[str, Any]]:
        from spec.pipelines import AutoregressiveDecoder

        records = []
        for setting, sampling in self.sampling.items():
            methods = [DecoderMethod("autoregressive", AutoregressiveDecoder(self.model))]
            if self.transformers_baselines:
                methods += [TransformersMethod.greedy(self.model), TransformersMethod.prompt_lookup(self.model)]
            labelled = self.pipelines(sampling)
            methods += [method for _, method in labelled]
            baseline = "transformers_generate" if self.transformers_baselines else "autoregressive"
            report: BenchReport = run_benchmark(methods, prompts, max_new_tokens, baseline=baseline, repeats=repeats,
                                                warmup=warmup, sampling=sampling, progress=progress,
                                                eos_token_id=eos_token_id)
            if out_dir is not None:
                save_report(report, Path(out_dir) / setting)
            labels = {method.name: label for label, method in labelled}
            for m in report.methods:
                records.append({"sampling": setting, **labels.get(m.name, {"drafter": m.name, "tree": "-",
                                                                           "verifier": "-", "acceptor": "-"}),
                                "method": m.name, "tokens_per_second": m.tokens_per_second, "speedup": m.speedup,
                                "mean_accepted": m.mean_accepted, "matches_baseline": m.matches_baseline})
        if out_dir is not None:
            (Path(out_dir) / "ablation.json").write_text(json.dumps(records, indent=2))
        return records
