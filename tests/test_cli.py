import subprocess
import sys

import torch

from spec.apps.cli import main
from spec.models.placement import resolve_placement

# The demo's --device defaults to auto (CUDA when visible): these tests pin the CPU, where their expectations
# (float16 refused, exact greedy equality, no compile) hold; test_cpu_pinned_tests_hold_with_a_gpu_visible shows it.
CPU = ["--device", "cpu"]


def test_help_explains_itself():
    for command in (["--help"], ["demo", "--help"], ["train", "--help"], ["tree", "optimise", "--help"],
                    ["build-model", "--help"]):
        out = subprocess.run([sys.executable, "-m", "spec.apps.cli", *command], capture_output=True, text=True)
        assert out.returncode == 0, (command, out.stderr)
        assert "usage: spec" in out.stdout
    demo_help = subprocess.run([sys.executable, "-m", "spec.apps.cli", "demo", "--help"], capture_output=True, text=True)
    assert "--drafter" in demo_help.stdout and "--temperature" in demo_help.stdout
    for option in ("--verifier", "--compile", "--device", "--dtype"):
        assert option in demo_help.stdout


def test_demo_with_each_verifier_and_a_bad_dtype(capsys):
    for verifier in ("fast", "generic"):
        assert main(["demo", "--random-model", *CPU, "--max-new-tokens", "16", "--verifier", verifier]) == 0
        assert "identical completions: True" in capsys.readouterr().out
    for model in ([], ["--random-model"]):
        assert main(["demo", *model, *CPU, "--dtype", "float16", "--max-new-tokens", "4"]) == 2
        assert "float16 is not supported on cpu" in capsys.readouterr().err


def test_random_model_demo_outputs_are_identical(capsys):
    assert main(["demo", "--random-model", *CPU, "--max-new-tokens", "24"]) == 0
    assert "identical completions: True" in capsys.readouterr().out


def test_cpu_pinned_tests_hold_with_a_gpu_visible(monkeypatch, capsys):
    """Simulate a GPU host (only the device decision: nothing is allocated on it): auto would pick CUDA, and a
    pinned CPU run still gets the CPU's answer (float16 refused)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_placement("auto", "float32")[0].type == "cuda"
    assert resolve_placement("cpu", "auto") == (torch.device("cpu"), torch.float32)
    assert main(["demo", "--random-model", *CPU, "--dtype", "float16", "--max-new-tokens", "4"]) == 2
    assert "float16 is not supported on cpu" in capsys.readouterr().err
