"""Who is asking, and may they act: bearer tokens, the login cookie, CSRF, and the loopback rule.

- ``Authorization: Bearer <token>``: ``PGQUEUE_ADMIN_TOKEN`` may read and act,
  ``PGQUEUE_READ_TOKEN`` may only read. Compared in constant time (``hmac.compare_digest``).
- Browsers log in once with a token (``/login``); the cookie holds it (HttpOnly, SameSite=Strict).
- An action by cookie (or without tokens, see below) must be CSRF-safe: carry the ``X-PGQueue-CSRF``
  header the pages embed (a cross-site form cannot set a header, and a cross-site script cannot
  read it), or be a JSON request (``Content-Type: application/json``, as the contract allows: a
  cross-site page can send that type only after a CORS preflight, which this app never approves).
  Bearer requests need neither: browsers never attach that header by themselves.
- With no token configured, only loopback is served: the client address and the ``Host`` header
  (DNS rebinding) must both be loopback. Anyone on the machine may then act, as ``web:<os user>``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
from dataclasses import dataclass
from typing import Literal

from starlette.requests import Request

from pgqueue.admin import default_actor

COOKIE = "pgqueue_token"
CSRF_HEADER = "X-PGQueue-CSRF"
ADMIN_TOKEN_ENV = "PGQUEUE_ADMIN_TOKEN"  # noqa: S105 - the variable's name, not a token
READ_TOKEN_ENV = "PGQUEUE_READ_TOKEN"  # noqa: S105
_LOOPBACK_NAMES = frozenset({"localhost"})


class AuthError(Exception):
    """A request that may not proceed: 401 (who are you) or 403 (not allowed)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Principal:
    role: Literal["admin", "read"]
    # Written to the audit trail as is (with source=web in the row's detail): which token acted,
    # or the dashboard's OS user when it serves loopback without tokens.
    actor: str
    via: Literal["bearer", "cookie", "loopback"]
    csrf: str  # what X-PGQueue-CSRF must hold for this principal's actions

    @property
    def can_act(self) -> bool:
        return self.role == "admin"


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    name = host.strip("[]").lower()
    if name in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def normalize_token(token: str | None) -> str | None:
    """A configured token as compared: without surrounding whitespace; None when blank."""
    return (token or "").strip() or None


def _host_name(header: str) -> str:
    if header.startswith("["):  # [::1]:8080
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _is_json(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json"


class Authenticator:
    def __init__(self, admin_token: str | None, read_token: str | None) -> None:
        # Stripped as the tokens people send are: a blank token (PGQUEUE_ADMIN_TOKEN=" ") is none,
        # not one that a quoted blank cookie matches, and "tok\n" read from a file matches "tok".
        self.admin_token = normalize_token(admin_token)
        self.read_token = normalize_token(read_token)
        self._secret = secrets.token_bytes(32)
        if self.admin_token and self.read_token and hmac.compare_digest(self.admin_token, self.read_token):
            raise ValueError(f"{ADMIN_TOKEN_ENV} and {READ_TOKEN_ENV} must differ")

    @classmethod
    def from_env(cls, admin_token: str | None = None, read_token: str | None = None) -> Authenticator:
        return cls(admin_token if admin_token is not None else os.environ.get(ADMIN_TOKEN_ENV),
                   read_token if read_token is not None else os.environ.get(READ_TOKEN_ENV))

    @property
    def open(self) -> bool:
        """No token configured: loopback only, no login."""
        return self.admin_token is None and self.read_token is None

    def _role(self, token: str) -> Literal["admin", "read"] | None:
        supplied = token.encode()
        # Both compared every time, in constant time, so timing tells nothing about either.
        admin = self.admin_token is not None and hmac.compare_digest(supplied, self.admin_token.encode())
        read = self.read_token is not None and hmac.compare_digest(supplied, self.read_token.encode())
        return "admin" if admin else "read" if read else None

    def _csrf(self, identity: str) -> str:
        return hmac.new(self._secret, identity.encode(), hashlib.sha256).hexdigest()

    def identify(self, request: Request) -> Principal:
        """The principal of ``request``, or :class:`AuthError` (401) when there is none."""
        header = request.headers.get("authorization", "")
        if header:
            scheme, _, token = header.partition(" ")
            role = self._role(token.strip()) if scheme.lower() == "bearer" and token.strip() else None
            if role is None:
                raise AuthError(401, "invalid bearer token")
            return Principal(role, f"{role}-token", "bearer", "")
        if self.open:
            client = request.client.host if request.client else None
            if not is_loopback(client) or not is_loopback(_host_name(request.headers.get("host", ""))):
                raise AuthError(403, f"no token is configured, so only loopback is served: set "
                                     f"{ADMIN_TOKEN_ENV} (and {READ_TOKEN_ENV}) to serve other addresses")
            return Principal("admin", default_actor(), "loopback", self._csrf("loopback"))
        cookie = request.cookies.get(COOKIE, "")
        role = self._role(cookie) if cookie else None
        if role is None:
            raise AuthError(401, "authentication required: send Authorization: Bearer <token>, or log in")
        return Principal(role, f"{role}-token", "cookie", self._csrf(f"cookie:{cookie}"))

    def check_action(self, request: Request, principal: Principal) -> None:
        """Raise :class:`AuthError` unless ``principal`` may act and the request is not cross-site."""
        if not principal.can_act:
            raise AuthError(403, "this token may only read: actions need the admin token")
        if principal.via != "bearer" and not _is_json(request):
            supplied = request.headers.get(CSRF_HEADER, "")
            if not supplied or not hmac.compare_digest(supplied, principal.csrf):
                raise AuthError(403, f"missing or wrong {CSRF_HEADER} header (actions from a page must come "
                                     "from that page's own buttons; scripts send Content-Type: application/json)")

    def login_role(self, token: str) -> Literal["admin", "read"] | None:
        return self._role(token.strip()) if token.strip() else None
