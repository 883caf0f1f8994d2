"""``shifter-gateway serve``: run the REST gateway on uvicorn until SIGINT/SIGTERM."""

from __future__ import annotations

import logging

from shifter.config.site import SiteConfig
from shifter.errors import UsageError
from shifter.gateway.gwconfig import load_gateway_config


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--listen {text!r} is not HOST:PORT", hint="e.g. --listen 0.0.0.0:7777")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104  (the admin asked for it)


def serve(site: SiteConfig, listen: str, config_file: str | None, *, log_level: str = "info") -> None:
    import uvicorn  # noqa: PLC0415

    from shifter.gateway.api import create_app  # noqa: PLC0415
    from shifter.gateway.engine import Gateway  # noqa: PLC0415

    host, port = parse_listen(listen)
    config = load_gateway_config(site, config_file)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per registry request is too much
    gateway = Gateway(config)
    gateway.start()
    try:
        uvicorn.run(create_app(gateway), host=host, port=port, log_level=log_level, access_log=False,
                    timeout_graceful_shutdown=5)
    finally:
        gateway.close()


__all__ = ["parse_listen", "serve"]
