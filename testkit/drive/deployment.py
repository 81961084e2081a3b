"""A whole deployment on the fake Drive: one Google account and one store URL per participant.

As an operator sets it up (docs/drive.md, "Per-site folders"): the coordinator's service account
manages a shared-drive folder, the store's root; ``hefl drive-share``'s logic makes the run's
folders with the coordinator's store and shares each hospital's updates folder (writer) and the
aggregates folder (reader) with that hospital's own service account; each site then adds its
``credentials=`` to the URL it was handed. Here the URLs also carry ``endpoint=`` (the fake's
address), so ``hefl`` processes started by a test reach the fake running in the test's process.
Keys are generated at test time; the coordinator's state stays in its local state folder.
``drive_deployment`` does the same on a fake Drive of its own, for a harness that outlives a test.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from common.errors import ConfigError
from common.protocol.signing import COORDINATOR
from common.store.gdrive import DriveStore
from common.store.gdrive_share import share_run_folders, site_store_url
from common.store.url import open_store
from testkit.drive.helpers import new_root, service_account_file
from testkit.drive.server import FakeDrive


@dataclass(frozen=True, kw_only=True)
class DriveSites:
    """The store root, and per identity (``coordinator``, ``hospital-N``) its account and URL."""

    root: str
    accounts: Mapping[str, str]
    urls: Mapping[str, str]


def account_email(identity: str) -> str:
    """The service account of one participant (each site has its own)."""
    return f"{identity}@hefl-test.iam.gserviceaccount.com"


def with_access(url: str, credentials: Path, endpoint: str) -> str:
    """``url`` with the site's own credentials file and the API endpoint added."""
    extra = urlencode({"credentials": str(credentials), "endpoint": endpoint}, safe="/:")
    return f"{url}{'&' if '?' in url else '?'}{extra}"


def drive_sites(
    drive: FakeDrive, directory: Path, *, run: str, hospitals: Sequence[str]
) -> DriveSites:
    """Accounts, credential files (in ``directory``), a shared root and the run's shared
    folders on ``drive``; the coordinator's URL names the root, each hospital's its two folders.
    """
    if not hospitals or COORDINATOR in hospitals or len(set(hospitals)) != len(hospitals):
        raise ValueError(f"hospitals must be distinct site names, got {list(hospitals)}")
    directory.mkdir(parents=True, exist_ok=True)
    identities = (COORDINATOR, *hospitals)
    accounts = {identity: account_email(identity) for identity in identities}
    keys = {
        identity: service_account_file(
            drive, directory, accounts[identity], name=f"{identity}.json"
        )
        for identity in identities
    }
    root = new_root(drive, {accounts[COORDINATOR]: "organizer"}, name=f"hefl-{run}")
    urls = {COORDINATOR: with_access(f"gdrive://{root}", keys[COORDINATOR], drive.url)}
    store = open_store(urls[COORDINATOR])
    if not isinstance(store, DriveStore):  # pragma: no cover - a gdrive:// URL opens one
        raise ConfigError(f"{urls[COORDINATOR]} did not open a Drive store")
    folders = share_run_folders(store, run, {name: accounts[name] for name in hospitals})
    for name in hospitals:
        urls[name] = with_access(
            site_store_url(root, folders.for_hospital(name)), keys[name], drive.url
        )
    return DriveSites(root=root, accounts=accounts, urls=urls)


@contextmanager
def drive_deployment(
    directory: Path, *, run: str, hospitals: Sequence[str]
) -> Iterator[tuple[FakeDrive, dict[str, str]]]:
    """A fake Drive of its own, set up by :func:`drive_sites`: the fake (to inject faults into)
    and the store URL of each identity; the fake is stopped on exit."""
    drive = FakeDrive().start()
    try:
        yield drive, dict(drive_sites(drive, directory, run=run, hospitals=hospitals).urls)
    finally:
        drive.stop()
