"""Who is asking, and may they act: bearer tokens, the login cookie, CSRF, and the loopback rule.

- ``Authorization: Bearer <token>``: ``PGQUEUE_ADMIN_TOKEN`` may read and act,
  ``PGQUEUE_READ_TOKEN`` may only read. Compared in constant time (``hmac.compare_digest``).
- Named users (``PGQUEUE_DASHBOARD_USERS_FILE``, :func:`load_users`): each person has a token of
  their own and a role, and their actions are audited under their name instead of the shared
  ``admin-token``: an auditor can tell which operator acted.
- Browsers log in once with a token (``/login``). The cookie (HttpOnly, SameSite=Strict) holds not
  the token but an HMAC-SHA256 keyed by it (:func:`login_cookie`): a leaked cookie is no bearer
  token, every dashboard process derives the same value (no shared state behind a load balancer),
  and changing a token ends its logins.
- An action by cookie (or without tokens, see below) must be CSRF-safe: carry the ``X-PGQueue-CSRF``
  header the pages embed (a cross-site form cannot set a header, and a cross-site script cannot
  read it), or be a JSON request (``Content-Type: application/json``, as the contract allows: a
  cross-site page can send that type only after a CORS preflight, which this app never approves).
  Bearer requests need neither: browsers never attach that header by themselves. An
  ``Authorization`` header of another scheme (a proxy's HTTP Basic login) is not ours and is ignored.
- With no token configured, only loopback is served: the client address and the ``Host`` header
  (DNS rebinding) must both be loopback. Anyone on the machine may then act, as the dashboard's OS user.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from starlette.requests import Request

from pgqueue._log import get_logger
from pgqueue.admin import default_actor
from pgqueue.errors import ConfigurationError

Role = Literal["admin", "read"]

COOKIE = "pgqueue_token"
CSRF_HEADER = "X-PGQueue-CSRF"
ADMIN_TOKEN_ENV = "PGQUEUE_ADMIN_TOKEN"  # noqa: S105 - the variable's name, not a token
READ_TOKEN_ENV = "PGQUEUE_READ_TOKEN"  # noqa: S105
USERS_FILE_ENV = "PGQUEUE_DASHBOARD_USERS_FILE"
#: A user's name is written to the audit trail as is: a charset that needs no quoting anywhere.
_USER_NAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")
_ROLES_BY_NAME: dict[str, Role] = {"admin": "admin", "read": "read"}
# Actors the audit trail already uses for something else: a user named so could not be told apart.
_RESERVED_NAMES = frozenset({"admin-token", "read-token", "scheduler", "maintenance"})
_LOOPBACK_NAMES = frozenset({"localhost"})
MIN_TOKEN_LENGTH = 16
# What a client can put in an Authorization header as is (RFC 9110 field values are ASCII in
# practice; servers hand other bytes over as latin-1, browsers' fetch() sends latin-1, curl UTF-8).
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]+")
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
    role: Role
    # Written to the audit trail as is (with source=web in the row's detail): the named user who
    # acted, which environment token acted, or the dashboard's OS user when it serves loopback
    # without tokens.
    actor: str
    via: Literal["bearer", "cookie", "loopback"]
    csrf: str  # what X-PGQueue-CSRF must hold for this principal's actions
    user: str | None = None  # the users file's name, when a named user's token authenticated

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


def _weakness(token: str) -> str | None:
    """Why ``token`` is refused (None: it is not), said after its name; never quotes it."""
    if len(token) < MIN_TOKEN_LENGTH:
        return f"is too short: a token needs at least {MIN_TOKEN_LENGTH} characters; generate one with {GENERATE_TOKEN}"
    if not _PRINTABLE_ASCII.fullmatch(token):
        # Such a token would match on the login page (a form is UTF-8) but never as a bearer token,
        # whose header bytes each client encodes its own way.
        return ("has a character outside printable ASCII, which an Authorization header cannot carry "
                f"reliably; generate one with {GENERATE_TOKEN}")
    return None


def check_tokens(admin_token: str | None, read_token: str | None, *,
                 names: tuple[str, str] = (ADMIN_TOKEN_ENV, READ_TOKEN_ENV)) -> None:
    """Raise :class:`~pgqueue.errors.ConfigurationError` for a configured token that is too short
    or holds a character beyond printable ASCII, or for a read token equal to the admin token
    (every reader would be an admin). ``names`` are what the message calls them; the message never
    quotes a token."""
    admin, read = normalize_token(admin_token), normalize_token(read_token)
    for name, token in zip(names, (admin, read), strict=True):
        weakness = _weakness(token) if token is not None else None
        if weakness:
            raise ConfigurationError(f"{name} {weakness}")
    if admin and read and hmac.compare_digest(admin.encode(), read.encode()):
        raise ConfigurationError(f"{names[0]} and {names[1]} must differ: a read token equal to the admin "
                                 "token lets every reader act")


@dataclass(frozen=True)
class DashboardUser:
    """One person of the dashboard's users file: their name (the audit trail's actor for what they
    do), their role, and their own token."""

    name: str
    role: Role
    token: str = field(repr=False)  # never in a repr, so never in a log line or a traceback


_FILE_FORMAT = "'<name> <role> <token>'"


def load_users(path: str | os.PathLike[str], *,
               other_tokens: Mapping[str, str | None] | None = None) -> tuple[DashboardUser, ...]:
    """The users of a dashboard users file: one ``<name> <role> <token>`` a line (role ``admin`` or
    ``read``), blank lines and lines starting with ``#`` ignored.

    Args:
        path: the file (``PGQUEUE_DASHBOARD_USERS_FILE``).
        other_tokens: tokens configured elsewhere, by what a message calls them (e.g.
            ``{"PGQUEUE_ADMIN_TOKEN": token}``): a user whose token is one of them is refused.

    Raises:
        ConfigurationError: the file cannot be read, may be written by other users, names no user,
            or has a bad line: not three fields, a name outside ``[A-Za-z0-9._@-]{1,64}`` or one the
            audit trail uses already (``admin-token``, ``read-token``, ``scheduler``,
            ``maintenance``), an unknown role, a token under 16 characters or beyond printable
            ASCII, a name (ignoring case) or token that another line (or ``other_tokens``) has.
            The message names the file and the line, never a token nor anything else of the line
            (a line with its fields in the wrong order would show its token).

    A file other users may read is served with a warning (``web.users_file_readable``): Kubernetes
    mounts secrets 0644 and Docker 0444 by default, where no other user is there to read them; on
    a shared machine make it ``chmod 600``.
    """
    where = f"users file {os.fspath(path)}"
    try:
        with open(path, "rb") as file:  # the mode checked is the one of the file read
            mode = os.fstat(file.fileno()).st_mode
            raw = file.read()
    except OSError as exc:
        raise ConfigurationError(f"{where}: cannot read it ({exc.strerror or exc})") from None
    if os.name == "posix" and mode & (stat.S_IWGRP | stat.S_IWOTH):
        # Writing it is making oneself an admin under anyone's name: refused, as ssh refuses such keys.
        raise ConfigurationError(f"{where}: other users may write it (mode {stat.S_IMODE(mode):04o}), and so "
                                 "give themselves admin rights: chmod go-w it")
    try:
        text = raw.decode("utf-8-sig")  # a BOM (Windows editors) is no part of the first name
    except UnicodeDecodeError:
        raise ConfigurationError(f"{where}: not UTF-8 text") from None
    users: list[DashboardUser] = []
    names: dict[str, int] = {}
    # token -> who has it already (stripped, as tokens are compared)
    tokens = {stripped: label for label, token in (other_tokens or {}).items() if (stripped := normalize_token(token))}
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        at = f"{where}, line {number}"
        if len(fields) != 3:
            # No inline comments: a token may hold a #.
            raise ConfigurationError(f"{at}: expected {_FILE_FORMAT} separated by spaces, found {len(fields)} "
                                     "fields (a comment takes a line of its own; the line is not shown: it may "
                                     "hold a token)")
        name, role, token = fields
        if not _USER_NAME.fullmatch(name):
            raise ConfigurationError(f"{at}: a name is 1 to 64 characters of A-Z a-z 0-9 . _ @ - (the line is "
                                     "not shown: it may hold a token)")
        if name.lower() in _RESERVED_NAMES:
            raise ConfigurationError(f"{at}: the names {', '.join(sorted(_RESERVED_NAMES))} are taken: the audit "
                                     "trail uses them for the environment's tokens and for pgqueue itself")
        if role not in _ROLES_BY_NAME:
            raise ConfigurationError(f"{at}: the role must be admin or read (the line is not shown: it may "
                                     "hold a token)")
        weakness = _weakness(token)
        if weakness:
            raise ConfigurationError(f"{at}: the token {weakness}")
        if name.lower() in names:
            raise ConfigurationError(f"{at}: the same name as line {names[name.lower()]} (names are compared "
                                     "ignoring case): each person needs a name of their own")
        if token in tokens:
            raise ConfigurationError(f"{at}: the token is the same as {tokens[token]}: each user needs a token "
                                     "of their own, or the audit trail cannot tell them apart")
        names[name.lower()] = number
        tokens[token] = f"line {number}'s"
        users.append(DashboardUser(name, _ROLES_BY_NAME[role], token))
    if not users:
        # Set, but naming no one: the dashboard would fall back to serving loopback without auth.
        raise ConfigurationError(f"{where}: names no user: add a line {_FILE_FORMAT} for each person")
    if os.name == "posix" and mode & (stat.S_IRGRP | stat.S_IROTH):
        # The logger is looked up now: the application may have configured structlog after importing us.
        get_logger(__name__).warning(
            "web.users_file_readable", path=os.fspath(path), mode=f"{stat.S_IMODE(mode):04o}",
            hint="other users of this machine can read every token in it: chmod 600 it, unless it is a "
                 "container's mounted secret")
    return tuple(users)


def _host_name(header: str) -> str:
    if header.startswith("["):  # [::1]:8080
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _is_json(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json"


class _Credential(NamedTuple):
    """A configured token, and what a request that shows it (or its login cookie) is."""

    role: Role
    actor: str  # the audit trail's actor: the user's name, or "admin-token" / "read-token"
    user: str | None  # the users file's name; None for the environment's tokens
    token: bytes
    cookie: str  # the login cookie's value (see login_cookie)
    # What X-PGQueue-CSRF must hold for its actions: derived from the token as the cookie is (with
    # another purpose), so that every process accepts it, and a page's copy of it opens nothing.
    csrf: str

    def __repr__(self) -> str:
        # Never the token, the cookie or the CSRF token: a traceback that prints its frames'
        # variables (Sentry, rich) would show them, as DashboardUser's repr never does.
        return f"_Credential(role={self.role!r}, actor={self.actor!r})"


def _credential(token: str, role: Role, user: str | None) -> _Credential:
    return _Credential(role, user or f"{role}-token", user, token.encode(), login_cookie(token, role),
                       _derive(token, _CSRF_PURPOSE, role).hex())


class Authenticator:
    def __init__(self, admin_token: str | None, read_token: str | None, *,
                 names: tuple[str, str] = (ADMIN_TOKEN_ENV, READ_TOKEN_ENV),
                 users: Sequence[DashboardUser] = ()) -> None:
        """Raises :class:`~pgqueue.errors.ConfigurationError` for weak tokens (see :func:`check_tokens`).
        ``users`` come from :func:`load_users`, which checks them."""
        check_tokens(admin_token, read_token, names=names)
        # Stripped as the tokens people send are: a blank token (PGQUEUE_ADMIN_TOKEN=" ") is none,
        # not one that a quoted blank cookie matches, and "tok\n" read from a file matches "tok".
        self.users = tuple(users)
        # Only for the loopback principal's CSRF token: a login's derives from its token instead,
        # so that every process behind a load balancer accepts it.
        self._secret = secrets.token_bytes(32)
        # Derived once: each configured token's login cookie and CSRF token, and who it is.
        env: list[tuple[Role, str | None]] = [("admin", normalize_token(admin_token)),
                                              ("read", normalize_token(read_token))]
        self._credentials = [_credential(token, role, None) for role, token in env if token]
        self._credentials += [_credential(user.token, user.role, user.name) for user in self.users]

    @classmethod
    def from_env(cls, admin_token: str | None = None, read_token: str | None = None,
                 users_file: str | os.PathLike[str] | None = None) -> Authenticator:
        """Each token, and the users file, as given, or (when None) from its environment variable."""
        names = ("admin_token" if admin_token is not None else ADMIN_TOKEN_ENV,
                 "read_token" if read_token is not None else READ_TOKEN_ENV)
        admin = admin_token if admin_token is not None else os.environ.get(ADMIN_TOKEN_ENV)
        read = read_token if read_token is not None else os.environ.get(READ_TOKEN_ENV)
        # The environment's tokens first: a weak one is named before the users file is read.
        check_tokens(admin, read, names=names)
        path = os.fspath(users_file) if users_file is not None else os.environ.get(USERS_FILE_ENV, "")
        users = load_users(path, other_tokens=dict(zip(names, (admin, read), strict=True))) if path.strip() else ()
        return cls(admin, read, names=names, users=users)

    @property
    def open(self) -> bool:
        """No token configured: loopback only, no login."""
        return not self._credentials

    def _matching(self, supplied: str, held: Callable[[_Credential], bytes]) -> _Credential | None:
        """The credential whose ``held`` value (its token, its login cookie) is ``supplied``."""
        value = supplied.encode()
        # Every credential compared every time, in constant time, so timing tells nothing about any.
        matches = [hmac.compare_digest(value, held(credential)) for credential in self._credentials]
        return next((credential for credential, match in zip(self._credentials, matches, strict=True) if match), None)

    def _of_token(self, token: str) -> _Credential | None:
        return self._matching(token, lambda credential: credential.token)

    def _of_cookie(self, cookie: str) -> _Credential | None:
        return self._matching(cookie, lambda credential: credential.cookie.encode())

    def _loopback_csrf(self) -> str:
        return hmac.new(self._secret, b"loopback", hashlib.sha256).hexdigest()

    def identify(self, request: Request) -> Principal:
        """The principal of ``request``, or :class:`AuthError` (401) when there is none."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        # Only a Bearer header is ours. Another scheme is someone else's credential (nginx's
        # auth_basic passes the browser's Basic header on): the login cookie, or loopback, decides.
        if scheme.lower() == "bearer":
            found = self._of_token(token.strip()) if token.strip() else None
            if found is None:
                raise AuthError(401, "invalid bearer token")
            return Principal(found.role, found.actor, "bearer", "", found.user)
        if self.open:
            client = request.client.host if request.client else None
            if not is_loopback(client) or not is_loopback(_host_name(request.headers.get("host", ""))):
                raise AuthError(403, f"no token is configured, so only loopback is served: set "
                                     f"{ADMIN_TOKEN_ENV} (and {READ_TOKEN_ENV}) or {USERS_FILE_ENV} to serve "
                                     "other addresses")
            return Principal("admin", default_actor(), "loopback", self._loopback_csrf())
        cookie = request.cookies.get(COOKIE, "")
        # A cookie from before the derivation (the raw token) matches nothing: its browser logs in again.
        login = self._of_cookie(cookie) if cookie else None
        if login is None:
            raise AuthError(401, "authentication required: send Authorization: Bearer <token>, or log in")
        return Principal(login.role, login.actor, "cookie", login.csrf, login.user)

    def check_action(self, request: Request, principal: Principal) -> None:
        """Raise :class:`AuthError` unless ``principal`` may act and the request is not cross-site."""
        if not principal.can_act:
            raise AuthError(403, "this token may only read: actions need an admin token")
        if principal.via != "bearer" and not _is_json(request):
            supplied = request.headers.get(CSRF_HEADER, "")
            # As bytes: compare_digest raises TypeError for a str beyond ASCII, and a header may hold any byte.
            if not supplied or not hmac.compare_digest(supplied.encode(), principal.csrf.encode()):
                raise AuthError(403, f"missing or wrong {CSRF_HEADER} header (actions from a page must come "
                                     "from that page's own buttons; scripts send Content-Type: application/json)")

    def login(self, token: str) -> str | None:
        """The login cookie's value for ``token`` typed on the login page, or None if it is no valid token."""
        found = self._of_token(token.strip()) if token.strip() else None
        return found.cookie if found else None
