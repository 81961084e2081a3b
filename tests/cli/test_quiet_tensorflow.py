"""TensorFlow's native start-up lines stay off the terminal of hefl commands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.quiet_tensorflow import native_stderr_captured
from testkit.cluster import sample_csv

HEFL = Path(sys.executable).parent / "hefl"
# What TensorFlow prints on a CPU machine before Python's logging exists (seen on this project's
# machines with the full tensorflow wheel): none of it may reach a user's terminal.
NOISE = ("absl::InitializeLog", "cuda", "cuInit", "oneDNN", "cpu_feature_guard", "I0000", "E0000")


def test_writes_to_descriptor_2_are_captured_and_the_descriptor_restored() -> None:
    with native_stderr_captured() as captured:
        os.write(2, b"native line one\nnative line two\n")
    assert captured == ["native line one", "native line two"]
    read, write = os.pipe()
    saved = os.dup(2)
    try:
        os.dup2(write, 2)
        os.write(2, b"after\n")  # descriptor 2 is whatever it was before, again
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(write)
    assert os.read(read, 100) == b"after\n"
    os.close(read)


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sample_csv(tmp_path_factory.mktemp("data") / "sample.csv", patients=600)


def test_a_training_command_prints_no_tensorflow_start_up_lines(
    small_csv: Path, tmp_path: Path
) -> None:
    command = [str(HEFL), "simulate", "--dataset", str(small_csv), "--hospitals", "3"]
    command += ["--rounds", "1", "--hidden", "4", "--no-baselines", "--out", str(tmp_path / "o")]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HEFL_", "TF_CPP"))}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "encrypted FedAvg (CKKS)" in done.stdout
    noisy = [line for line in done.stderr.splitlines() if any(n in line for n in NOISE)]
    assert noisy == []
