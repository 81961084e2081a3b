"""Progress bars on a terminal, plain lines elsewhere: ``common.progress``, the hospital's
bars, the trainer's epoch callback and ``hefl simulate`` in a real pseudo-terminal."""

from __future__ import annotations

import fcntl
import io
import math
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import numpy as np
import pytest

from common.model import ModelConfig, initial_weights
from common.progress import LineProgress, NullProgress, TerminalProgress, progress_for
from hefl.cli.local import RoundBars
from hefl.reporting import progress_line
from hospital_node.progress import ProgressBars, hospital_progress
from hospital_node.trainer import keras_trainer_with
from testkit.cluster import sample_csv

HEFL = Path(sys.executable).parent / "hefl"
#: A finished tqdm bar of two steps: "round: 100%|#####| 2/2 [...]".
FULL_BAR = re.compile(r"round: 100%\|[^|\r\n]*\| 2/2 \[")


@pytest.fixture
def terminal() -> Iterator[tuple[TextIO, int]]:
    """A pseudo-terminal: the stream written to (its slave side) and the master to read."""
    master, slave = os.openpty()
    stream = os.fdopen(slave, "w", encoding="utf-8")
    yield stream, master
    stream.close()
    os.close(master)


def read_all(master: int) -> str:
    chunks = []
    while select.select([master], [], [], 0.2)[0]:
        chunks.append(os.read(master, 65536))
    return b"".join(chunks).decode("utf-8", errors="replace")


def test_a_non_terminal_gets_one_plain_line_per_step_and_no_carriage_return() -> None:
    stream = io.StringIO()
    progress = progress_for(stream)
    rounds = progress.bar("round", 3)
    epochs = progress.bar("local epoch", 2, inner=True)
    epochs.update(1, {"loss": 0.5})
    rounds.update(1, {"auc": 0.61, "loss": 0.7})
    rounds.update(1)  # no step done: no line
    epochs.restart(2)
    rounds.update(3)
    rounds.close()
    assert isinstance(progress, LineProgress)
    assert stream.getvalue() == "round 1/3  auc 0.6100  loss 0.7000\nround 3/3\n"


def test_a_terminal_gets_tqdm_bars_redrawn_in_place(terminal: tuple[TextIO, int]) -> None:
    stream, master = terminal
    progress = progress_for(stream)
    rounds = progress.bar("round", 2)
    epochs = progress.bar("local epoch", 4, inner=True)
    epochs.update(4, {"loss": 0.25})
    epochs.close()
    rounds.update(2, {"auc": 0.5})
    rounds.close()
    stream.flush()
    shown = read_all(master)
    assert isinstance(progress, TerminalProgress)
    assert "\r" in shown
    assert "local epoch:" in shown
    assert FULL_BAR.search(shown), shown
    assert "auc=0.5000" in shown


def test_a_disabled_or_missing_stream_shows_nothing_but_still_writes_lines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    stream = io.StringIO()
    for progress in (progress_for(stream, enabled=False), progress_for(None)):
        assert isinstance(progress, NullProgress)
        bar = progress.bar("round", 2)
        bar.update(2, {"auc": 0.5})
        bar.close()
        progress.write("a line", sys.stdout)
    assert stream.getvalue() == ""
    assert capsys.readouterr().out == "a line\na line\n"


def test_hospital_bars_count_uploaded_rounds_from_the_first_one_answered() -> None:
    stream = io.StringIO()
    bars = ProgressBars(LineProgress(stream), rounds=5)
    bars.round_started(3)  # joined late
    bars.on_epoch(0, 2, 0.7)
    bars.on_epoch(1, 2, 0.6)  # epochs print nothing as plain lines
    bars.phase_done("training", 1.0)
    bars.round_done(3)
    bars.round_started(4)
    bars.round_done(4)
    bars.round_done(4)  # a masked round reported twice still prints once
    assert stream.getvalue() == "round 3/5\nround 4/5\n"


def test_hospital_progress_prints_round_lines_to_a_non_terminal() -> None:
    stream = io.StringIO()
    with hospital_progress(rounds=2, stream=stream) as (observer, _):
        observer.round_started(1)
        observer.round_done(1)
        observer.round_done(2)
    assert stream.getvalue() == "round 1/2\nround 2/2\n"


def test_hospital_progress_trainer_draws_the_epochs_bar_on_a_terminal(
    terminal: tuple[TextIO, int],
) -> None:
    stream, master = terminal
    config = ModelConfig(hidden_units=(), local_epochs=2)
    x = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    with hospital_progress(rounds=2, stream=stream) as (observer, trainer_for):
        observer.round_started(1)
        trainer_for(config, 4).fit(initial_weights(config, 4, 1), x, x[:, 0] > 0, seed=1)
        observer.round_done(1)
        observer.round_done(2)
    stream.flush()
    shown = read_all(master)
    assert "local epoch:" in shown
    assert FULL_BAR.search(shown), shown


def test_simulate_round_lines_become_one_bar_with_auc_and_loss(
    terminal: tuple[TextIO, int], capsys: pytest.CaptureFixture[str]
) -> None:
    stream, master = terminal
    bars = RoundBars(TerminalProgress(stream), rounds=2)
    bars("encrypted FedAvg (CKKS):")
    for round_ in (1, 2):
        metrics = {"auc": 0.6 + round_ / 100, "loss": 0.5}
        line = progress_line(
            round_=round_,
            rounds=2,
            contributed=3,
            hospitals=3,
            metrics=metrics,
            seconds=1.0,
            uploaded=1000,
        )
        bars(line)
    bars("done")
    bars.close()
    stream.flush()
    shown = read_all(master)
    assert capsys.readouterr().out == "encrypted FedAvg (CKKS):\ndone\n"
    assert FULL_BAR.search(shown), shown
    assert "auc=0.6200, loss=0.5000" in shown


def test_the_epoch_callback_sees_every_epoch_and_changes_no_weight() -> None:
    config = ModelConfig(hidden_units=(8,), local_epochs=3)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32)
    start = initial_weights(config, 6, seed=2)
    seen: list[tuple[int, int, float]] = []
    watched = keras_trainer_with(on_epoch=lambda *epoch: seen.append(epoch))(config, 6)
    plain = keras_trainer_with()(config, 6)
    with_callback = watched.fit(start, x, y, seed=7)
    without = plain.fit(start, x, y, seed=7)
    assert [(epoch, epochs) for epoch, epochs, _ in seen] == [(0, 3), (1, 3), (2, 3)]
    assert all(math.isfinite(loss) for _, _, loss in seen)
    assert seen[-1][2] == with_callback.loss
    assert with_callback.weights.tobytes() == without.weights.tobytes()
    assert with_callback.loss == without.loss


@pytest.fixture(scope="module")
def simulate_command(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    folder = tmp_path_factory.mktemp("progress")
    csv = sample_csv(folder / "sample.csv", patients=600)
    command = [str(HEFL), "simulate", "--dataset", str(csv), "--hospitals", "3", "--rounds", "2"]
    return [*command, "--hidden", "8", "--local-epochs", "1", "--no-baselines", "--out"]


def quiet_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("HEFL_", "TF_CPP"))}


def run_in_terminal(command: list[str], timeout: float = 300) -> tuple[int, str]:
    """Run ``command`` with stdin, stdout and stderr on a fresh 24x120 pseudo-terminal."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    process = subprocess.Popen(command, stdin=slave, stdout=slave, stderr=slave, env=quiet_env())
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 1.0)[0]:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the last writer closed the terminal
                    break
                if not chunk:
                    break
                chunks.append(chunk)
        code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        process.kill()
        os.close(master)
    return code, b"".join(chunks).decode("utf-8", errors="replace")


def test_simulate_on_a_terminal_draws_a_rounds_bar_to_the_end(
    simulate_command: list[str], tmp_path: Path
) -> None:
    code, shown = run_in_terminal([*simulate_command, str(tmp_path / "out")])
    assert code == 0, shown[-3000:]
    assert "encrypted FedAvg (CKKS):" in shown
    assert FULL_BAR.search(shown), shown[-3000:]
    assert re.search(r"round\s+1/2\s+hospitals", shown) is None  # the bar replaces the lines


def test_simulate_into_a_pipe_prints_todays_round_lines_and_no_bar(
    simulate_command: list[str], tmp_path: Path
) -> None:
    done = subprocess.run(
        [*simulate_command, str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=quiet_env(),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rounds = [line for line in done.stdout.splitlines() if line.strip().startswith("round ")]
    assert [line.split()[1] for line in rounds] == ["1/2", "2/2"]
    assert all("hospitals 3/3" in line for line in rounds)
    assert "\r" not in done.stdout + done.stderr
    assert "%|" not in done.stdout + done.stderr
