"""Registry credentials: Shifter's own file (written by ``shifterimg login``) and Docker's.

Shifter's file (default ``$XDG_CONFIG_HOME/shifter/auth.json``, else
``~/.config/shifter/auth.json``) uses Docker's layout, ``{"auths": {"host": {"auth":
base64("user:password")}}}``, is created mode 0600 in a 0700 directory and replaced
atomically.  When it has no entry, ``$DOCKER_CONFIG/config.json`` (else
``~/.docker/config.json``) is read; its credential helpers (``credsStore``) are not run.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from shifter._fastjson import loads as _json_loads
from shifter.errors import ConfigError
from shifter.oci.reference import DOCKER_HUB


@dataclass(frozen=True)
class Credential:
    """A user name and password (or token) for one registry."""

    username: str
    password: str

    def __repr__(self) -> str:  # never print the secret
        return f"Credential(username={self.username!r}, password='***')"


def normalize_registry(name: str) -> str:
    """The key a registry is stored under: a bare ``host[:port]``, Docker Hub as ``docker.io``."""
    name = name.strip()
    if "://" in name:
        name = urlsplit(name).netloc
    name = name.split("/", 1)[0].lower()
    if name in ("index.docker.io", "registry-1.docker.io", "docker.io"):
        return DOCKER_HUB
    return name


def _default_path(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "shifter" / "auth.json"


def _docker_path(environ: Mapping[str, str]) -> Path:
    base = environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    return Path(base) / "config.json"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise ConfigError(f"cannot read credentials file {path}: {err.strerror}") from None
    try:
        data = _json_loads(text)
    except ValueError:
        raise ConfigError(f"credentials file {path} is not valid JSON",
                          hint="fix or remove it, then run 'shifterimg login' again") from None
    if not isinstance(data, dict):
        raise ConfigError(f"credentials file {path} is not a JSON object", hint="fix or remove it")
    return data


def _decode(entry: object, path: Path, key: str) -> Credential | None:
    if not isinstance(entry, dict):
        return None
    if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
        return Credential(entry["username"], entry["password"])
    auth = entry.get("auth")
    if not isinstance(auth, str) or not auth:
        return None
    try:
        user, sep, password = base64.b64decode(auth, validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        sep = ""
    if not sep:
        raise ConfigError(f"credentials for {key} in {path} are not base64('user:password')",
                          hint=f"run 'shifterimg login {key}' again")
    return Credential(user, password)


def _find(auths: object, registry: str, path: Path) -> Credential | None:
    if not isinstance(auths, dict):
        return None
    for key, entry in auths.items():
        if isinstance(key, str) and normalize_registry(key) == registry:
            found = _decode(entry, path, key)
            if found is not None:
                return found
    return None


class CredentialStore:
    """Looks up and stores registry credentials (see the module docstring)."""

    def __init__(self, path: Path | str | None = None, docker_config: Path | str | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.path = Path(path) if path is not None else _default_path(env)
        self.docker_config = Path(docker_config) if docker_config is not None else _docker_path(env)

    def lookup(self, registry: str) -> Credential | None:
        """Credentials for ``registry`` (``host[:port]``, a URL, or ``docker.io``), or ``None``."""
        key = normalize_registry(registry)
        for path in (self.path, self.docker_config):
            found = _find(_read_json(path).get("auths"), key, path)
            if found is not None:
                return found
        return None

    def store(self, registry: str, username: str, password: str) -> None:
        """Save credentials for ``registry`` in Shifter's file (mode 0600, atomic replace)."""
        if ":" in username:
            raise ConfigError("a registry user name cannot contain ':'")
        data = _read_json(self.path)
        auths = data.get("auths")
        if not isinstance(auths, dict):
            auths = data["auths"] = {}
        token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        auths[normalize_registry(registry)] = {"auth": token}
        self._write(data)

    def erase(self, registry: str) -> bool:
        """Forget Shifter's credentials for ``registry``; ``True`` if there were any."""
        data = _read_json(self.path)
        auths = data.get("auths")
        key = normalize_registry(registry)
        if not isinstance(auths, dict):
            return False
        doomed = [k for k in auths if isinstance(k, str) and normalize_registry(k) == key]
        for k in doomed:
            del auths[k]
        if doomed:
            self._write(data)
        return bool(doomed)

    def _write(self, data: dict[str, Any]) -> None:
        directory = self.path.parent
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".auth-", suffix=".tmp", dir=directory)  # mode 0600
        except OSError as err:
            raise ConfigError(f"cannot write credentials to {self.path}: {err.strerror}") from None
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle, indent=2)
                handle.write("\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except OSError as err:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise ConfigError(f"cannot write credentials to {self.path}: {err.strerror}") from None


__all__ = ["Credential", "CredentialStore", "normalize_registry"]
