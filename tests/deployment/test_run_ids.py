"""Run ids: a coordinator without ``--run`` resumes its one unfinished run, or starts a random one.

Keys persist across runs, so a fixed default name would make an earlier run's signed messages
valid in the next; a random id makes them ``other-run``.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from common.errors import ConfigError
from common.protocol import layout
from common.protocol.runconfig import new_run_id
from common.protocol.signing import MessageCodec, generate_identities
from common.store import LocalStore
from coordinator import state as sm
from hefl.deploy import resume_or_new_run

IDENTITIES, TRUST = generate_identities(["h1", "h2", "h3"])
CODEC = MessageCodec(IDENTITIES["coordinator"], TRUST)
RANDOM_ID = re.compile(r"run-\d{8}-\d{6}-[0-9a-f]{6}")


def keep_state(store: LocalStore, run: str, phase: sm.Phase, codec: MessageCodec = CODEC) -> None:
    plan = sm.RunPlan(
        run=run,
        rounds=2,
        hospitals=("h1", "h2", "h3"),
        min_hospitals=3,
        round_timeout=60.0,
        final_timeout=60.0,
        config_digest="cfg",
        value_count=10,
    )
    state = replace(sm.new_run(plan, 1000.0), phase=phase)
    store.put(layout.state_key(run), codec.seal_state(sm.to_json(state)))


def test_new_run_ids_are_random_and_name_their_start() -> None:
    ids = {new_run_id(0.0) for _ in range(50)}
    assert len(ids) == 50
    assert all(RANDOM_ID.fullmatch(run) for run in ids)
    assert all(run.startswith("run-19700101-000000-") for run in ids)


def test_an_empty_state_folder_starts_a_new_random_run(tmp_path: Path) -> None:
    first = resume_or_new_run(LocalStore(tmp_path), CODEC)
    second = resume_or_new_run(LocalStore(tmp_path), CODEC)
    assert RANDOM_ID.fullmatch(first) and first != second


def test_the_one_unfinished_run_is_resumed_and_finished_ones_are_not(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    keep_state(store, "run-old", "done")
    keep_state(store, "run-failed", "failed")
    keep_state(store, "run-live", "round")
    assert resume_or_new_run(store, CODEC) == "run-live"


def test_two_unfinished_runs_ask_for_run(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    keep_state(store, "run-a", "round")
    keep_state(store, "run-b", "final")
    with pytest.raises(ConfigError, match=r"2 unfinished runs .*run-a, run-b.*pass --run"):
        resume_or_new_run(store, CODEC)


def test_a_state_this_coordinator_did_not_sign_is_not_resumed(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    keep_state(store, "run-planted", "round", codec=MessageCodec(IDENTITIES["h1"], TRUST))
    assert RANDOM_ID.fullmatch(resume_or_new_run(store, CODEC))
