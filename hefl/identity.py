"""Which hospital a container is: named, from its StatefulSet pod ordinal, or claimed.

The compose cluster and the Kubernetes manifests name every site (``HEFL_HOSPITAL``), since each
site receives only its own key share (``hefl.sites``). Replicas of one scaled service that share
one key folder would start alike, so each would have to find its own identity:

- ``--hospital NAME`` names it;
- ``--identity ordinal``: a StatefulSet pod ``name-K`` is ``hospital-(K+1)``;
- ``--identity claim``: the first free ``<claims>/hospital-K`` among the identities the ceremony
  issued, taken by an atomic ``mkdir`` in a folder every replica shares. A claim records its
  owner (the container's host name) and a heartbeat that the hospital process refreshes while it
  runs: a restarted container finds and keeps its claim, and a claim whose heartbeat is older
  than the TTL (its container is gone) is taken over.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Final

from common.errors import ConfigError
from common.logs import log_event

logger = logging.getLogger("hefl.identity")

CLAIM: Final = "claim"
ORDINAL: Final = "ordinal"
MODES: Final = (CLAIM, ORDINAL)
OWNER: Final = "owner"
HEARTBEAT: Final = "heartbeat"
#: Heartbeats per TTL: a claim survives a few missed beats (a paused or busy container).
BEATS_PER_TTL: Final = 6


class IdentityError(ConfigError):
    """No hospital identity is free, or none can be derived (more replicas than identities)."""


def this_host(environ: Mapping[str, str] = os.environ) -> str:
    """The container's host name: ``$HOSTNAME`` (Docker and Kubernetes set it), else the OS's."""
    return environ.get("HOSTNAME") or socket.gethostname()


def ordinal_identity(hostname: str) -> str:
    """``hefl-hospital-0`` -> ``hospital-1``: the pod ordinal of a StatefulSet, plus one."""
    _, dash, ordinal = hostname.rpartition("-")
    if not dash or not ordinal.isdigit():
        raise IdentityError(
            f"host name {hostname!r} carries no StatefulSet ordinal (name-K); "
            "--identity ordinal works in a StatefulSet pod only"
        )
    return f"hospital-{int(ordinal) + 1}"


class ClaimBoard:
    """Identity claims in a folder shared by every replica (a volume).

    ``clock`` gives the current time in seconds since the epoch, as file times do.
    """

    def __init__(
        self, folder: Path, *, owner: str, ttl: float, clock: Callable[[], float] = time.time
    ) -> None:
        if ttl <= 0:
            raise ConfigError(f"the claim TTL must be > 0 seconds, got {ttl}")
        self.folder = folder
        self.owner = owner
        self.ttl = ttl
        self._clock = clock

    def claim(self, names: Sequence[str]) -> str:
        """This owner's claim among ``names`` if it holds one, else the first free or stale one."""
        if not names:
            raise IdentityError("the ceremony issued no hospital identities")
        self.folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            if self.owner_of(name) == self.owner:
                self.beat(name)
                log_event(logger, "identity_kept", hospital=name, owner=self.owner)
                return name
        for name in names:
            if self._take(name):
                return name
        raise IdentityError(
            f"all {len(names)} hospital identities are claimed in {self.folder} "
            f"({names[0]}..{names[-1]}): more replicas than identities; issue more with "
            "--hospitals N (a new cluster), or scale down"
        )

    def owner_of(self, name: str) -> str | None:
        return _read_owner(self.folder / name)

    def beat(self, name: str) -> None:
        """Refresh ``name``'s heartbeat (its file time is the clock's now)."""
        path = self.folder / name / HEARTBEAT
        path.touch()
        now = self._clock()
        os.utime(path, (now, now))

    def is_stale(self, name: str) -> bool:
        """No sign of life (heartbeat, owner or the claim itself) within the TTL."""
        return self._stale(self.folder / name)

    def _stale(self, folder: Path) -> bool:
        times = []
        for path in (folder / HEARTBEAT, folder / OWNER, folder):
            with contextlib.suppress(OSError):
                times.append(path.stat().st_mtime)
        return bool(times) and max(times) < self._clock() - self.ttl

    def _take(self, name: str) -> bool:
        folder = self.folder / name
        while True:
            try:
                folder.mkdir()
            except FileExistsError:
                if not self.is_stale(name) or not self._clear_stale(name):
                    return False
                continue  # the stale claim is gone: race the others for a fresh mkdir
            try:
                owner = folder / f".{OWNER}.{uuid.uuid4().hex}"
                owner.write_text(self.owner + "\n")
                owner.replace(folder / OWNER)
                self.beat(name)
            except FileNotFoundError:
                continue  # taken for stale by another replica in that instant: race again
            log_event(logger, "identity_claimed", hospital=name, owner=self.owner)
            return True

    def _clear_stale(self, name: str) -> bool:
        """Move a stale claim aside (one rename: only one replica wins it) and delete it.

        Should another replica have replaced the stale claim by a fresh one in between, the
        fresh one is put back and False returned.
        """
        folder = self.folder / name
        seen = self.owner_of(name)
        tomb = self.folder / f".stale-{name}-{uuid.uuid4().hex}"
        try:
            folder.rename(tomb)
        except OSError:
            return True  # another replica moved it first: race for the mkdir
        if not self._stale(tomb):
            with contextlib.suppress(OSError):
                tomb.rename(folder)
            return False
        log_event(logger, "identity_taken_over", hospital=name, stale_owner=seen, owner=self.owner)
        shutil.rmtree(tomb, ignore_errors=True)
        return True


def _read_owner(folder: Path) -> str | None:
    try:
        return (folder / OWNER).read_text().strip() or None
    except OSError:
        return None


class Heartbeat:
    """Refreshes a claim's heartbeat from a daemon thread until the block ends."""

    def __init__(self, board: ClaimBoard, name: str, *, interval: float) -> None:
        self.board = board
        self.name = name
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{name}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.board.beat(self.name)
            except OSError as exc:  # the claims volume went away: keep running, say so
                log_event(
                    logger, "heartbeat_failed", level=logging.WARNING, hospital=self.name, error=exc
                )


@contextlib.contextmanager
def hospital_identity(
    *,
    hospital: str | None,
    mode: str | None,
    claims: Path | None,
    claim_ttl: float,
    issued: Callable[[], Sequence[str]],
    hostname: str,
) -> Iterator[str]:
    """The identity this hospital process runs as, held (heartbeat) while the block runs.

    ``issued`` lists the hospital identities of the key ceremony (read only when claiming).
    """
    if hospital:
        yield hospital
        return
    if mode == ORDINAL:
        yield ordinal_identity(hostname)
        return
    if mode != CLAIM:
        raise ConfigError(
            "name the hospital: --hospital NAME ($HEFL_HOSPITAL), or in a container "
            "--identity claim|ordinal ($HEFL_IDENTITY)"
        )
    if claims is None:
        raise ConfigError("--identity claim needs the shared claims folder: --claims DIR")
    board = ClaimBoard(claims, owner=hostname, ttl=claim_ttl)
    name = board.claim(list(issued()))
    with Heartbeat(board, name, interval=claim_ttl / BEATS_PER_TTL):
        yield name
