"""Run methods side by side on the same prompts, interleaved, and collect Spec-Bench metrics."""

from __future__ import annotations

import threading
from typing import Any, Optional, Sequence

import attrs
import torch

from spec.errors import ConfigurationError

from spec.bench import metrics
from spec.bench.methods import Method, MethodRun
from spec.timing import ForwardTimer
from spec.trees.hardware import interpolate
from spec.trees.measure import measure_verify_costs as measure_cost_curve  # noqa: F401 (re-exported)


class PeakMemory:
    """Peak memory above the level at entry, in MB: CUDA allocator statistics, or resident memory
    sampled every millisecond on the CPU (a sampled peak can miss a spike shorter than that)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mb = 0.0

    @staticmethod
    def _rss_mb() -> float:
        import os

        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            self._start = self._rss_mb()
            self._high = self._start
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.001):
            self._high = max(self._high, self._rss_mb())

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20 - self._start
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(self._high, self._rss_mb()) - self._start


@attrs.frozen
class MethodReport:
    name: str
    tokens_per_second: float  # median over repeats
    speedup: float  # median over repeats of the ratio to the baseline in the same repeat
    repeat_tokens_per_second: tuple[float, ...]
    mean_accepted: float  # NaN for methods without per-step statistics
    accepted_histogram: dict[int, int]
    stages: dict[str, float]
    mean_tree_size: float
    peak_memory_mb: float
    matches_baseline: Optional[bool]  # None when sampling (outputs are not comparable)
    mismatched_prompts: tuple[int, ...]
    ceiling_speedup: Optional[float] = None
    step_ms: float = float("nan")  # mean decoding step, timed runs
    # Share of a step outside network forward passes, from one extra profiled pass (ForwardTimer).
    overhead_share: float = float("nan")


@attrs.frozen
class BenchReport:
    baseline: str
    methods: tuple[MethodReport, ...]
    settings: dict[str, Any]
    cost_curve: Optional[dict[int, float]] = None

    def method(self, name: str) -> MethodReport:
        return next(m for m in self.methods if m.name == name)

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self, value_serializer=lambda i, f, v: list(v) if isinstance(v, tuple) else v)


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
    tokens are compared with the baseline's and mismatches are flagged, never hidden.
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
                peaks[method.name] = max(peaks[method.name], memory.peak_mb)
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
    return _report(runs, peaks, baseline, sampling, cost_curve, profiled,
                   {"max_new_tokens": max_new_tokens, "repeats": repeats, "warmup": warmup,
                    "prompts": len(prompts), "sampling": sampling, "device": str(device)})


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


def _device_of(methods: Sequence[Method]) -> torch.device:
    for method in methods:
        model = getattr(method, "model", None) or getattr(getattr(method, "decoder", None), "model", None)
        if model is not None:
            return model.get_output_embeddings().weight.device
    return torch.device("cpu")


def _report(runs, peaks, baseline, sampling, cost_curve, profiled, settings) -> BenchReport:
    greedy = sampling.get("temperature", 0.0) == 0
    base_runs = runs[baseline]
    base_tps = [metrics.tokens_per_second([r.new_tokens.numel() for r in rep], [r.seconds for r in rep])
                for rep in base_runs]
    reports = []
    for name, reps in runs.items():
        tps = [metrics.tokens_per_second([r.new_tokens.numel() for r in rep], [r.seconds for r in rep]) for rep in reps]
        ratios = [metrics.speedup(t, b) for t, b in zip(tps, base_tps)]
        outputs = [r.output for rep in reps for r in rep if r.output is not None]
        mismatched: tuple[int, ...] = ()
        matches = None
        if greedy:
            mismatched = tuple(i for i, (a, b) in enumerate(zip(reps[0], base_runs[0]))
                               if not torch.equal(a.new_tokens, b.new_tokens))
            matches = not mismatched
        steps = [s for o in outputs for s in o.steps]
        mean_tree = sum(s.tree_size for s in steps) / len(steps) if steps else float("nan")
        mean_acc = metrics.mean_accepted_tokens(outputs) if outputs else float("nan")
        ceiling = None
        if cost_curve and steps:
            ceiling = metrics.zero_overhead_speedup(mean_acc, interpolate(cost_curve, 1), interpolate(cost_curve, mean_tree))
        reports.append(MethodReport(
            name=name, tokens_per_second=metrics.median(tps), speedup=metrics.median(ratios),
            repeat_tokens_per_second=tuple(tps), mean_accepted=mean_acc,
            accepted_histogram=metrics.accepted_histogram(outputs) if outputs else {},
            stages=metrics.stage_breakdown(outputs) if outputs else {}, mean_tree_size=mean_tree,
            peak_memory_mb=peaks[name], matches_baseline=matches, mismatched_prompts=mismatched,
            ceiling_speedup=ceiling, step_ms=metrics.mean_step_ms(outputs) if outputs else float("nan"),
            overhead_share=metrics.overhead_share([r.output for r in profiled[name] if r.output is not None])))
    return BenchReport(baseline=baseline, methods=tuple(reports), settings=settings, cost_curve=cost_curve)
