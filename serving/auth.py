"""The API key of the service: where it comes from and how a request's key is checked.

With ``CRMML_API_KEY`` set, every route except the open ones (``OPEN_PATHS``) needs
``Authorization: Bearer KEY`` or ``X-API-Key: KEY``: 401 when absent, 403 when wrong. Without a
key the service refuses to start unless ``CRMML_AUTH=off`` says so explicitly (the local demo;
``crmml serve --no-auth``). Keys shorter than ``MIN_KEY_LENGTH`` (16) characters are refused.
``crmml serve`` without a key generates one and writes it to ``<workspace>/serve_api_key``
(mode 600; :func:`write_generated_key`), printing the file's path, never the key.
"""

from __future__ import annotations

import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

#: shorter keys are refused: a guessable key is no key
MIN_KEY_LENGTH = 16
#: where ``crmml serve`` writes the key it generates (in the workspace, mode 600): never printed or logged
KEY_FILE = "serve_api_key"

#: answered without a key: probes and Prometheus
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/livez", "/metrics"})

MISSING = "missing API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"
INVALID = "invalid API key"


class NoApiKeyError(RuntimeError):
    """Neither ``CRMML_API_KEY`` nor an explicit ``CRMML_AUTH=off``, or a key that is too short."""


def check_key(key: str) -> str:
    """``key`` if it is long enough; NoApiKeyError (one line, the key not quoted) otherwise."""
    if len(key) < MIN_KEY_LENGTH:
        raise NoApiKeyError(
            f"CRMML_API_KEY is {len(key)} characters long; use at least {MIN_KEY_LENGTH} "
            "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(24))'`)"
        )
    return key


def write_generated_key(folder: Path) -> tuple[str, Path]:
    """A fresh random key, written to ``folder/KEY_FILE`` readable by the owner only (mode 600).

    The file is created with mode 600 (never briefly world-readable) and replaced on every call.
    Returns the key and the file's path (print the path, never the key).
    """
    key = secrets.token_urlsafe(24)
    path = Path(folder) / KEY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # a file left by someone else keeps its owner and mode: start afresh
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    return key, path


@dataclass(frozen=True)
class ApiKey:
    """The service's key (``None``: authentication off, said explicitly)."""

    key: str | None

    @property
    def enabled(self) -> bool:
        return self.key is not None

    @classmethod
    def from_env(cls) -> "ApiKey":
        """``CRMML_API_KEY``, else off when ``CRMML_AUTH=off``; NoApiKeyError otherwise."""
        key = os.environ.get("CRMML_API_KEY") or None
        if key:
            return cls(check_key(key))
        if os.environ.get("CRMML_AUTH", "").strip().lower() in ("off", "0", "false", "no", "none"):
            return cls(None)
        raise NoApiKeyError(
            "no API key: set CRMML_API_KEY (clients send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'), "
            "or set CRMML_AUTH=off for a local demo without authentication (`crmml serve` does either for you)"
        )

    def problem(self, path: str, headers) -> tuple[int, str] | None:
        """``(status, detail)`` when a request to ``path`` with these ASGI headers must be refused, else None."""
        if self.key is None or path in OPEN_PATHS:
            return None
        # every credential presented must be the key: a valid X-API-Key does not excuse a wrong
        # Authorization header (or the other way round)
        given: list[str] = []
        malformed = False
        for name, value in headers:
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and token.strip():
                    given.append(token.strip())
                else:
                    malformed = True
            elif name == b"x-api-key":
                token = value.decode("latin-1").strip()
                if token:
                    given.append(token)
                else:
                    malformed = True
        if not given and not malformed:
            return 401, MISSING
        expected = self.key.encode("utf-8")
        if malformed or not all(hmac.compare_digest(g.encode("utf-8", "replace"), expected) for g in given):
            return 403, INVALID
        return None
