"""Where to talk to a registry: scheme choice and mirrors.

HTTPS always, except plain HTTP for loopback hosts (``localhost``, ``127.0.0.0/8``, ``::1``)
and for hosts the site lists in ``insecureRegistries``.  Mirrors configured for a registry
(``registryMirror_<host>``) are tried in order before the registry itself.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from shifter.config.site import SiteConfig
from shifter.oci.reference import ImageRef


@dataclass(frozen=True)
class Endpoint:
    """A base URL serving the ``/v2/`` API; ``mirror`` is ``False`` for the registry itself."""

    base_url: str
    mirror: bool = False

    @property
    def netloc(self) -> str:
        return urlsplit(self.base_url).netloc


def split_host(netloc: str) -> str:
    """The host part of ``host[:port]`` / ``[v6]:port``, without brackets, lowercase."""
    netloc = netloc.lower()
    if netloc.startswith("["):
        return netloc[1:].split("]", 1)[0]
    if netloc.count(":") > 1:
        return netloc  # a bare IPv6 address
    return netloc.split(":", 1)[0]


def is_loopback(netloc: str) -> bool:
    """True for ``localhost``, ``127.0.0.0/8`` and ``::1`` (with or without a port)."""
    host = split_host(netloc)
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plain_http_allowed(netloc: str, config: SiteConfig) -> bool:
    """May we (and credentials) use plain HTTP to ``netloc``?"""
    netloc = netloc.lower()
    insecure = {entry.lower().rstrip("/") for entry in config.insecure_registries}
    return is_loopback(netloc) or netloc in insecure or split_host(netloc) in insecure


def base_url(netloc: str, config: SiteConfig) -> str:
    """``http://`` or ``https://`` + ``netloc`` by the rule in the module docstring."""
    scheme = "http" if plain_http_allowed(netloc, config) else "https"
    return f"{scheme}://{netloc}"


def endpoints(ref: ImageRef, config: SiteConfig) -> list[Endpoint]:
    """The mirrors for ``ref``'s registry, in order, then the registry itself."""
    result = []
    for mirror in config.mirrors_for(ref.registry):
        url = mirror.rstrip("/")
        result.append(Endpoint(url if "://" in url else base_url(url, config), mirror=True))
    result.append(Endpoint(base_url(ref.api_host, config)))
    return result


__all__ = ["Endpoint", "base_url", "endpoints", "is_loopback", "plain_http_allowed", "split_host"]
