#!/usr/bin/env python3
"""Generate the compose cluster's broker credentials, once, outside git.

Writes ``docker/.env`` (passwords of the ``coordinator``, ``hospital`` and ``admin`` broker users,
mode 0600) and ``docker/.secrets/definitions.json`` (RabbitMQ definitions: vhost ``hefl``, one user
per role with least-privilege permissions, salted SHA-256 password hashes). Existing files are kept,
so ``make up`` after ``make up`` reuses the same passwords. Standard library only.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import sys
from pathlib import Path

HERE = Path(os.environ.get("HEFL_CREDENTIALS_DIR") or Path(__file__).resolve().parent)
VHOST = "hefl"
USERS = ("coordinator", "hospital", "admin")
# Resource names are fixed by the transport: <prefix>.announce (fanout exchange), <prefix>.submit
# (queue, reached through the default exchange amq.default), <prefix>.announce.<hospital> (queue).
PERMISSIONS = {
    # declares the exchange and the submit queue, consumes submissions, publishes announcements
    "coordinator": {
        "configure": r"^hefl\.(announce|submit)$",
        "write": r"^hefl\.announce$",
        "read": r"^hefl\.submit$",
    },
    # declares and binds its own announce queue, consumes it, submits through the default
    # exchange; cannot read the submit queue (others' submissions) nor publish announcements
    "hospital": {
        "configure": r"^hefl\.(announce|submit|announce\.hospital-[0-9]+)$",
        "write": r"^(amq\.default|hefl\.announce\.hospital-[0-9]+)$",
        "read": r"^hefl\.announce(\.hospital-[0-9]+)?$",
    },
    # the management UI's operator
    "admin": {"configure": ".*", "write": ".*", "read": ".*"},
}


def password_hash(password: str) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password))."""
    salt = secrets.token_bytes(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def read_env(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def main() -> int:
    HERE.mkdir(parents=True, exist_ok=True)
    env_path = HERE / ".env"
    env = read_env(env_path)
    for user in USERS:
        env.setdefault(f"HEFL_{user.upper()}_PASSWORD", secrets.token_urlsafe(24))
    env_path.write_text("".join(f"{key}={value}\n" for key, value in sorted(env.items())))
    env_path.chmod(0o600)
    definitions = {
        "vhosts": [{"name": VHOST}],
        "users": [
            {
                "name": user,
                "password_hash": password_hash(env[f"HEFL_{user.upper()}_PASSWORD"]),
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": ["administrator"] if user == "admin" else [],
            }
            for user in USERS
        ],
        "permissions": [{"user": user, "vhost": VHOST, **PERMISSIONS[user]} for user in USERS],
    }
    out = HERE / ".secrets" / "definitions.json"
    out.parent.mkdir(mode=0o755, exist_ok=True)
    out.write_text(json.dumps(definitions, indent=2) + "\n")
    out.chmod(0o644)  # read by the broker's own user inside its container; holds hashes only
    print(f"broker credentials: {env_path} (0600), definitions: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
