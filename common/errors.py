"""One exception tree for the whole project.

Every error carries an exit code; the command line turns errors into a one-line message and that
code at the edge (``hefl.cli``). Foreign exceptions (Pyfhel, pandas, Keras, OS) are translated into
these where they enter our code, with ``raise OurError(...) from exc``.
"""

from __future__ import annotations


class HeflError(Exception):
    """Base of every error this project raises on purpose."""

    exit_code = 1


class ConfigError(HeflError):
    """A setting, flag or configuration file is invalid."""

    exit_code = 2


class DataError(HeflError):
    """A dataset or schema file cannot be used.

    ``file``, ``row`` (1-based line number in the CSV, header is line 1) and ``column`` name the
    offending place whenever it is known, so a hospital's data team can find it.
    """

    exit_code = 3

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        row: int | None = None,
        column: str | None = None,
    ) -> None:
        self.file = file
        self.row = row
        self.column = column
        where = [
            part
            for part in (
                f"file {file}" if file is not None else None,
                f"row {row}" if row is not None else None,
                f"column {column!r}" if column is not None else None,
            )
            if part is not None
        ]
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class SchemaError(DataError):
    """A dataset schema file is malformed."""


class BundleError(DataError):
    """A model bundle is missing, incomplete, changed after it was written, or inconsistent
    (its schema does not give the feature layout its model was trained on)."""


class CryptoError(HeflError):
    """Homomorphic-encryption material or a ciphertext cannot be used."""

    exit_code = 4


class KeyBundleError(CryptoError):
    """A key bundle is missing, malformed, or holds keys its role must not hold."""


class BlobError(CryptoError):
    """A ciphertext blob is truncated, foreign, of another format version, or corrupted."""


class ValueRangeError(CryptoError):
    """A value cannot be encoded without overflow or loss (never wrapped silently)."""


class ProtocolError(HeflError):
    """A message is malformed, out of place, or not for this run."""

    exit_code = 5


class StoreError(HeflError):
    """The shared store cannot read or write a blob."""

    exit_code = 6


class StoreFullError(StoreError):
    """The store's disk, or the writer's quota, is full (ENOSPC, EDQUOT).

    The write left nothing behind (a blob already at the key keeps its old bytes) and succeeds
    when repeated once space is freed, so long-running processes wait for it
    (``common.store.space``) rather than fail.
    """


class BlobNotFoundError(StoreError):
    """The shared store has no blob under the requested key."""


class BlobTooLargeError(StoreError):
    """A stored blob is larger than the reader's limit; refused before its bytes are read."""


class TransportError(HeflError):
    """The message transport cannot deliver or receive."""

    exit_code = 7


class TrainingError(HeflError):
    """Local training or evaluation failed at a hospital."""

    exit_code = 8
