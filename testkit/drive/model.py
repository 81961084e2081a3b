"""The fake Drive's state: files, folders, sharing, and what each account may do.

Plain data and rules, no HTTP. The rules follow Drive's documentation: each access token
belongs to one account (``oauth``), and an account sees an item only through a role on it or on
a folder above it (owner, or a permission; permissions are inherited downwards and cannot be
taken away below). An item the account cannot see is "File not found" (404); writing where it
may only read is ``insufficientFilePermissions`` (403); creating needs writer on the parent;
sharing (``permissions.create``) needs writer, or Content manager for a folder in a shared
drive; in a shared drive, trashing needs Content manager (fileOrganizer) and deleting needs
Manager (organizer); in My Drive only the owner trashes or deletes, and a service account cannot
own files at all (storageQuotaExceeded).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

FOLDER_MIME = "application/vnd.google-apps.folder"
ROLES = {"reader": 1, "commenter": 2, "writer": 3, "fileOrganizer": 4, "organizer": 5, "owner": 6}

# Fields the fake implements, for ``fields`` validation (None: a leaf, dict: nested).
CAPABILITIES = {
    name: None
    for name in ("canAddChildren", "canDelete", "canTrash", "canListChildren", "canDownload")
}
FILE_SCHEMA: dict[str, Any] = {
    **{
        name: None
        for name in (
            "kind",
            "id",
            "name",
            "mimeType",
            "parents",
            "createdTime",
            "modifiedTime",
            "trashed",
            "appProperties",
            "size",
            "md5Checksum",
            "driveId",
            "ownedByMe",
        )
    },
    "capabilities": CAPABILITIES,
}
LIST_SCHEMA: dict[str, Any] = {
    "kind": None,
    "nextPageToken": None,
    "incompleteSearch": None,
    "files": FILE_SCHEMA,
}
PERMISSION_SCHEMA: dict[str, Any] = {
    name: None for name in ("kind", "id", "type", "role", "emailAddress")
}
PERMISSION_DEFAULT: dict[str, Any] = {"kind": None, "id": None, "type": None, "role": None}
WRITABLE_ON_CREATE = {"name", "parents", "mimeType", "appProperties", "description"}
WRITABLE_ON_UPDATE = {"name", "mimeType", "appProperties", "description", "trashed"}


class ApiError(Exception):
    """An error answer in Drive's JSON shape."""

    def __init__(
        self,
        status: int,
        reason: str,
        message: str,
        *,
        domain: str = "global",
        location: str | None = None,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.headers = headers or {}
        item: dict[str, Any] = {"domain": domain, "reason": reason, "message": message}
        if location is not None:
            item.update(location=location, locationType="parameter")
        self.body: dict[str, Any] = {
            "error": {"code": status, "message": message, "errors": [item]}
        }
        if details:
            self.body["error"]["details"] = details


def not_found(file_id: str) -> ApiError:
    return ApiError(404, "notFound", f"File not found: {file_id}.", location="fileId")


def forbidden(file_id: str) -> ApiError:
    return ApiError(
        403,
        "insufficientFilePermissions",
        f"The user does not have sufficient permissions for file {file_id}.",
    )


def invalid(message: str, location: str) -> ApiError:
    return ApiError(400, "invalid", message, location=location)


@dataclass(kw_only=True)
class FakeFile:
    id: str
    name: str
    mime_type: str
    parents: list[str]
    created: datetime
    content: bytes | None = None
    app_properties: dict[str, str] = field(default_factory=dict)
    trashed: bool = False
    owner: str | None = None
    shared_drive: bool = False
    shares: dict[str, str] = field(default_factory=dict)

    @property
    def is_folder(self) -> bool:
        return self.mime_type == FOLDER_MIME


def new_id() -> str:
    return "1" + secrets.token_urlsafe(24)[:32]


def rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class Clock:
    """Strictly increasing millisecond timestamps, as Drive's createdTime has."""

    def __init__(self) -> None:
        self._last = datetime(2000, 1, 1, tzinfo=UTC)

    def now(self) -> datetime:
        moment = datetime.now(UTC)
        moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
        self._last = max(moment, self._last + timedelta(milliseconds=1))
        return self._last


class Files:
    """Every item, with the permission rules; callers hold the server lock."""

    def __init__(self) -> None:
        self.items: dict[str, FakeFile] = {}
        self.clock = Clock()
        self.service_accounts: set[str] = set()

    def role(self, email: str, item: FakeFile) -> int:
        best = 0
        node: FakeFile | None = item
        while node is not None:
            if not node.shared_drive and node.owner == email:
                best = max(best, ROLES["owner"])
            best = max(best, ROLES.get(node.shares.get(email, ""), 0))
            node = self.items.get(node.parents[0]) if node.parents else None
        return best

    def visible(self, email: str, file_id: str) -> FakeFile:
        item = self.items.get(file_id)
        if item is None or self.role(email, item) == 0:
            raise not_found(file_id)
        return item

    def add(
        self,
        *,
        name: str,
        mime_type: str,
        parent: str | None,
        owner: str | None,
        content: bytes | None = None,
        app_properties: dict[str, str] | None = None,
        shared_drive: bool = False,
    ) -> FakeFile:
        if parent is not None:
            shared_drive = self.items[parent].shared_drive
        item = FakeFile(
            id=new_id(),
            name=name,
            mime_type=mime_type,
            parents=[parent] if parent else [],
            created=self.clock.now(),
            content=content,
            app_properties=dict(app_properties or {}),
            owner=None if shared_drive else owner,
            shared_drive=shared_drive,
        )
        self.items[item.id] = item
        return item

    def check_create(self, email: str, metadata: dict[str, Any]) -> str:
        """The parent a new item goes into, after Drive's checks."""
        parents = metadata.get("parents") or []
        if len(parents) != 1:
            raise invalid("A file must have exactly one parent.", "parents")
        parent = self.visible(email, parents[0])
        if not parent.is_folder:
            raise invalid("The specified parent is not a folder.", "parents")
        if self.role(email, parent) < ROLES["writer"]:
            raise forbidden(parent.id)
        if not parent.shared_drive and email in self.service_accounts:
            raise ApiError(
                403,
                "storageQuotaExceeded",
                "Service Accounts do not have storage quota. Leverage shared drives, or use OAuth "
                "delegation instead.",
                domain="usageLimits",
            )
        return parent.id

    def check_remove(self, email: str, item: FakeFile, *, permanently: bool) -> None:
        if item.shared_drive:
            needed = ROLES["organizer"] if permanently else ROLES["fileOrganizer"]
            if self.role(email, item) < needed:
                raise forbidden(item.id)
        elif item.owner != email:
            raise forbidden(item.id)

    def add_permission(self, email: str, item: FakeFile, body: Any) -> dict[str, Any]:
        """``permissions.create`` by ``email``: give one user a role on ``item``."""
        if not isinstance(body, dict):
            raise ApiError(400, "parseError", "Parse Error")
        for name in body:
            if name not in PERMISSION_SCHEMA:
                raise ApiError(
                    400,
                    "badRequest",
                    f'Invalid JSON payload received. Unknown name "{name}": Cannot find field.',
                )
        if body.get("type") != "user":
            raise invalid(
                f"fake drive: permission type {body.get('type')!r} is not implemented",
                "permission.type",
            )
        role, target = body.get("role"), body.get("emailAddress")
        if role not in ROLES or role == "owner":
            raise invalid(f"The provided role is not valid: {role}", "permission.role")
        if role in ("organizer", "fileOrganizer") and not item.shared_drive:
            raise invalid(f"The role {role} is only valid in shared drives.", "permission.role")
        if not isinstance(target, str) or "@" not in target:
            raise ApiError(
                400,
                "invalidSharingRequest",
                'Bad Request. User message: "The email address is not valid."',
            )
        needed = ROLES["fileOrganizer"] if item.shared_drive and item.is_folder else ROLES["writer"]
        if self.role(email, item) < needed:
            raise forbidden(item.id)
        item.shares[target] = role
        return {
            "kind": "drive#permission",
            "id": str(int(hashlib.sha256(target.encode()).hexdigest()[:15], 16)),
            "type": "user",
            "role": role,
            "emailAddress": target,
        }

    def delete(self, item: FakeFile) -> None:
        for child in [c for c in self.items.values() if item.id in c.parents]:
            self.delete(child)
        self.items.pop(item.id, None)

    def resource(self, email: str, item: FakeFile) -> dict[str, Any]:
        role = self.role(email, item)
        out: dict[str, Any] = {
            "kind": "drive#file",
            "id": item.id,
            "name": item.name,
            "mimeType": item.mime_type,
            "parents": list(item.parents),
            "createdTime": rfc3339(item.created),
            "modifiedTime": rfc3339(item.created),
            "trashed": item.trashed,
            "capabilities": {
                "canAddChildren": item.is_folder and role >= ROLES["writer"],
                "canListChildren": item.is_folder,
                "canDownload": not item.is_folder,
                "canTrash": role
                >= (ROLES["fileOrganizer"] if item.shared_drive else ROLES["owner"]),
                "canDelete": role >= (ROLES["organizer"] if item.shared_drive else ROLES["owner"]),
            },
        }
        if item.app_properties:
            out["appProperties"] = dict(item.app_properties)
        if item.content is not None:
            out["size"] = str(len(item.content))
            out["md5Checksum"] = hashlib.md5(item.content).hexdigest()
        if item.shared_drive:
            out["driveId"] = "0AFakeSharedDrive"
        else:
            out["ownedByMe"] = item.owner == email
        return out


def check_body(body: Any, writable: set[str], *, update: bool) -> dict[str, Any]:
    """Drive refuses unknown fields (400) and read-only ones (403 fieldNotWritable)."""
    if not isinstance(body, dict):
        raise ApiError(400, "parseError", "Parse Error")
    for name, value in body.items():
        if name == "parents" and update:
            raise ApiError(
                403,
                "fieldNotWritable",
                "The parents field is not directly writable in update requests. Use the "
                "addParents and removeParents parameters instead.",
            )
        if name in FILE_SCHEMA and name not in writable and name != "kind":
            raise ApiError(
                403,
                "fieldNotWritable",
                "The resource body includes fields which are not directly writable.",
            )
        if name not in FILE_SCHEMA and name not in writable:
            raise ApiError(
                400,
                "badRequest",
                f'Invalid JSON payload received. Unknown name "{name}": Cannot find field.',
            )
        if name == "appProperties" and not _valid_properties(value):
            raise invalid("Invalid appProperties: string keys and values, 124 bytes", name)
    return body


def _valid_properties(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) and len((k + v).encode()) <= 124
        for k, v in value.items()
    )
