"""The gateway service's configuration (``shifter-gateway serve --config FILE``, TOML).

Without a file the service runs on defaults derived from ``udiRoot.conf``: one system (the
``system`` key) whose image path is ``imagePath``, local transfer, admins ``gatewayAdmins``, the
default MUNGE socket, and the database next to the store (or ``databaseUrl``).
``etc/gateway.toml.example`` documents every key with its default.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shifter.config.site import SiteConfig
from shifter.errors import ConfigError
from shifter.gateway.auth import DEFAULT_SOCKET

TRANSFERS = ("local", "rsync")
_HINT = "see etc/gateway.toml.example"


@dataclass(frozen=True)
class SystemConfig:
    """One system (cluster) the gateway serves."""

    name: str
    image_path: str
    transfer: str = "local"  # local: the store is on the system's shared filesystem; rsync: copy over ssh
    host: str = ""  # rsync: the ssh destination (user@host); empty: a local path (tests)
    remote_image_path: str = ""  # rsync: imagePath on the remote system
    admins: tuple[str, ...] = ("root",)
    munge_socket: str = DEFAULT_SOCKET
    database_url: str = ""  # default: the gateway's database_url, else sqlite next to image_path

    def database(self, default: str) -> str:
        return self.database_url or default or f"sqlite:///{Path(self.image_path) / 'shifter.db'}"


@dataclass(frozen=True)
class GatewayConfig:
    """Everything ``shifter-gateway serve`` needs."""

    site: SiteConfig
    systems: dict[str, SystemConfig]
    database_url: str = ""
    workers: int = 2
    http_workers: int = 1  # processes answering HTTP (lookups/s scale with them; each has `workers` pull threads)
    expire_after: int = 90 * 86400  # seconds an image may stay unused (no lookup, no pull); 0: never
    pull_update_timeout: int = 300  # a READY tag is re-checked against the registry after this long
    pull_timeout: int = 3600  # a pull with no heartbeat for this long is failed (then pulled again)
    heartbeat: int = 30  # seconds between a worker's heartbeats
    autoexpire_interval: int = 3600  # seconds between automatic sweeps (0: only on request)
    import_users: tuple[str, ...] = ()  # "all", or user names allowed to /api/doimport
    source: str = ""

    def system(self, name: str) -> SystemConfig:
        return self.systems[name]


def from_site(site: SiteConfig) -> GatewayConfig:
    """The defaults: one local system from ``udiRoot.conf``."""
    system = SystemConfig(site.system, site.image_path, admins=site.gateway_admins,
                          database_url=site.database_url)
    return GatewayConfig(site, {site.system: system}, database_url=site.database_url)


def load_gateway_config(site: SiteConfig, path: str | None) -> GatewayConfig:
    """Read ``path`` (TOML) over the defaults; without a path, :func:`from_site`."""
    if not path:
        return from_site(site)
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as err:
        raise ConfigError(f"cannot read gateway config {path}: {err.strerror}", hint=_HINT) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"gateway config {path} is not valid TOML: {err}", hint=_HINT) from None
    return parse_gateway_config(site, data, source=path)


def parse_gateway_config(site: SiteConfig, data: dict[str, Any], source: str = "<dict>") -> GatewayConfig:
    data = dict(data)
    site = _site_overrides(site, data.pop("registries", {}), source)
    systems_data = data.pop("systems", None) or {}
    if not isinstance(systems_data, dict):
        raise ConfigError(f"{source}: [systems] must be a table of systems", hint=_HINT)
    systems = {name: _system(name, value, source) for name, value in systems_data.items()}
    if not systems:
        systems = from_site(site).systems
    known = {f.name for f in dataclasses.fields(GatewayConfig)} - {"site", "systems", "source"}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(sorted(unknown))}", hint=_HINT)
    values: dict[str, Any] = {}
    for key, value in data.items():
        values[key] = _typed(key, value, source)
    config = GatewayConfig(site, systems, source=source, **values)
    if config.workers < 1 or config.http_workers < 1:
        raise ConfigError(f"{source}: workers and http_workers must be at least 1", hint=_HINT)
    return config


def _typed(key: str, value: Any, source: str) -> Any:
    if key in ("database_url",):
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key} must be a string", hint=_HINT)
        return value
    if key == "import_users":
        return _names(key, value, source)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{source}: {key} must be a whole number of seconds (or a count) >= 0", hint=_HINT)
    return value


def _names(key: str, value: Any, source: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{source}: {key} must be a list of names", hint=_HINT)
    return tuple(value)


def _system(name: str, value: Any, source: str) -> SystemConfig:
    if not isinstance(value, dict) or not isinstance(value.get("image_path"), str):
        raise ConfigError(f"{source}: system {name!r} needs image_path", hint=_HINT)
    known = {f.name for f in dataclasses.fields(SystemConfig)} - {"name"}
    unknown = set(value) - known
    if unknown:
        raise ConfigError(f"{source}: system {name!r}: unknown key(s) {', '.join(sorted(unknown))}", hint=_HINT)
    fields = dict(value)
    if "admins" in fields:
        fields["admins"] = _names("admins", fields["admins"], source)
    system = SystemConfig(name=name, **fields)
    if system.transfer not in TRANSFERS:
        raise ConfigError(f"{source}: system {name!r}: transfer must be one of {', '.join(TRANSFERS)}",
                          hint=_HINT)
    if system.transfer == "rsync" and not system.remote_image_path.startswith("/"):
        raise ConfigError(f"{source}: system {name!r}: rsync transfer needs an absolute remote_image_path",
                          hint=_HINT)
    if not system.image_path.startswith("/"):
        raise ConfigError(f"{source}: system {name!r}: image_path must be absolute", hint=_HINT)
    return system


def _site_overrides(site: SiteConfig, registries: Any, source: str) -> SiteConfig:
    """``[registries."host"] mirrors = [...], insecure = true`` over udiRoot.conf's registry keys."""
    if not isinstance(registries, dict):
        raise ConfigError(f"{source}: [registries] must be a table", hint=_HINT)
    mirrors = list(site.registry_mirrors)
    insecure = list(site.insecure_registries)
    for host, entry in registries.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"{source}: registries.{host} must be a table", hint=_HINT)
        mirrors += [(host, url) for url in _names("mirrors", entry.get("mirrors", []), source)]
        if entry.get("insecure") is True:
            insecure.append(host)
    return dataclasses.replace(site, registry_mirrors=tuple(mirrors), insecure_registries=tuple(insecure))


__all__ = ["GatewayConfig", "SystemConfig", "from_site", "load_gateway_config", "parse_gateway_config"]
