"""Run methods side by side on the same prompts, interleaved, and collect Spec-Bench metrics."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from spec.bench.divergence import Divergence, first_divergence
from spec.bench.memory import PeakMemory
from spec.bench.methods import Method, MethodRun
from spec.bench.report import BenchReport, build_report
from spec.errors import ConfigurationError
from spec.models import model_device
from spec.timing import ForwardTimer


def run_benchmark(
    methods: Sequence[Method],
    prompts: Sequence[torch.Tensor],
    max_new_tokens: int,
    baseline: Optional[str] = None,
    repeats: int = 3,
    warmup: int = 1,
    sampling: Optional[dict[str, Any]] = None,
    eos_token_id: Optional[int] = None,
    cost_curve: Optional[dict[int, float]] = None,
    progress: bool = False,
    profile_overhead: bool = True,
) -> BenchReport:
    """Every method on every prompt, ``warmup + repeats`` times, interleaved so drift hits all alike.

    Within a repeat the method order rotates per prompt. ``baseline`` (default: the first
    method) is what speedups are relative to; under greedy decoding every method's
    tokens are compared with the baseline's and mismatches are flagged, never hidden, with the
    first divergence and the model's top-2 logit gap there (``spec.bench.divergence``: in half
    precision a flipped near-tie is expected, a large gap is a bug).
    With ``profile_overhead``, one more untimed pass per method with per-step timing
    (``ForwardTimer``) measures how much of a step lies outside network forward passes;
    it is kept apart because the timer's hooks (and CUDA synchronisation) cost time.
    """
    for name, value, least in (("repeats", repeats, 1), ("warmup", warmup, 0), ("max_new_tokens", max_new_tokens, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigurationError(f"run_benchmark: {name} must be a whole number >= {least}, got {value!r}.")
    if not methods or not prompts:
        raise ConfigurationError("run_benchmark needs at least one method and one prompt.")
    sampling = dict(sampling or {})
    baseline = baseline or methods[0].name
    names = [m.name for m in methods]
    if baseline not in names:
        raise ConfigurationError(f"baseline {baseline!r} is not one of the methods {names}; pass one of their names.")
    device = _device_of(methods)
    runs: dict[str, list[list[MethodRun]]] = {name: [] for name in names}  # [repeat][prompt]
    peaks: dict[str, float] = {name: 0.0 for name in names}
    bar = _progress_bar(progress, (warmup + repeats) * len(prompts) * len(methods), "benchmark")
    for repeat in range(warmup + repeats):
        per_method: dict[str, list[MethodRun]] = {name: [] for name in names}
        for index, prompt in enumerate(prompts):
            shift = index % len(methods)
            for method in list(methods[shift:]) + list(methods[:shift]):
                with PeakMemory(device) as memory:
                    run = method.run(prompt, max_new_tokens, _run_arguments(sampling, index, eos_token_id))
                # A static KV cache is allocated with its verifier, before the run: count it like the
                # dynamic cache a baseline allocates during its run.
                peaks[method.name] = max(peaks[method.name], memory.peak_mb + _preallocated_mb(method))
                per_method[method.name].append(run)
                if bar is not None:
                    bar.update(1)
        if repeat >= warmup:
            for name in names:
                runs[name].append(per_method[name])
    if bar is not None:
        bar.close()
    profiled: dict[str, list[MethodRun]] = {name: [] for name in names}
    if profile_overhead:
        bar = _progress_bar(progress, len(methods) * len(prompts), "overhead profile")
        for method in methods:
            for index, prompt in enumerate(prompts):
                with ForwardTimer():
                    profiled[method.name].append(method.run(prompt, max_new_tokens,
                                                            _run_arguments(sampling, index, eos_token_id)))
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
    model = _model_of(methods)

    def diverge(index: int, expected: torch.Tensor, got: torch.Tensor) -> Optional[Divergence]:
        if model is None:
            return None
        prompt = prompts[index].reshape(1, -1).cpu()
        sequences = [torch.cat([prompt, tokens.reshape(1, -1).cpu()], dim=1) for tokens in (expected, got)]
        return first_divergence(model, sequences[0], sequences[1], prompt.shape[1])

    return build_report(runs, peaks, baseline, sampling, cost_curve, profiled,
                        {"max_new_tokens": max_new_tokens, "repeats": repeats, "warmup": warmup,
                         "prompts": len(prompts), "sampling": sampling, "device": str(device)}, diverge)


def _run_arguments(sampling: dict[str, Any], index: int, eos_token_id: Optional[int]) -> dict[str, Any]:
    """``generate`` arguments for prompt ``index``: its own seed (when sampling), the shared EOS."""
    args = {**sampling, "eos_token_id": eos_token_id}
    if "seed" in args:
        args["seed"] = args["seed"] + index
    return args


def _progress_bar(enabled: bool, total: int, description: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, dynamic_ncols=True)


def _preallocated_mb(method: Method) -> float:
    """MB of the static KV caches a method's stages allocated up front (verifier, self-draft state), else 0."""
    stages = getattr(getattr(method, "decoder", None), "stages", None)
    caches = {id(cache): cache for stage in (getattr(stages, "verifier", None), getattr(stages, "drafter", None))
              for cache in (getattr(stage, "cache", None), getattr(getattr(stage, "state", None), "cache", None))
              if hasattr(cache, "nbytes")}  # a verifier and its self-drafter share one: count it once
    return sum(cache.nbytes for cache in caches.values()) / 2**20


def _model_of(methods: Sequence[Method]):
    """The target model the methods run (the first one found), or None."""
    for method in methods:
        model = getattr(method, "model", None) or getattr(getattr(method, "decoder", None), "model", None)
        if model is not None:
            return model
    return None


def _device_of(methods: Sequence[Method]) -> torch.device:
    model = _model_of(methods)
    return model_device(model) if model is not None else torch.device("cpu")
