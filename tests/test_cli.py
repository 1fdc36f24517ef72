import subprocess
import sys

from spec.apps.cli import main


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
        assert main(["demo", "--random-model", "--max-new-tokens", "16", "--verifier", verifier]) == 0
        assert "identical completions: True" in capsys.readouterr().out
    for model in ([], ["--random-model"]):
        assert main(["demo", *model, "--dtype", "float16", "--max-new-tokens", "4"]) == 2
        assert "float16 is not supported on cpu" in capsys.readouterr().err


def test_random_model_demo_outputs_are_identical(capsys):
    assert main(["demo", "--random-model", "--max-new-tokens", "24"]) == 0
    assert "identical completions: True" in capsys.readouterr().out
