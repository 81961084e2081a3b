"""What went wrong in a Google Drive call, said so that a site administrator can fix it.

``DriveCallError`` is what the Drive client raises for one failed call (HTTP status, Google's
reason codes, attempts made). The store adds where it was working (the operation, the key, the
folder) and :func:`explain` turns both into one message that names the folder and the missing
permission or scope. Pure functions: no network, no Google libraries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from common.errors import StoreError

Op = Literal["open", "put", "get", "exists", "list", "delete", "share"]

# Full Drive access: a folder shared with the account is invisible under the narrower
# ``drive.file`` scope, which only sees files the app itself created.
DRIVE_SCOPE: Final = "https://www.googleapis.com/auth/drive"
SCOPE_REASONS: Final = frozenset({"insufficientPermissions", "ACCESS_TOKEN_SCOPE_INSUFFICIENT"})
QUOTA_REASONS: Final = frozenset({"storageQuotaExceeded", "quotaExceeded"})
RATE_LIMIT_REASONS: Final = frozenset({"rateLimitExceeded", "userRateLimitExceeded"})

# The role the account needs on the root folder, by operation (Drive's UI name, API name).
_ROLE: Final[dict[str, str]] = {
    "open": "Viewer (reader) to read, Content manager or Editor (writer) to write",
    "get": "Viewer (reader)",
    "exists": "Viewer (reader)",
    "list": "Viewer (reader)",
    "put": "Content manager (fileOrganizer) on a shared drive, or Editor (writer)",
    "delete": "Content manager (fileOrganizer) or Manager on a shared drive, or the file's owner",
    "share": "Manager (organizer) on a shared drive, or Editor (writer) in My Drive",
}
_ACCESS: Final[dict[str, str]] = {
    "open": "read",
    "get": "read",
    "exists": "read",
    "list": "read",
    "put": "write",
    "delete": "delete",
    "share": "share",
}


class DriveCallError(StoreError):
    """One Drive API call failed for good (permanent error, or transient ones until give-up)."""

    def __init__(
        self,
        *,
        call: str,
        status: int | None,
        reasons: frozenset[str],
        detail: str,
        attempts: int = 1,
    ) -> None:
        self.call = call
        self.status = status
        self.reasons = reasons
        self.detail = detail
        self.attempts = attempts
        code = "connection error" if status is None else f"HTTP {status}"
        tried = f" after {attempts} attempts" if attempts > 1 else ""
        why = f" [{', '.join(sorted(reasons))}]" if reasons else ""
        super().__init__(f"Drive {call} failed{tried}: {code}{why}: {detail}")


@dataclass(kw_only=True)
class Where:
    """The folder a store operation was working in when a call failed (updated as it walks)."""

    root_id: str
    folder_id: str
    folder_path: str = ""
    site_folders: tuple[str, ...] = ()  # a per-site store: the only folders shared with it

    def describe(self) -> str:
        if self.folder_id == self.root_id:
            return f"root folder {self.root_id}"
        return f"folder {self.folder_path!r} (id {self.folder_id}) under root folder {self.root_id}"


def explain(error: DriveCallError, *, op: Op, key: str | None, where: Where, account: str) -> str:
    """One line: what failed, where, and what to change (permission, scope, sharing, retry)."""
    what = f"{op} {key}" if key else op
    folder = where.describe()
    status, reasons = error.status, error.reasons
    if status == 401:
        return (
            f"Google Drive rejected the credentials of {account} during {what} in {folder}: the "
            f"access token is invalid or expired and could not be refreshed ({error.detail}); "
            "check the credentials file, or create a new key / token for the account"
        )
    if status == 403 and reasons & SCOPE_REASONS:
        return (
            f"{account} has a token without the OAuth scope {DRIVE_SCOPE} needed to "
            f"{_ACCESS[op]} {folder} ({what}); create the token with that scope"
        )
    if status == 403 and reasons & QUOTA_REASONS:
        return (
            f"Google Drive refused to store a file for {account} in {folder} ({what}): "
            f"{error.detail}. Service accounts cannot own files in a My Drive folder: put the root "
            "folder in a shared drive and add the service account as Content manager, or use an "
            "OAuth user token"
        )
    if where.site_folders and (
        status == 404 or (status == 403 and not reasons & RATE_LIMIT_REASONS)
    ):
        return (
            f"{account} cannot {what}: no {_ACCESS[op]} access to {folder}; this store reaches "
            f"only the folders shared with its site ({', '.join(where.site_folders)}); a site "
            "writes its own updates folder and reads the aggregates, other sites' folders are "
            f"never shared with it ({error})"
        )
    if status == 403 and not reasons & RATE_LIMIT_REASONS:
        return (
            f"{account} lacks {_ACCESS[op]} permission on {folder} ({what}): share the root "
            f"folder {where.root_id} with {account} as {_ROLE[op]} ({error.detail})"
        )
    if status == 404:
        return (
            f"Google Drive {folder} was not found, or is not shared with {account} ({what}): check "
            f"the folder ID in the store URL and share the folder with that account as {_ROLE[op]}"
        )
    if status is None or status == 429 or status >= 500 or reasons & RATE_LIMIT_REASONS:
        return f"Google Drive {what} in {folder} gave up, retrying with backoff: {error}"
    return f"Google Drive refused {what} in {folder}: {error}"
