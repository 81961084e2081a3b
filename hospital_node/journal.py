"""The replies a hospital has published, kept in a private folder so that a restart resends them.

A round's answer names a blob in the store by its SHA-256, and the coordinator keeps that digest
in its state. Encryption is randomized: a restarted hospital that encrypted and uploaded the same
update again would overwrite the accepted blob with other bytes, and a coordinator restarted in
that round could no longer re-add it. So the hospital writes each signed ``UpdateSubmitted`` here
after the upload and before publishing it, and answers a repeated request for the same (run,
round, attempt) with these bytes, without touching the store.

One file per (run, round, attempt), written atomically with mode 0o600; recording an answer
removes the entries of every other run and round (they can no longer be asked for). The journal
checks an entry's signature and fields before it is resent (``submission``).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Final

from common.atomic import write_atomic
from common.errors import HeflError, ProtocolError
from common.protocol.messages import MAX_MESSAGE_BYTES, UpdateSubmitted
from common.protocol.signing import MessageCodec

JOURNAL_DIR: Final = "journal"  # under the hospital's own folder, ``<out>/<hospital>/``
MAX_ENTRY_BYTES: Final = 2 * MAX_MESSAGE_BYTES  # the largest signed envelope a codec decodes
_ENTRY: Final = re.compile(r"^(?P<run>[0-9a-f]{16})-r(?P<round>\d+)-a(?P<attempt>\d+)\.reply$")
_LEFTOVER: Final = re.compile(r"^\..+\.tmp$")  # a temporary file of a write that was killed


class JournalError(HeflError):
    """A journal entry cannot be read or written (the message names the file)."""


def _run_tag(run: str) -> str:
    """A file-name-safe tag of a run id (run ids are free text)."""
    return hashlib.sha256(run.encode()).hexdigest()[:16]


class Journal:
    """Signed replies by (run, round, attempt), as files in ``folder`` (created when needed)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __repr__(self) -> str:
        return f"Journal({str(self.folder)!r})"

    def path(self, run: str, round_: int, attempt: int) -> Path:
        """The file that holds the reply for (``run``, ``round_``, ``attempt``)."""
        return self.folder / f"{_run_tag(run)}-r{round_}-a{attempt}.reply"

    def record(self, run: str, round_: int, attempt: int, reply: bytes) -> None:
        """Keep ``reply`` (atomically, mode 0o600); drop the entries of other runs and rounds."""
        path = self.path(run, round_, attempt)
        try:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_atomic(path, reply, mode=0o600)
        except OSError as exc:
            raise JournalError(f"cannot write the reply journal entry {path}: {exc}") from exc
        self._prune(_run_tag(run), round_)

    def get(self, run: str, round_: int, attempt: int) -> bytes | None:
        """The reply recorded for (``run``, ``round_``, ``attempt``), or None if there is none."""
        path = self.path(run, round_, attempt)
        try:
            with path.open("rb") as handle:
                reply = handle.read(MAX_ENTRY_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise JournalError(f"cannot read the reply journal entry {path}: {exc}") from exc
        if len(reply) > MAX_ENTRY_BYTES:
            raise JournalError(f"the reply journal entry {path} exceeds {MAX_ENTRY_BYTES} bytes")
        return reply

    def submission(self, codec: MessageCodec, run: str, round_: int, attempt: int) -> bytes | None:
        """The reply recorded for this attempt, checked to be the signed ``UpdateSubmitted`` of
        ``codec``'s hospital for exactly it; None if none is recorded, JournalError naming the
        file if the entry is unreadable, damaged or another message."""
        reply = self.get(run, round_, attempt)
        if reply is None:
            return None
        path = self.path(run, round_, attempt)
        try:
            message = codec.decode(reply)
        except ProtocolError as exc:
            raise JournalError(f"the reply journal entry {path} is damaged: {exc}") from exc
        expected = (run, round_, codec.identity.name, attempt)
        if not isinstance(message, UpdateSubmitted) or expected != (
            message.run,
            message.round,
            message.hospital,
            message.attempt,
        ):
            raise JournalError(
                f"the reply journal entry {path} is not the submission of {expected[2]} for "
                f"run {run} round {round_} attempt {attempt}"
            )
        return reply

    def _prune(self, run_tag: str, round_: int) -> None:
        """Remove entries of other runs or rounds, and temporary files of killed writes.

        Best effort: an entry that cannot be removed now is removed by a later round's record,
        and is never mistaken for another round's (its name carries run, round and attempt)."""
        try:
            names = [p.name for p in self.folder.iterdir()]
        except OSError:
            return
        for name in names:
            entry = _ENTRY.match(name)
            current = entry is not None and (entry["run"], int(entry["round"])) == (
                run_tag,
                round_,
            )
            if current or (entry is None and not _LEFTOVER.match(name)):
                continue  # this round's entries, and files that are not the journal's
            try:
                (self.folder / name).unlink(missing_ok=True)
            except OSError:
                continue
