"""``spec bench`` names the first greedy divergence and the model's top-2 logit gap there (issue 24, item 9)."""

import torch

from spec import AutoregressiveDecoder, GreedyAcceptor
from spec.bench.methods import DecoderMethod
from spec.bench.report import save_report
from spec.bench.runner import run_benchmark
from spec.testing.drafters import OracleDrafter
from spec.testing.broken import OverAcceptingAcceptor

from helpers import VOCAB, model, prompt, reference


def test_a_greedy_mismatch_reports_its_first_divergence_and_top2_gap(tmp_path):
    from spec import SpeculativeDecoder, StaticTreeBuilder, make_verifier

    m = model("llama")
    prompts = [prompt(6, seed=1), prompt(5, seed=2)]
    ref = reference("llama", prompts[0], 40)

    def make_broken():  # the oracle's wrong tokens come from its own generator: a fresh one repeats the run
        return SpeculativeDecoder(m, OracleDrafter(ref, VOCAB, accuracy=0.6, seed=1),
                                  StaticTreeBuilder.from_choices([[0], [1], [0, 0], [0, 0, 0]]), make_verifier(m),
                                  OverAcceptingAcceptor(GreedyAcceptor()))

    broken = make_broken()
    baseline = AutoregressiveDecoder(m)
    report = run_benchmark([DecoderMethod("autoregressive", baseline), DecoderMethod("broken", broken)],
                           prompts[:1], max_new_tokens=32, repeats=1, warmup=0, profile_overhead=False)
    method = report.method("broken")
    assert method.mismatched_prompts == (0,) and len(method.divergences) == 1
    found = method.divergences[0]
    # What the divergence must say, worked out here from the two outputs and the model.
    expected = baseline.generate(prompts[0], max_new_tokens=32).new_tokens.flatten()
    got = make_broken().generate(prompts[0], max_new_tokens=32).new_tokens.flatten()
    index = int((expected[: got.numel()] != got[: expected.numel()]).nonzero()[0])
    assert (found.index, found.expected, found.got) == (index, int(expected[index]), int(got[index]))
    with torch.no_grad():
        logits = m(torch.cat([prompts[0][0], expected[:index]])[None]).logits[0, -1].float()
    top = logits.topk(2).values
    assert abs(found.top2_gap - float(top[0] - top[1])) < 1e-6 and found.top2_gap > 0
    save_report(report, tmp_path, plots=False)
    table = (tmp_path / "report.md").read_text()
    assert (f"DIFFERS on prompts [0]: prompt 0 at new token {index} (expected {found.expected}, got {found.got}; "
            f"top-2 logit gap {found.top2_gap:.3g})") in table
    assert "| autoregressive |" in table and "identical" in table
    assert report.to_dict()["methods"][1]["divergences"][0]["index"] == index
    assert report.method("autoregressive").divergences == ()
