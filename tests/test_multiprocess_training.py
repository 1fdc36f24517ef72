"""More than one process, proven on the CPU: two gloo processes under torchrun (what `accelerate launch
--multi_gpu --num_processes 2` starts) train to the weights one process reaches with the same global batch,
write each checkpoint and log line once, and resume after being killed."""

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

HERE = Path(__file__).parent
STEPS = 12


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(out: Path, processes: int) -> list[str]:
    script = [str(HERE / "train_tiny.py"), str(out), str(STEPS)]
    if processes == 1:
        return [sys.executable] + script
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
            "--master_addr", "127.0.0.1", "--master_port", str(free_port())] + script


def environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def run(out: Path, processes: int) -> dict[str, torch.Tensor]:
    subprocess.run(command(out, processes), check=True, cwd=HERE.parent, env=environment(), timeout=300)
    return load_file(out / "final.safetensors")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict[str, torch.Tensor]:
    return run(tmp_path_factory.mktemp("one"), 1)


def assert_close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        # Two half-batch gradients averaged by all-reduce vs one full-batch gradient: equal up to rounding.
        torch.testing.assert_close(a[name], b[name], rtol=1e-9, atol=1e-9, msg=name)


def test_two_processes_reach_the_weights_of_one_with_the_same_global_batch(tmp_path, one_process):
    two = run(tmp_path / "two", 2)
    assert_close(two, one_process)
    steps = [json.loads(line)["step"] for line in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))  # one log line per step: only the main process writes
    assert sorted(p.name for p in (tmp_path / "two").glob("step-*")) == ["step-00000008", "step-00000012"]


def test_two_processes_killed_mid_run_resume_to_the_same_weights(tmp_path, one_process):
    out = tmp_path / "killed"
    proc = subprocess.Popen(command(out, 2), cwd=HERE.parent, start_new_session=True,
                            env={**environment(), "TRAIN_TINY_PAUSE_AFTER_CHECKPOINT": "3"})
    deadline = time.time() + 240
    while time.time() < deadline:
        pointer = out / "latest"
        if pointer.exists() and int(pointer.read_text().split("-")[1]) >= 4:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # every process of the run at once, as a crash would
    proc.wait()
    assert not (out / "final.safetensors").exists(), "the run finished before it could be killed"
    assert int((out / "latest").read_text().split("-")[1]) < STEPS
    assert_close(run(out, 2), one_process)
