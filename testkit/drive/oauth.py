"""The fake Google OAuth token endpoint: access tokens for the two grants google-auth uses.

- JWT bearer (service accounts): the assertion's RS256 signature is checked against the key
  registered for its issuer, its audience must be Google's token endpoint (google-auth always
  addresses it there) and it must not have expired; the token gets the assertion's scopes.
- Refresh token (OAuth users): a registered refresh token and the client secret.

A refused account gets ``invalid_grant``, which google-auth raises as ``RefreshError``.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass
from urllib.parse import parse_qs

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from testkit.drive.wire import Handler, b64decode, read_body, send_json

GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


@dataclass
class Token:
    email: str
    scopes: frozenset[str]
    valid: bool = True


class OAuth:
    """Mixed into ``FakeDrive``, which provides the state below."""

    lock: threading.RLock
    tokens: dict[str, Token]
    public_keys: dict[str, rsa.RSAPublicKey]
    refresh_tokens: dict[str, tuple[str, frozenset[str]]]
    refused: set[str]

    def _token(self, h: Handler) -> None:
        form = {k: v[-1] for k, v in parse_qs(read_body(h).decode()).items()}
        grant = form.get("grant_type")
        try:
            if grant == JWT_GRANT:
                email, scopes = self._verify_jwt(form.get("assertion", ""))
            elif grant == "refresh_token":
                email, scopes = self.refresh_tokens[form["refresh_token"]]
                if form.get("client_secret") != "fake-secret":
                    raise KeyError("client_secret")
            else:
                return send_json(h, 400, {"error": "unsupported_grant_type"})
        except (KeyError, ValueError, InvalidSignature) as exc:
            detail = f"{type(exc).__name__}: {exc}"
            return send_json(h, 400, {"error": "invalid_grant", "error_description": detail})
        if email in self.refused:
            return send_json(
                h, 400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
            )
        token = "ya29.fake-" + secrets.token_urlsafe(16)
        with self.lock:
            self.tokens[token] = Token(email, scopes)
        send_json(h, 200, {"access_token": token, "expires_in": 3599, "token_type": "Bearer"})

    def _verify_jwt(self, assertion: str) -> tuple[str, frozenset[str]]:
        header_b64, payload_b64, signature_b64 = assertion.split(".")
        header, payload = json.loads(b64decode(header_b64)), json.loads(b64decode(payload_b64))
        key = self.public_keys.get(payload.get("iss", ""))
        if header.get("alg") != "RS256" or key is None:
            raise ValueError("unknown issuer or algorithm")
        key.verify(
            b64decode(signature_b64),
            f"{header_b64}.{payload_b64}".encode(),
            padding.PKCS1v15(),
            hashes.SHA256(),
        )
        # google-auth always addresses the assertion to Google's token endpoint, as Google wants.
        if payload.get("aud") != GOOGLE_TOKEN_AUDIENCE or payload.get("exp", 0) < time.time():
            raise ValueError("wrong audience or expired assertion")
        return payload["iss"], frozenset(str(payload.get("scope", "")).split())
