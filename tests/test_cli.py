import subprocess
import sys

from spec.cli import main


def test_help_explains_itself():
    out = subprocess.run([sys.executable, "-m", "spec.cli", "demo", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "--drafter" in out.stdout and "--tree" in out.stdout


def test_demo_outputs_are_identical(capsys):
    assert main(["demo", "--max-new-tokens", "24"]) == 0
    text = capsys.readouterr().out
    assert "identical       : True" in text
    assert main(["demo", "--drafter", "medusa", "--arch", "qwen2", "--max-new-tokens", "16"]) == 0
