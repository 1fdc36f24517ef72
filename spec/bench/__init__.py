"""Benchmarks: measure pipelines side by side with transformers, and ablations over stages."""

from spec.bench.ablation import Ablation
from spec.bench.acceptance import RecordingAcceptor, measure_acceptance
from spec.bench.costs import cost_aware_builder, measure_draft_costs, measure_step_overhead, measure_verify_costs
from spec.bench.methods import DecoderMethod, MethodRun, TransformersMethod
from spec.bench.report import BenchReport, MethodReport, markdown_table, save_report
from spec.bench.runner import run_benchmark

measure_cost_curve = measure_verify_costs  # its earlier name, kept for existing callers

__all__ = ["Ablation", "BenchReport", "DecoderMethod", "MethodReport", "MethodRun", "TransformersMethod",
           "RecordingAcceptor", "cost_aware_builder", "markdown_table", "measure_acceptance", "measure_cost_curve", "measure_draft_costs", "measure_step_overhead",
           "measure_verify_costs", "run_benchmark", "save_report"]
