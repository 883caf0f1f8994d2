"""``shifter-gateway``: the image gateway's administration command.

The gateway's service logic (``shifter.gateway.service.ImageService``) runs embedded in
``shifterimg``; this command gives a site admin (or a user, on a per-user store) the
maintenance side of the same store:

``status``   where the store, database and blob cache are, and how many images per state;
``recover``  clean the work files of pulls whose process died and mark them FAILED
             (every pull also does this first; run it after a node crash to tidy up at once);
``prune``    shrink the blob cache to ``cacheMaxSize`` (or ``--max-size``), least recently used first.

``serve``    run the REST gateway (NERSC Shifter compatible API, MUNGE authentication) that
             ``shifterimg`` and the runtime use when ``imageGateway`` is set (docs/gateway.md).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Sequence
from typing import NoReturn

import click

from shifter.cli.boundary import EXIT_INTERRUPTED, exit_quietly, guard, usage_error, wants_verbose
from shifter.config.site import load_config, parse_size
from shifter.errors import ShifterError
from shifter.gateway.repository import redact
from shifter.gateway.service import ImageService

PROG = "shifter-gateway"


def _service() -> ImageService:
    return ImageService.embedded(load_config())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="On an unexpected error, show its full trace.")
@click.version_option(package_name="shifter", prog_name=PROG)
def cli(verbose: bool) -> None:
    """Administer the image store that shifterimg and shifter use."""


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def status(as_json: bool) -> None:
    """Show the store, database, blob cache and image counts by state."""
    service = _service()
    counts = Counter(str(image.get("status", "?")) for image in service.images())
    info = {
        "store": str(service.store.root),
        "store_kind": service.choice.kind,
        "database": redact(service.choice.database_url),
        "cache": str(service.cache.root),
        "cache_bytes": service.cache.total_size(),
        "partial_bytes": service.cache.partial_size(),
        "cache_max_bytes": service.config.cache_max_size,
        "images": dict(sorted(counts.items())),
    }
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        shown = (", ".join(f"{state} {count}" for state, count in value.items()) or "none"
                 if isinstance(value, dict) else value)
        click.echo(f"{key:16} {shown}")


@cli.command()
def recover() -> None:
    """Clean up after pulls whose process died (kill -9, node crash)."""
    service = _service()
    before = service.cache.partial_size()
    cleaned = service.recover(partials=True)
    for image_id in cleaned:
        click.echo(f"recovered {image_id[:12]}: marked FAILED, work files removed")
    click.echo(f"{len(cleaned)} interrupted pull(s) cleaned up; "
               f"{before - service.cache.partial_size()} bytes of partial downloads removed")


@cli.command()
@click.option("--max-size", default=None, help="target size, e.g. 500M or 20G (default: cacheMaxSize)")
def prune(max_size: str | None) -> None:
    """Delete least-recently-used blobs until the cache fits its size cap."""
    service = _service()
    limit = parse_size("--max-size", max_size) if max_size is not None else service.config.cache_max_size
    freed = service.cache.clean_partials()  # left by pulls that died: never resumed by anyone now
    removed = service.cache.prune(max_size=limit)
    click.echo(f"removed {len(removed)} blob(s) and {freed} bytes of partial downloads; "
               f"cache now {service.cache.total_size()} bytes")


@cli.command()
@click.option("--listen", default="127.0.0.1:7777", show_default=True, metavar="HOST:PORT",
              help="Address to serve on.")
@click.option("--config", "config_file", default=None, metavar="FILE",
              help="Gateway config (TOML, see etc/gateway.toml.example); default: derived from udiRoot.conf.")
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
def serve(listen: str, config_file: str | None, log_level: str) -> None:
    """Serve the image gateway over HTTP until interrupted."""
    from shifter.gateway.server import serve as run_server  # noqa: PLC0415  (FastAPI only here)

    run_server(load_config(), listen, config_file, log_level=log_level)


def run(argv: Sequence[str]) -> int:
    """Run one command line; library errors become one line on stderr and their exit code."""
    try:
        cli.main(args=list(argv), prog_name=PROG, standalone_mode=False)
        return 0
    except ShifterError as err:
        click.echo(f"{PROG}: error: {err.render()}", err=True)
        return err.exit_code
    except click.ClickException as err:
        command = err.ctx.command_path if isinstance(err, click.UsageError) and err.ctx else PROG
        return usage_error(PROG, err.format_message(), command)
    except click.exceptions.Abort:
        click.echo(f"{PROG}: interrupted", err=True)
        return EXIT_INTERRUPTED
    except click.exceptions.Exit as err:
        return err.exit_code


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Console entry point; any exception becomes one line and an exit code (:mod:`shifter.cli.boundary`)."""
    args = list(sys.argv[1:] if argv is None else argv)
    exit_quietly(guard(PROG, lambda: run(args), verbose=wants_verbose(args)))
