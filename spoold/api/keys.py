"""API keys (`api.keys_file`): `NAME sha256:HEX [operator] [max_priority=N]` per line, `#` comments.

Only the SHA-256 of each secret is stored; a client sends the secret as `Authorization: Bearer SECRET`.
The file is re-read on SIGHUP (the handler only sets a flag; the next request reloads).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from spoold.api.errors import unauthorized
from spoold.errors import ConfigError

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_HASH = re.compile(r"^sha256:([0-9a-fA-F]{64})$")
ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class ApiKey:
    name: str
    digest: str
    operator: bool = False
    max_priority: int | None = None


def parse_keys(text: str, source: str = "keys file") -> dict[str, ApiKey]:
    """digest -> key (pure). A bad line is a ConfigError naming it: a typo must not open or close the door silently."""
    keys: dict[str, ApiKey] = {}
    names: set[str] = set()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{source} line {number}"
        parts = line.split()
        if len(parts) < 2 or not _NAME.match(parts[0]):
            raise ConfigError(f"{where}: expected `NAME sha256:HEX [operator] [max_priority=N]`")
        match = _HASH.match(parts[1])
        if not match:
            raise ConfigError(f"{where}: the key must be given as sha256:<64 hex digits> (e.g. `printf %s SECRET | sha256sum`)")
        operator, max_priority = False, None
        for option in parts[2:]:
            if option == "operator":
                operator = True
            elif option.startswith("max_priority="):
                try:
                    max_priority = int(option.partition("=")[2])
                except ValueError:
                    raise ConfigError(f"{where}: max_priority takes an integer, got {option!r}") from None
            else:
                raise ConfigError(f"{where}: unknown option {option!r} (known: operator, max_priority=N)")
        if parts[0] in names:
            raise ConfigError(f"{where}: key name {parts[0]!r} is repeated")
        digest = match.group(1).lower()
        if digest in keys:
            raise ConfigError(f"{where}: the same secret is given to {keys[digest].name} and {parts[0]}")
        names.add(parts[0])
        keys[digest] = ApiKey(parts[0], digest, operator, max_priority)
    return keys


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


class KeyRing:
    """The keys in force; `request_reload()` (from a signal handler) makes the next lookup re-read the file."""

    def __init__(self, path: Path | None, allow_anonymous: bool = False) -> None:
        self.path = path
        self.allow_anonymous = allow_anonymous
        self._keys: dict[str, ApiKey] = self._read() if path is not None else {}
        self._reload = threading.Event()
        self._lock = threading.Lock()

    def _read(self) -> dict[str, ApiKey]:
        assert self.path is not None
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read api.keys_file {self.path}: {exc.strerror or exc}") from None
        return parse_keys(text, str(self.path))

    def __len__(self) -> int:
        return len(self._keys)

    def request_reload(self) -> None:
        self._reload.set()

    def reload_if_asked(self) -> bool:
        """Re-read the file if SIGHUP asked; a bad file keeps the old keys (logged). True if a reload ran."""
        if not self._reload.is_set():
            return False
        with self._lock:
            if not self._reload.is_set():
                return False
            self._reload.clear()
            if self.path is None:
                return True
            try:
                self._keys = self._read()
                log.info("reloaded %d API key(s) from %s", len(self._keys), self.path)
            except ConfigError as exc:
                log.error("%s; keeping the %d key(s) in force", exc, len(self._keys))
        return True

    def authenticate(self, authorization: str | None) -> ApiKey:
        """The key for an `Authorization` header value, or a 401."""
        self.reload_if_asked()
        if not authorization:
            if self.allow_anonymous:
                return ApiKey(ANONYMOUS, "")
            raise unauthorized("You didn't provide an API key. Send it as `Authorization: Bearer KEY`.")
        scheme, _, secret = authorization.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise unauthorized("The Authorization header must be `Bearer KEY`.")
        digest = hash_secret(secret.strip())
        found = None
        for known, key in self._keys.items():  # every entry compared in constant time
            if hmac.compare_digest(known, digest):
                found = key
        if found is None:
            raise unauthorized("Incorrect API key provided.")
        return found
