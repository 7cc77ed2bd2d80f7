"""The API key of the service: where it comes from and how a request's key is checked.

With ``CRMML_API_KEY`` set, every route except the open ones (``OPEN_PATHS``) needs
``Authorization: Bearer KEY`` or ``X-API-Key: KEY``: 401 when absent, 403 when wrong. Without a
key the service refuses to start unless ``CRMML_AUTH=off`` says so explicitly (the local demo;
``crmml serve --no-auth``).
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass

#: answered without a key: probes and Prometheus
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/livez", "/metrics"})

MISSING = "missing API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"
INVALID = "invalid API key"


class NoApiKeyError(RuntimeError):
    """Neither ``CRMML_API_KEY`` nor an explicit ``CRMML_AUTH=off``."""


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
            return cls(key)
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
        given = None
        for name, value in headers:
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and token.strip():
                    given = token.strip()
            elif name == b"x-api-key" and given is None:
                given = value.decode("latin-1").strip() or None
        if given is None:
            return 401, MISSING
        if not hmac.compare_digest(given.encode("utf-8", "replace"), self.key.encode("utf-8")):
            return 403, INVALID
        return None

