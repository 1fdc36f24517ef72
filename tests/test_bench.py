import json
import math

import pytest
import torch

from spec import (
    AutoregressiveDecoder,
    FastTreeVerifier,
    GreedyAcceptor,
    MedusaDrafter,
    RejectionSamplingAcceptor,
    SpeculativeDecoder,
    StaticTreeBuilder,
    TreeAttentionVerifier,
)
from spec.bench import Ablation, DecoderMethod, TransformersMethod, measure_cost_curve, run_benchmark, save_report
from spec.bench import metrics
from spec.trees.hardware import interpolate
from spec.protocols import GenerationOutput, StepStats
from spec.testing.broken import OverAcceptingAcceptor
from spec.testing.drafters import OracleDrafter
from spec.trees import chain_tree, tree_from_choices

from helpers import VOCAB, model, prompt, reference


def fake_output(accepted, step_s=(0.1, 0.2, 0.05, 0.05), prefill=0.5, total=None):
    steps = tuple(StepStats(tree_size=5, accepted=a, emitted=a + 1, draft_s=step_s[0], verify_s=step_s[1],
                            accept_s=step_s[2], commit_s=step_s[3]) for a in accepted)
    total = total if total is not None else prefill + sum(s.total_s for s in steps) + 0.1
    return GenerationOutput(sequences=torch.zeros(1, 4 + sum(a + 1 for a in accepted), dtype=torch.long),
                            prompt_length=4, steps=steps, prefill_s=prefill, total_s=total)


def test_arithmetic_on_known_inputs():
    assert metrics.tokens_per_second([10, 30], [1.0, 3.0]) == 10.0
    assert metrics.speedup(25.0, 10.0) == 2.5
    outs = [fake_output([0, 2, 3]), fake_output([1])]
    assert metrics.mean_accepted_tokens(outs) == (1 + 3 + 4 + 2) / 4
    assert metrics.accepted_histogram(outs) == {1: 1, 2: 1, 3: 1, 4: 1}
    one = fake_output([0, 0])  # 2 steps of 0.4 s, plus 0.1 s outside the stages
    stages = metrics.stage_breakdown([one])
    assert stages["verify"] == pytest.approx(0.4 / 0.9)
    assert stages["other"] == pytest.approx(0.1 / 0.9)
    assert sum(stages.values()) == pytest.approx(1.0)
    assert metrics.zero_overhead_speedup(3.0, 0.01, 0.015) == pytest.approx(2.0)
    # The in-run ceiling: 1.5x realised, 0.2 s prefill + 0.4 s verify of 1.0 s in all -> 2.5x if the rest were free.
    run = GenerationOutput(sequences=torch.zeros(1, 3, dtype=torch.long), prompt_length=1,
                           steps=(StepStats(tree_size=4, accepted=1, emitted=2, verify_s=0.4),), total_s=1.0,
                           prefill_s=0.2)
    assert metrics.free_overhead_speedup(1.5, [run]) == pytest.approx(2.5)
    assert math.isnan(metrics.free_overhead_speedup(float("nan"), [run]))
    assert interpolate({1: 1.0, 9: 2.0}, 5) == pytest.approx(1.5)
    assert interpolate({1: 1.0, 9: 2.0}, 20) == 2.0


def pipeline(m, drafter, acceptor=None, tree=None):
    return SpeculativeDecoder(m, drafter, StaticTreeBuilder(tree or tree_from_choices([[0], [1], [0, 0]])),
                              TreeAttentionVerifier(m), acceptor or GreedyAcceptor())


def test_smoke_run_writes_every_file_with_every_field(tmp_path):
    m = model("llama")
    prompts = [prompt(6, seed=1), prompt(9, seed=2)]
    ref = reference("llama", prompts[0], 24)
    methods = [
        TransformersMethod.greedy(m),
        DecoderMethod("autoregressive", AutoregressiveDecoder(m)),
        TransformersMethod.prompt_lookup(m),
        DecoderMethod("medusa", pipeline(m, MedusaDrafter.from_model(m, num_heads=2))),
        DecoderMethod("oracle", pipeline(m, OracleDrafter(ref, VOCAB, accuracy=0.9))),
    ]
    curve = measure_cost_curve(TreeAttentionVerifier(m), [1, 2, 4, 8], prompts[0][0], repeats=2)
    report = run_benchmark(methods, prompts, max_new_tokens=16, repeats=2, warmup=1, cost_curve=curve)
    files = save_report(report, tmp_path)
    for path in files.values():
        assert path.exists() and path.stat().st_size > 0
    data = json.loads(files["json"].read_text())
    assert data["baseline"] == "transformers_generate" and len(data["methods"]) == 5
    for entry in data["methods"]:
        assert entry["tokens_per_second"] > 0 and entry["speedup"] > 0
        assert entry["matches_baseline"] is True
        assert len(entry["repeat_tokens_per_second"]) == 2
    medusa = report.method("medusa")
    assert medusa.mean_accepted >= 1.0 and medusa.stages and medusa.ceiling_speedup > 0
    assert sum(medusa.accepted_histogram.values()) > 0
    assert report.method("transformers_generate").speedup == pytest.approx(1.0)
    assert "| medusa |" in files["markdown"].read_text()
    for name in ("autoregressive", "medusa", "oracle"):  # the profiled pass measured every decoder's steps
        assert 0.0 < report.method(name).overhead_share < 1.0 and report.method(name).step_ms > 0
    assert report.method("transformers_generate").overhead_share != report.method("transformers_generate").overhead_share


def test_forward_timer_counts_outermost_calls_once(monkeypatch):
    """A fake clock that ticks once per read: nested modules and marked regions must not be counted twice."""
    import spec.timing as timing

    ticks = iter(range(1000))
    monkeypatch.setattr(timing.time, "perf_counter", lambda: float(next(ticks)))
    inner = torch.nn.Linear(2, 2)
    outer = torch.nn.Sequential(inner, torch.nn.ReLU(), torch.nn.Linear(2, 2))
    x = torch.ones(1, 2)
    outer(x)  # no timer: nothing counted, no clock read
    assert timing.active_timer() is None
    with timing.ForwardTimer() as timer:
        outer(x)  # one outermost call: clock read at entry and exit only -> 1 tick
        assert timer.seconds == 1.0
        with timing.forward_region():  # a marked region around modules: still one span
            inner(x)
            outer(x)
        assert timer.seconds == 2.0
        with pytest.raises(RuntimeError, match="already active"):
            timing.ForwardTimer().__enter__()
    assert timing.active_timer() is None
    outer(x)  # hooks removed
    with timing.forward_region():
        pass
    assert timer.seconds == 2.0


def test_overhead_share_on_known_steps():
    steps = (StepStats(tree_size=4, accepted=1, emitted=2, draft_s=1.0, verify_s=3.0, forward_s=3.0),
             StepStats(tree_size=4, accepted=0, emitted=1, draft_s=1.0, verify_s=3.0, forward_s=2.0),
             StepStats(tree_size=4, accepted=0, emitted=1, draft_s=5.0))  # untimed step: ignored
    out = GenerationOutput(sequences=torch.zeros(1, 5, dtype=torch.long), prompt_length=1, steps=steps,
                           prefill_s=0.0, total_s=14.0)
    assert steps[0].overhead_s == 1.0 and steps[2].overhead_s is None
    assert metrics.overhead_share([out]) == pytest.approx(3.0 / 8.0)
    assert metrics.mean_step_ms([out]) == pytest.approx(1000 * 13.0 / 3)


def test_a_method_with_different_greedy_output_is_flagged(tmp_path):
    m = model("llama")
    prompts = [prompt(6, seed=1)]
    ref = reference("llama", prompts[0], 40)
    broken = pipeline(m, OracleDrafter(ref, VOCAB, accuracy=0.6, seed=1), OverAcceptingAcceptor(GreedyAcceptor()))
    report = run_benchmark([DecoderMethod("autoregressive", AutoregressiveDecoder(m)), DecoderMethod("broken", broken)],
                           prompts, max_new_tokens=32, repeats=1, warmup=0)
    assert report.method("broken").matches_baseline is False
    assert report.method("broken").mismatched_prompts == (0,)
    save_report(report, tmp_path, plots=False)
    assert "DIFFERS on prompts [0]" in (tmp_path / "report.md").read_text()


def test_ablation_grid_records_and_files(tmp_path):
    m = model("qwen2")
    ablation = Ablation(
        model=m,
        drafters={"medusa": MedusaDrafter.from_model(m, num_heads=3)},
        tree_builders={"chain2": StaticTreeBuilder(chain_tree(2)), "tree": StaticTreeBuilder(tree_from_choices([[0], [1]]))},
        acceptors={"greedy": GreedyAcceptor(), "rejection": RejectionSamplingAcceptor()},
        sampling={"greedy": {}, "t1": {"temperature": 1.0, "seed": 0}},
        transformers_baselines=False,
        verifiers={"generic": TreeAttentionVerifier, "fast": FastTreeVerifier},
    )
    records = ablation.run([prompt(5, seed=3)], max_new_tokens=8, repeats=1, warmup=0, out_dir=tmp_path)
    pipelines = [r for r in records if r["tree"] != "-"]
    # greedy: 2 trees x 2 verifiers x 2 acceptors; t=1: 2 trees x 2 verifiers x rejection only
    assert len(pipelines) == 12
    assert {r["verifier"] for r in pipelines} == {"generic", "fast"}
    assert all(r["matches_baseline"] for r in records if r["sampling"] == "greedy")
    assert (tmp_path / "ablation.json").exists() and (tmp_path / "t1" / "report.md").exists()


def test_assisted_generation_baseline_runs_and_matches():
    m = model("llama")
    assistant = model("llama", seed=3)  # same vocabulary, other weights: a (bad) draft model
    report = run_benchmark([TransformersMethod.greedy(m), TransformersMethod.assisted(m, assistant)],
                           [prompt(5, seed=1)], max_new_tokens=12, repeats=1, warmup=0)
    assert report.method("transformers_assisted").matches_baseline is True


def test_ablation_builds_verifiers_reporting_what_each_drafter_reads():
    """EAGLE-3 reads intermediate layers: its row gets a verifier reporting them instead of being skipped."""
    from spec.apps.shipped import load_shipped, load_shipped_drafter

    m, _ = load_shipped()
    eagle3 = load_shipped_drafter("eagle3", m)
    ablation = Ablation(model=m, drafters={"eagle3": eagle3, "medusa": load_shipped_drafter("medusa", m)},
                        tree_builders={"chain2": StaticTreeBuilder(chain_tree(2))}, acceptors={"g": GreedyAcceptor()},
                        transformers_baselines=False)
    rows = ablation.pipelines({})
    assert [label["drafter"] for label, _ in rows] == ["eagle3", "medusa"]
    assert rows[0][1].decoder.verifier.traits.features == eagle3.traits.features != "final"


def test_first_divergence_names_the_token_and_the_models_top2_gap():
    from spec.bench.divergence import first_divergence

    m = model("llama")
    p = torch.tensor([[3, 1, 4, 1, 5]])
    ref = AutoregressiveDecoder(m).generate(p, max_new_tokens=6).sequences
    assert first_divergence(m, ref, ref, 5) is None
    other = ref.clone()
    other[0, 8] = (other[0, 8] + 1) % VOCAB
    found = first_divergence(m, ref, other, 5)
    assert (found.index, found.expected, found.got) == (3, int(ref[0, 8]), int(other[0, 8]))
    top = torch.topk(m(ref[:, :8]).logits[0, -1].float(), 2).values
    assert found.top2_gap == pytest.approx(float(top[0] - top[1])) and found.top2_gap >= 0
