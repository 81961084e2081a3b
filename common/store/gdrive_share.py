"""Per-site folders of a run on Google Drive: who may read and write what.

The coordinator's account owns the store's root and everything in it. For each run it makes
``runs/<run>/updates/<hospital>`` for every hospital and ``runs/<run>/aggregates``, and shares
each hospital's account as **writer** on its own updates folder and **reader** on the aggregates
folder, nothing else. Drive permissions are inherited downwards, so the root, ``runs`` and
``runs/<run>`` stay unshared: a hospital cannot walk to another site's folder, and one given its
ID gets "File not found". A hospital therefore opens its store with the two folders' IDs
(:meth:`RunFolders.for_hospital`), which the coordinator's operator hands to its site.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from common.errors import ConfigError
from common.protocol.layout import aggregates_prefix, updates_prefix
from common.store.gdrive import DriveStore

WRITER = "writer"
READER = "reader"


@dataclass(frozen=True, kw_only=True)
class RunFolders:
    """The Drive folder IDs of one run: the aggregates folder and each hospital's updates."""

    run: str
    aggregates: str
    updates: Mapping[str, str] = field(default_factory=dict)

    def for_hospital(self, hospital: str) -> dict[str, str]:
        """Key prefix -> folder ID for ``open_drive_store(..., folders=...)`` at ``hospital``."""
        if hospital not in self.updates:
            raise ConfigError(f"run {self.run} has no updates folder for {hospital!r}")
        return {
            updates_prefix(self.run, hospital): self.updates[hospital],
            aggregates_prefix(self.run): self.aggregates,
        }


def site_store_url(root_id: str, folders: Mapping[str, str]) -> str:
    """The store URL a site opens (it adds its own ``credentials=``)."""
    listed = ",".join(f"{prefix}:{folder}" for prefix, folder in sorted(folders.items()))
    return f"gdrive://{root_id}?folders={listed}"


def share_run_folders(store: DriveStore, run: str, accounts: Mapping[str, str]) -> RunFolders:
    """Make the run's folders and share them: each hospital (``accounts``: hospital -> Google
    account email) writes its own updates folder and reads the aggregates folder.

    Run with the coordinator's store, whose account must be allowed to share (Editor in My
    Drive, Manager on a shared drive). Sharing again is harmless: Drive keeps one permission
    per account and role.
    """
    emails = list(accounts.values())
    if not emails:
        raise ConfigError(f"run {run}: no hospital accounts to share its folders with")
    if len(set(emails)) != len(emails):
        raise ConfigError(
            "each hospital needs its own Google account: one account shared by two sites could "
            "read both sites' updates"
        )
    updates = {
        hospital: store.share_folder(updates_prefix(run, hospital), email, WRITER)
        for hospital, email in sorted(accounts.items())
    }
    shared = [store.share_folder(aggregates_prefix(run), email, READER) for email in emails]
    return RunFolders(run=run, aggregates=shared[0], updates=updates)
