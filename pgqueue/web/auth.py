"""Who is asking, and may they act: bearer tokens, the login cookie, CSRF, and the loopback rule.

- ``Authorization: Bearer <token>``: ``PGQUEUE_ADMIN_TOKEN`` may read and act,
  ``PGQUEUE_READ_TOKEN`` may only read. Compared in constant time (``hmac.compare_digest``).
- Browsers log in once with a token (``/login``). The cookie (HttpOnly, SameSite=Strict) holds not
  the token but an HMAC-SHA256 keyed by it (:func:`login_cookie`): a leaked cookie is no bearer
  token, every dashboard process derives the same value (no shared state behind a load balancer),
  and changing a token ends its logins.
- An action by cookie (or without tokens, see below) must be CSRF-safe: carry the ``X-PGQueue-CSRF``
  header the pages embed (a cross-site form cannot set a header, and a cross-site script cannot
  read it), or be a JSON request (``Content-Type: application/json``, as the contract allows: a
  cross-site page can send that type only after a CORS preflight, which this app never approves).
  Bearer requests need neither: browsers never attach that header by themselves.
- With no token configured, only loopback is served: the client address and the ``Host`` header
  (DNS rebinding) must both be loopback. Anyone on the machine may then act, as ``web:<os user>``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import secrets
from dataclasses import dataclass
from typing import Literal, NamedTuple

from starlette.requests import Request

from pgqueue.admin import default_actor
from pgqueue.errors import ConfigurationError

COOKIE = "pgqueue_token"
CSRF_HEADER = "X-PGQueue-CSRF"
ADMIN_TOKEN_ENV = "PGQUEUE_ADMIN_TOKEN"  # noqa: S105 - the variable's name, not a token
READ_TOKEN_ENV = "PGQUEUE_READ_TOKEN"  # noqa: S105
_LOOPBACK_NAMES = frozenset({"localhost"})
MIN_TOKEN_LENGTH = 16
GENERATE_TOKEN = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'  # noqa: S105 - a command
# Versioned, so that a future change of derivation ends old logins instead of misreading them.
_LOGIN_PURPOSE = b"pgqueue dashboard login v1:"
_CSRF_PURPOSE = b"pgqueue dashboard csrf v1:"


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


def _derive(token: str, purpose: bytes, role: str) -> bytes:
    return hmac.new(token.encode(), purpose + role.encode(), hashlib.sha256).digest()


def login_cookie(token: str, role: Literal["admin", "read"]) -> str:
    """The login cookie's value for ``token`` (which has ``role``): HMAC-SHA256 keyed by the token
    over a fixed purpose and the role, base64url. Only who holds the token can make it; it cannot
    be turned back into the token, so it is useless as a bearer token."""
    return base64.urlsafe_b64encode(_derive(token, _LOGIN_PURPOSE, role)).rstrip(b"=").decode()


def check_tokens(admin_token: str | None, read_token: str | None, *,
                 names: tuple[str, str] = (ADMIN_TOKEN_ENV, READ_TOKEN_ENV)) -> None:
    """Raise :class:`~pgqueue.errors.ConfigurationError` for a configured token that is too short,
    or for a read token equal to the admin token (every reader would be an admin). ``names`` are
    what the message calls them; the message never quotes a token."""
    admin, read = normalize_token(admin_token), normalize_token(read_token)
    for name, token in zip(names, (admin, read), strict=True):
        if token is not None and len(token) < MIN_TOKEN_LENGTH:
            raise ConfigurationError(f"{name} is too short: a token needs at least {MIN_TOKEN_LENGTH} characters; "
                                     f"generate one with {GENERATE_TOKEN}")
    if admin and read and hmac.compare_digest(admin.encode(), read.encode()):
        raise ConfigurationError(f"{names[0]} and {names[1]} must differ: a read token equal to the admin "
                                 "token lets every reader act")


def _host_name(header: str) -> str:
    if header.startswith("["):  # [::1]:8080
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _is_json(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json"


class _Login(NamedTuple):
    role: Literal["admin", "read"]
    cookie: str  # the login cookie's value (see login_cookie)
    # What X-PGQueue-CSRF must hold for its actions: derived from the token as the cookie is (with
    # another purpose), so that every process accepts it, and a page's copy of it opens nothing.
    csrf: str


class Authenticator:
    def __init__(self, admin_token: str | None, read_token: str | None, *,
                 names: tuple[str, str] = (ADMIN_TOKEN_ENV, READ_TOKEN_ENV)) -> None:
        """Raises :class:`~pgqueue.errors.ConfigurationError` for weak tokens (see :func:`check_tokens`)."""
        check_tokens(admin_token, read_token, names=names)
        # Stripped as the tokens people send are: a blank token (PGQUEUE_ADMIN_TOKEN=" ") is none,
        # not one that a quoted blank cookie matches, and "tok\n" read from a file matches "tok".
        self.admin_token = normalize_token(admin_token)
        self.read_token = normalize_token(read_token)
        # Only for the loopback principal's CSRF token: a login's derives from its token instead,
        # so that every process behind a load balancer accepts it.
        self._secret = secrets.token_bytes(32)
        # Derived once: what each configured token's login cookie holds, and its CSRF token.
        tokens: list[tuple[Literal["admin", "read"], str | None]] = [("admin", self.admin_token),
                                                                     ("read", self.read_token)]
        self._logins = [_Login(role, login_cookie(token, role), _derive(token, _CSRF_PURPOSE, role).hex())
                        for role, token in tokens if token]

    @classmethod
    def from_env(cls, admin_token: str | None = None, read_token: str | None = None) -> Authenticator:
        """Each token as given, or (when None) from its environment variable."""
        return cls(admin_token if admin_token is not None else os.environ.get(ADMIN_TOKEN_ENV),
                   read_token if read_token is not None else os.environ.get(READ_TOKEN_ENV),
                   names=("admin_token" if admin_token is not None else ADMIN_TOKEN_ENV,
                          "read_token" if read_token is not None else READ_TOKEN_ENV))

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

    def _login_of(self, cookie: str) -> _Login | None:
        supplied = cookie.encode()
        # As in _role: every login compared every time, in constant time.
        found = [login for login in self._logins if hmac.compare_digest(supplied, login.cookie.encode())]
        return found[0] if found else None

    def _loopback_csrf(self) -> str:
        return hmac.new(self._secret, b"loopback", hashlib.sha256).hexdigest()

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
            return Principal("admin", default_actor(), "loopback", self._loopback_csrf())
        cookie = request.cookies.get(COOKIE, "")
        # A cookie from before the derivation (the raw token) matches nothing: its browser logs in again.
        login = self._login_of(cookie) if cookie else None
        if login is None:
            raise AuthError(401, "authentication required: send Authorization: Bearer <token>, or log in")
        return Principal(login.role, f"{login.role}-token", "cookie", login.csrf)

    def check_action(self, request: Request, principal: Principal) -> None:
        """Raise :class:`AuthError` unless ``principal`` may act and the request is not cross-site."""
        if not principal.can_act:
            raise AuthError(403, "this token may only read: actions need the admin token")
        if principal.via != "bearer" and not _is_json(request):
            supplied = request.headers.get(CSRF_HEADER, "")
            if not supplied or not hmac.compare_digest(supplied, principal.csrf):
                raise AuthError(403, f"missing or wrong {CSRF_HEADER} header (actions from a page must come "
                                     "from that page's own buttons; scripts send Content-Type: application/json)")

    def login(self, token: str) -> str | None:
        """The login cookie's value for ``token`` typed on the login page, or None if it is no valid token."""
        role = self._role(token.strip()) if token.strip() else None
        return next((login.cookie for login in self._logins if login.role == role), None)
