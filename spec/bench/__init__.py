"""Benchmarks: measure pipelines side by side with transformers, and ablations over stages."""

from spec.bench.ablation import Ablation
from spec.bench.methods import DecoderMethod, MethodRun, TransformersMethod
from spec.bench.report import markdown_table, save_report
from spec.bench.runner import BenchReport, MethodReport, measure_cost_curve, run_benchmark

__all__ = ["Ablation", "BenchReport", "DecoderMethod", "MethodReport", "MethodRun", "TransformersMethod",
           "markdown_table", "measure_cost_curve", "run_benchmark", "save_report"]
