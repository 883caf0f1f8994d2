"""``shifterimg``'s entry point, with a fast path for ``lookup`` and ``images``.

Slurm's integration and NERSC's runtime call ``shifterimg lookup`` for every job, and a full
``shifterimg`` costs ~0.7 s, most of it importing click, httpx and SQLAlchemy.  A hit needs none
of them: it reads the same store files (and, for ``images``, the same SQLite database, through
:mod:`shifter.gateway.sqlite_reader`) that the full path reads, and prints the same output.

It is a cache of the full path, never a second opinion: anything it does not serve exactly —
another command or option, an image that is not READY or not found, an ``id:`` or ``local:``
image, a remote ``imageGateway``, a PostgreSQL database, any error — goes to
:func:`shifter.cli.shifterimg.main`, which prints the answer (or the error) the documented way.
Output is printed only once everything succeeded, so a fallback never repeats a line.
``tests/unit/test_cli_imgfast.py`` holds both paths to the same answers.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import NoReturn

    from shifter.config.site import SiteConfig
    from shifter.gateway.stores import StoreChoice


def _setup() -> tuple[SiteConfig, StoreChoice] | None:
    from shifter.config.site import load_config  # noqa: PLC0415
    from shifter.gateway.stores import Caller, choose_store  # noqa: PLC0415

    config = load_config()
    if config.image_gateway:
        return None  # the full path says what it does with a remote gateway
    return config, choose_store(config, Caller.current())


def lookup_text(image: str) -> str | None:
    """``shifterimg lookup IMAGE``'s output for a READY docker image; None: take the full path."""
    from shifter.oci.reference import parse_image_arg  # noqa: PLC0415

    setup = _setup()
    if setup is None:
        return None
    config, choice = setup
    image_type, value = parse_image_arg(image, config.default_image_type)
    if image_type != "docker":
        return None
    for store in (choice.store, *choice.also_search):  # the service's order (ImageService._find)
        image_id = store.resolve_tag(image_type, str(value))
        if image_id:
            return f"{image_id}\n" if store.is_ready(image_id) else None
    return None


def images_text(as_json: bool) -> str | None:
    """``shifterimg images [--json]``'s output from a SQLite database; None: take the full path."""
    import json  # noqa: PLC0415
    import os  # noqa: PLC0415

    from shifter.cli.imagelist import format_image_rows  # noqa: PLC0415
    from shifter.gateway import sqlite_reader  # noqa: PLC0415
    from shifter.gateway.listing import primary_rows, store_rows  # noqa: PLC0415

    setup = _setup()
    if setup is None:
        return None
    config, choice = setup
    path = sqlite_reader.sqlite_path(choice.database_url)
    if path is None or not os.path.isfile(path):
        return None  # PostgreSQL, or a store the full path has to create first
    records = sqlite_reader.list_images(path)
    if any(record.status.busy for record in records):
        return None  # the full path first settles pulls whose puller died (ImageService.settle_dead_pullers)
    rows = primary_rows(records, choice.store, choice.kind, config.system, elsewhere=choice.also_search)
    for other in choice.also_search:
        rows += store_rows(other, "site", config.system)
    if as_json:
        return json.dumps(rows, indent=2, sort_keys=True, default=str) + "\n"
    return "".join(f"{line}\n" for line in format_image_rows(rows))


def fast_output(argv: Sequence[str]) -> str | None:
    """What the fast path prints for ``argv``, or None when the full path must answer."""
    args = list(argv)
    try:
        if len(args) == 2 and args[0] == "lookup" and not args[1].startswith("-"):
            return lookup_text(args[1])
        if args in (["images"], ["images", "--json"]):
            return images_text(as_json=len(args) == 2)
    except Exception:  # any doubt: the full path answers, and reports errors properly
        return None
    return None


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Console entry point of ``shifterimg``."""
    args = sys.argv[1:] if argv is None else list(argv)
    text = fast_output(args)
    if text is not None:
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except BrokenPipeError:  # e.g. `shifterimg images | head -1`
            sys.exit(1)
        sys.exit(0)
    from shifter.cli.shifterimg import main as full_main  # noqa: PLC0415

    full_main(args)


if __name__ == "__main__":  # pragma: no cover
    main()
