"""``shifter-gateway serve``: run the REST gateway on uvicorn until SIGINT/SIGTERM.

``http_workers = 1`` (the default): one process.  More: uvicorn starts that many worker processes
on the one port (the kernel spreads connections); each loads the configuration and runs its own
:class:`~shifter.gateway.engine.Gateway` (job table, sweeper).  They share the store, the
database and the locks, so a tag is still downloaded once (docs/gateway.md, "Several instances").
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from shifter.config.site import SiteConfig, load_config
from shifter.errors import UsageError
from shifter.gateway.gwconfig import GatewayConfig, load_gateway_config

_ENV_CONFIG = "SHIFTER_GATEWAY_CONFIG"  # how worker processes find --config
_ENV_LOG = "SHIFTER_GATEWAY_LOG_LEVEL"


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--listen {text!r} is not HOST:PORT", hint="e.g. --listen 0.0.0.0:7777")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104  (the admin asked for it)


def _logging(log_level: str) -> None:
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per registry request is too much


def build_app(config: GatewayConfig) -> Any:
    """The ASGI app of one process: its Gateway starts (recovering interrupted pulls) with the app's
    lifespan and closes with it."""
    from shifter.gateway.api import create_app  # noqa: PLC0415
    from shifter.gateway.engine import Gateway  # noqa: PLC0415

    gateway = Gateway(config)

    @asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        gateway.start()
        try:
            yield
        finally:
            gateway.close()

    return create_app(gateway, lifespan=lifespan)


def worker_app() -> Any:
    """uvicorn's app factory in each worker process (``http_workers`` > 1)."""
    _logging(os.environ.get(_ENV_LOG, "info"))
    return build_app(load_gateway_config(load_config(), os.environ.get(_ENV_CONFIG) or None))


def serve(site: SiteConfig, listen: str, config_file: str | None, *, log_level: str = "info") -> None:
    import uvicorn  # noqa: PLC0415

    host, port = parse_listen(listen)
    config = load_gateway_config(site, config_file)
    _logging(log_level)
    options: dict[str, Any] = {"host": host, "port": port, "log_level": log_level, "access_log": False,
                               "timeout_graceful_shutdown": 5}
    if config.http_workers > 1:
        os.environ[_ENV_CONFIG] = os.path.abspath(config_file) if config_file else ""
        os.environ[_ENV_LOG] = log_level
        uvicorn.run("shifter.gateway.server:worker_app", factory=True, workers=config.http_workers, **options)
    else:
        uvicorn.run(build_app(config), **options)


__all__ = ["build_app", "parse_listen", "serve", "worker_app"]
