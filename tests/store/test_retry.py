"""Backoff schedule and bounded retries (pure: no sleeping, no network)."""

from __future__ import annotations

import pytest

from common.errors import StoreError
from common.store.gdrive_errors import DriveCallError, Where, explain
from common.store.retry import RetriesExhausted, RetryPolicy, backoff_delay, call_with_retries

POLICY = RetryPolicy(attempts=4, base_delay=1.0, max_delay=6.0)


def test_delays_double_with_jitter_between_half_and_all_of_each_step() -> None:
    for retry, step in enumerate([1.0, 2.0, 4.0, 6.0, 6.0]):  # capped at max_delay
        assert backoff_delay(POLICY, retry, 0.0) == step / 2
        assert backoff_delay(POLICY, retry, 0.999999) == pytest.approx(step, rel=1e-5)


def test_retry_after_lengthens_but_never_beyond_the_cap() -> None:
    assert backoff_delay(POLICY, 0, 0.0, retry_after=3.0) == 3.0
    assert backoff_delay(POLICY, 0, 0.0, retry_after=60.0) == 6.0
    assert backoff_delay(POLICY, 2, 1.0, retry_after=0.5) == 4.0


def test_the_longest_wait_is_every_retrys_full_step() -> None:
    assert POLICY.longest_wait() == 1.0 + 2.0 + 4.0  # 4 attempts: 3 waits
    assert RetryPolicy(attempts=1).longest_wait() == 0.0


def test_transient_errors_are_retried_until_success() -> None:
    outcomes: list[object] = [OSError("reset"), OSError("reset"), "done"]
    sleeps: list[float] = []

    def action() -> object:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    result = call_with_retries(
        action,
        policy=POLICY,
        transient=lambda exc: (isinstance(exc, OSError), None),
        sleep=sleeps.append,
        rand=lambda: 0.0,
    )
    assert result == "done" and sleeps == [0.5, 1.0]


def test_attempts_are_bounded() -> None:
    calls: list[int] = []

    def always_fails() -> None:
        calls.append(1)
        raise OSError("down")

    with pytest.raises(RetriesExhausted) as info:
        call_with_retries(
            always_fails,
            policy=POLICY,
            transient=lambda exc: (True, None),
            sleep=lambda s: None,
            rand=lambda: 0.0,
        )
    assert len(calls) == 4 and info.value.attempts == 4
    assert isinstance(info.value.__cause__, OSError)


def test_a_permanent_error_is_not_retried() -> None:
    calls: list[int] = []

    def fails() -> None:
        calls.append(1)
        raise ValueError("bad request")

    with pytest.raises(ValueError):
        call_with_retries(
            fails,
            policy=POLICY,
            transient=lambda exc: (False, None),
            sleep=lambda s: None,
            rand=lambda: 0.0,
        )
    assert calls == [1]


def test_an_invalid_policy_is_refused() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(base_delay=10.0, max_delay=1.0)


def _error(status: int | None, *reasons: str) -> DriveCallError:
    return DriveCallError(call="files.list", status=status, reasons=frozenset(reasons), detail="d")


def test_messages_name_the_subfolder_and_the_root_it_is_under() -> None:
    where = Where(root_id="ROOT", folder_id="SUB", folder_path="runs/r1")
    message = explain(
        _error(403, "insufficientFilePermissions"),
        op="put",
        key="runs/r1/a",
        where=where,
        account="service account sa@x",
    )
    assert "folder 'runs/r1' (id SUB) under root folder ROOT" in message
    assert "lacks write permission" in message and "share the root folder ROOT" in message
    assert isinstance(_error(None), StoreError)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (_error(401, "authError"), "rejected the credentials"),
        (_error(403, "ACCESS_TOKEN_SCOPE_INSUFFICIENT"), "without the OAuth scope"),
        (_error(403, "storageQuotaExceeded"), "shared drive"),
        (_error(404, "notFound"), "not found, or is not shared with"),
        (_error(None), "gave up, retrying with backoff: Drive files.list failed: connection"),
        (_error(400, "invalid"), "refused get k"),
    ],
)
def test_each_kind_of_failure_gets_its_own_advice(error: DriveCallError, expected: str) -> None:
    where = Where(root_id="ROOT", folder_id="ROOT")
    message = explain(error, op="get", key="k", where=where, account="acct")
    assert expected in message and "ROOT" in message


def test_on_retry_hears_each_retry_with_its_delay_and_a_retry_after_is_honoured() -> None:
    outcomes: list[object] = [OSError("slow down"), OSError("reset"), "done"]
    heard: list[tuple[int, float, str]] = []
    sleeps: list[float] = []

    def action() -> object:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    result = call_with_retries(
        action,
        policy=POLICY,
        transient=lambda exc: (True, 5.0 if "slow" in str(exc) else None),
        sleep=sleeps.append,
        rand=lambda: 0.5,
        on_retry=lambda attempt, delay, exc: heard.append((attempt, delay, str(exc))),
    )
    assert result == "done"
    assert heard == [(1, 5.0, "slow down"), (2, 1.5, "reset")]
    assert sleeps == [5.0, 1.5]


def test_a_single_attempt_policy_gives_up_without_sleeping() -> None:
    sleeps: list[float] = []

    def fails() -> None:
        raise OSError("down")

    with pytest.raises(RetriesExhausted) as info:
        call_with_retries(
            fails,
            policy=RetryPolicy(attempts=1),
            transient=lambda exc: (True, None),
            sleep=sleeps.append,
            rand=lambda: 0.0,
        )
    assert info.value.attempts == 1 and sleeps == []
    assert "gave up after 1 attempts: down" in str(info.value)


def test_an_interrupt_is_never_retried() -> None:
    calls: list[int] = []

    def interrupted() -> None:
        calls.append(1)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        call_with_retries(
            interrupted,
            policy=POLICY,
            transient=lambda exc: (True, None),
            sleep=lambda s: None,
            rand=lambda: 0.0,
        )
    assert calls == [1]
