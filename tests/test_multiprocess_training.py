"""More than one process, proven on the CPU: two gloo processes under torchrun (what `accelerate launch
--multi_gpu --num_processes 2` starts) train to the weights one process reaches with the same global batch,
write each checkpoint and log line once, and resume after being killed; on text and on conversation blocks
(whose processes hold different numbers of assistant tokens), and sharded with FSDP2 for Medusa-2's joint
training (each process holding only its shard of every parameter)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_training import model_dir  # noqa: F401  (a fixture: a tiny Llama directory with a tokenizer and text)
from train_tiny import chat_blocks

HERE = Path(__file__).parent
STEPS = 12
JOINT_STEPS = 8  # Medusa-2: 2 steps of heads alone, then 6 joint


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(out: Path, processes: int, mode: str = "medusa", steps: int = STEPS) -> list[str]:
    script = [str(HERE / "train_tiny.py"), str(out), str(steps), mode]
    if processes == 1:
        return [sys.executable] + script
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
            "--master_addr", "127.0.0.1", "--master_port", str(free_port())] + script


def environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def run(out: Path, processes: int, mode: str = "medusa", steps: int = STEPS) -> dict[str, torch.Tensor]:
    subprocess.run(command(out, processes, mode, steps), check=True, cwd=HERE.parent, env=environment(), timeout=300)
    if mode == "medusa2-fsdp":  # the final checkpoint: full weights, gathered from the shards
        return load_file(out / (out / "latest").read_text().strip() / "weights.safetensors")
    return load_file(out / "final.safetensors")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict[str, torch.Tensor]:
    return run(tmp_path_factory.mktemp("one"), 1)


@pytest.fixture(scope="module")
def one_process_joint(tmp_path_factory) -> dict[str, torch.Tensor]:
    return run(tmp_path_factory.mktemp("joint"), 1, "medusa2", JOINT_STEPS)


def assert_close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        # Two half-batch gradients averaged (all-reduce, or FSDP's reduce-scatter) vs one full-batch gradient:
        # equal up to rounding in float64.
        torch.testing.assert_close(a[name], b[name], rtol=1e-9, atol=1e-9, msg=name)


def logged_steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]


def alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie, killed and not yet reaped by its new parent, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def kill_after_checkpoint(out: Path, mode: str, steps: int, at_least: int) -> None:
    """Start a 2-process run and kill every process at once (as a crash would) once checkpoint ``at_least`` is
    written (each checkpoint is followed by a pause, so the kill lands between checkpoints).

    torchrun starts each worker in a session of its own: killing torchrun's process group leaves the workers
    training on (they would finish the run behind the resumed one's back), so the workers are killed by the
    process ids they wrote, then torchrun."""
    proc = subprocess.Popen(command(out, 2, mode, steps), cwd=HERE.parent, start_new_session=True,
                            env={**environment(), "TRAIN_TINY_PAUSE_AFTER_CHECKPOINT": "3"})
    deadline = time.time() + 240
    while time.time() < deadline:
        pointer = out / "latest"
        if pointer.exists() and int(pointer.read_text().split("-")[1]) >= at_least:
            break
        assert proc.poll() is None, f"the run exited with {proc.returncode} before checkpoint {at_least}"
        time.sleep(0.05)
    workers = [int(path.read_text()) for path in out.glob("pid-*")]
    assert len(workers) == 2
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    while any(alive(pid) for pid in workers):
        time.sleep(0.05)
    assert int((out / "latest").read_text().split("-")[1]) < steps, "the run finished before it could be killed"


def test_two_processes_on_conversation_blocks_reach_the_weights_of_one_with_the_same_global_batch(tmp_path):
    # The processes' halves of a batch hold different numbers of assistant tokens: averaging each process's own
    # mean would weigh them unequally (measured: 0.015 off after 8 steps), the mean over every process's
    # tokens (counted_over_processes) does not.
    assert chat_blocks(48, 24).loss_mask.sum(1).unique().numel() > 3
    one = run(tmp_path / "one", 1, "chat")
    assert_close(run(tmp_path / "two", 2, "chat"), one)
    assert logged_steps(tmp_path / "two") == list(range(1, STEPS + 1))  # one log line per step: only the main process writes
    assert sorted(p.name for p in (tmp_path / "two").glob("step-*")) == ["step-00000008", "step-00000012"]
    assert (tmp_path / "two" / "checkpoints.txt").read_text().split() == ["0", "4", "0", "8", "0", "12"]


def test_two_processes_killed_mid_run_resume_to_the_weights_of_one(tmp_path, one_process):
    out = tmp_path / "killed"
    kill_after_checkpoint(out, "medusa", STEPS, 4)
    assert not (out / "final.safetensors").exists()
    assert_close(run(out, 2), one_process)


def test_fsdp_two_processes_killed_mid_run_resume_to_the_weights_of_one_each_holding_its_shard(
        tmp_path, one_process_joint):
    """Medusa-2's joint training sharded with FSDP2, killed after its first checkpoint and resumed: the same
    weights as one unsharded process with the same global batch."""
    out = tmp_path / "fsdp"
    kill_after_checkpoint(out, "medusa2-fsdp", JOINT_STEPS, 4)
    sharded = run(out, 2, "medusa2-fsdp", JOINT_STEPS)
    assert_close(sharded, one_process_joint)
    from spec.testing.models import tiny_model

    initial = tiny_model("llama", seed=0, vocab_size=96).state_dict()
    for name, value in initial.items():  # the backbone trained too (jointly), not only the heads
        assert not torch.equal(sharded[f"backbone.{name}"], value), name
    # During the run each process held half of every parameter (FSDP2 shards dim 0), never the whole.
    shards = [json.loads((out / f"shards-{rank}.json").read_text()) for rank in (0, 1)]
    assert shards[0].keys() == shards[1].keys() == set(sharded)
    for name in shards[0]:
        (local0, full), (local1, _) = shards[0][name], shards[1][name]
        assert local0 + local1 == full == sharded[name].numel(), name
        assert 0 < local0 < full and 0 < local1 < full, name
    # One FSDP group per decoder layer and per head (the embeddings, norm and lm_head are the root's).
    assert json.loads((out / "units-0.json").read_text()) == [
        "backbone.model.layers.0", "backbone.model.layers.1", "heads.heads.0", "heads.heads.1"]
    # Checkpoints written by the main process only (the kill may land before the line for step 4), each once;
    # one log line per step across the kill.
    written = (out / "checkpoints.txt").read_text().splitlines()
    assert written in (["0 4", "0 8"], ["0 8"])
    assert logged_steps(out) == list(range(1, JOINT_STEPS + 1))
    assert json.loads((out / "run.json").read_text())["settings"]["sharding"] == "fsdp"


def test_spec_train_sharded_with_fsdp_writes_the_trained_model_and_heads_whole(model_dir, tmp_path):  # noqa: F811
    out = tmp_path / "cli"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                    "127.0.0.1", "--master_port", str(free_port()), "-m", "spec.apps.cli", "train", "--drafter",
                    "medusa", "--recipe", "medusa2", "--sharding", "fsdp", "--model", str(model_dir), "--data",
                    str(model_dir / "data.txt"), "--out", str(out), "--steps", "2", "--batch-size", "2",
                    "--block-size", "32", "--num-heads", "2", "--eval-every", "2", "--checkpoint-every", "2"],
                   check=True, cwd=HERE.parent, env=environment(), timeout=300)
    from transformers import AutoModelForCausalLM

    from spec import MedusaDrafter

    # The main process rebuilt the module unsharded from the final checkpoint and wrote it out.
    weights = load_file(out / "step-00000002" / "weights.safetensors")
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    heads = MedusaDrafter.from_pretrained(out / "heads", model).heads
    for prefix, module in (("backbone", model), ("heads", heads)):
        for name, value in module.state_dict().items():
            assert torch.equal(value, weights[f"{prefix}.{name}"]), name
    assert json.loads((out / "summary.json").read_text())["after"]["eval_head0_top1"] >= 0
    assert (out / "acceptance_stats.json").exists()


def test_a_nan_loss_on_one_process_stops_every_process(tmp_path):
    """Process 1 alone sees a NaN loss: both stop with the divergence error (the loss check is shared), instead of
    process 0 waiting for ever in the next all-reduce."""
    result = subprocess.run(command(tmp_path / "nan", 2), cwd=HERE.parent, timeout=120, capture_output=True, text=True,
                            env={**environment(), "TRAIN_TINY_NAN_LOSS": "1 3"})
    assert result.returncode != 0
    assert result.stderr.count("TrainingDivergedError: Training diverged at step 3") == 2, result.stderr[-3000:]
