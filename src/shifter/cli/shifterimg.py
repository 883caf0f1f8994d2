"""``shifterimg``: pull, list, look up, inspect, remove and import images; log in to registries.

Names, options and output follow NERSC Shifter's ``shifterimg`` (``images``, ``lookup``,
``pull``, ``login``; ``-v``, ``-u``, ``-g``, ``-s``) so existing users and scripts feel at home.
The gateway's service runs in-process against the local store (site store if writable, else the
per-user store), or, when ``imageGateway`` is set, remotely (:class:`shifter.gateway.client.GatewayClient`:
same commands, output and exit codes).

:func:`main` is the only place that turns a :class:`~shifter.errors.ShifterError` into
``shifterimg: error: <message> (hint: ...)`` on stderr and its exit code (docs/cli.md).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NoReturn, cast

import click
import httpx

from shifter.cli.boundary import EXIT_INTERRUPTED, exit_quietly, guard, usage_error, wants_verbose
from shifter.cli.imagelist import familiar_name, format_image_rows
from shifter.cli.progress import progress_for, timestamp
from shifter.config.site import SiteConfig, load_config
from shifter.errors import (
    AuthenticationError,
    ImageNotFoundError,
    ImageNotReadyError,
    ImageReferenceError,
    RegistryError,
    RegistryUnavailableError,
    ShifterError,
    UsageError,
)
from shifter.gateway.acl import PUBLIC, ImageAcl, resolve_acl
from shifter.gateway.service import ImageService
from shifter.gateway.stores import Caller
from shifter.registry.auth import RegistryAuth
from shifter.registry.credentials import Credential, CredentialStore, normalize_registry
from shifter.registry.endpoints import base_url, plain_http_allowed
from shifter.registry.responses import request_failure

PROG = "shifterimg"


class LookupMissError(ShifterError):
    """``lookup`` of an unknown or not-ready image: exit 1, as NERSC's ``shifterimg lookup``."""

    exit_code = 1


@dataclass
class App:
    """State shared by the commands of one invocation (config and service are loaded lazily)."""

    verbose: bool = False
    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    system: str | None = None
    _config: SiteConfig | None = None
    _service: ImageService | None = None
    _caller: Caller | None = None
    out: IO[str] = field(default_factory=lambda: sys.stdout)

    @property
    def config(self) -> SiteConfig:
        if self._config is None:
            self._config = load_config()
        return self._config

    @property
    def caller(self) -> Caller:
        if self._caller is None:
            self._caller = Caller.current()
        return self._caller

    @property
    def service(self) -> ImageService:
        """The gateway service: remote with ``imageGateway``, else embedded (opened on first use:
        ``login`` never opens the database)."""
        if self._service is None:
            if self.config.image_gateway:
                from shifter.gateway.client import GatewayClient  # noqa: PLC0415

                self._service = cast(ImageService, GatewayClient(self.config))
            else:
                self._service = ImageService.embedded(self.config, self.caller)
        return self._service


pass_app = click.make_pass_decorator(App)


def _split_list(_ctx: click.Context, _param: click.Parameter, value: Sequence[str]) -> tuple[str, ...]:
    return tuple(item.strip() for entry in value for item in entry.split(",") if item.strip())


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", is_flag=True, help="Say more: every progress event, and error causes.")
@click.option("-u", "--user", "users", multiple=True, callback=_split_list, metavar="USER[,USER...]",
              help="pull/import: a private image, usable only by these users (names or uids) and root.")
@click.option("-g", "--group", "groups", multiple=True, callback=_split_list, metavar="GROUP[,GROUP...]",
              help="pull/import: a private image, usable only by these groups (names or gids) and root.")
@click.option("-s", "--system", default=None, metavar="SYSTEM",
              help="The system to act on; must be this site's 'system' (accepted for NERSC compatibility).")
@click.version_option(package_name="shifter", prog_name=PROG)
@click.pass_context
def cli(ctx: click.Context, verbose: bool, users: tuple[str, ...], groups: tuple[str, ...],
        system: str | None) -> None:
    """Manage Shifter container images: pull them from registries into the image store."""
    app = ctx.ensure_object(App)  # tests hand in an App with a substitute service
    app.verbose, app.users, app.groups, app.system = verbose, users, groups, system
    if system and system != app.config.system:
        raise UsageError(f"system {system!r} is not served here",
                         hint=f"this site's system is {app.config.system!r} "
                              f"(system= in {app.config.source or 'the site configuration'})")


# --------------------------------------------------------------------------- pull
def _display_name(arg: str, default_type: str) -> str:
    """``ubuntu:22.04`` -> ``docker:ubuntu:22.04`` (what NERSC prints as ``type:tag``)."""
    prefix, sep, _rest = arg.partition(":")
    if sep and prefix in ("docker", "id", "local"):
        return arg
    return f"{default_type}:{arg}"


def _status_line(app: App, verb: str, arg: str, status: str) -> None:
    name = _display_name(arg, app.config.default_image_type)
    click.echo(f"{timestamp()} {verb} Image: {name}, status: {status}", file=app.out)


def _requested_acl(app: App, public: bool = False) -> ImageAcl | None:
    """``-u``/``-g`` as a private ACL of numeric ids (unknown names: exit 2); ``--public`` as
    PUBLIC; None when neither was given (the service's defaults apply)."""
    acl = resolve_acl(app.users, app.groups, requester_uid=app.caller.uid)
    if public and acl is not None:
        raise UsageError("--public cannot go with -u/--user or -g/--group",
                         hint="give either --public (everyone) or the users and groups who may use the image")
    return PUBLIC if public else acl


PUBLIC_HELP = ("Make the image usable by everyone, also when your registry credentials were used "
               "(such pulls are private to you by default); only the image's owner or an admin may.")


@cli.command()
@click.argument("image", metavar="[TYPE:]IMAGE")
@click.option("-q", "--quiet", is_flag=True, help="No progress display, only the final status line.")
@click.option("--public", is_flag=True, help=PUBLIC_HELP)
@pass_app
def pull(app: App, image: str, quiet: bool, public: bool) -> None:
    """Pull IMAGE (e.g. docker:ubuntu:22.04, or host:5000/team/app@sha256:...) until it is READY."""
    acl = _requested_acl(app, public)
    service = app.service
    with progress_for(sys.stderr, quiet=quiet, tty=False if app.verbose else None) as sink:
        record = service.pull(image, app.caller, sink, acl=acl)
    _status_line(app, "Pulling", image, _status(record))


def _status(record: Any) -> str:
    status = getattr(record, "status", "READY")
    return str(getattr(status, "value", status))


# --------------------------------------------------------------------------- import

@cli.command(name="import")
@click.argument("archive", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("image", metavar="[TYPE:]IMAGE")
@click.option("-q", "--quiet", is_flag=True, help="No progress display, only the final status line.")
@click.option("--public", is_flag=True, help="Make an existing image with this digest public again "
                                             "(its owner or an admin only).")
@pass_app
def import_(app: App, archive: Path, image: str, quiet: bool, public: bool) -> None:
    """Import ARCHIVE (docker save / docker-archive or OCI-layout tarball) as IMAGE, for offline sites."""
    acl = _requested_acl(app, public)
    service = app.service
    with progress_for(sys.stderr, quiet=quiet, tty=False if app.verbose else None) as sink:
        record = service.import_archive(archive, image, app.caller, sink, acl=acl)
    _status_line(app, "Importing", image, _status(record))


# --------------------------------------------------------------------------- images
@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list (one object per tag) instead.")
@pass_app
def images(app: App, as_json: bool) -> None:
    """List images: system, type, status, id (short), pulled at, tag."""
    rows = app.service.images()
    if as_json:
        click.echo(json.dumps(rows, indent=2, sort_keys=True, default=str), file=app.out)
        return
    for line in format_image_rows(rows):
        click.echo(line, file=app.out)


# --------------------------------------------------------------------------- lookup / inspect / rm
@cli.command()
@click.argument("image", metavar="[TYPE:]IMAGE")
@pass_app
def lookup(app: App, image: str) -> None:
    """Print the id of IMAGE if it is READY; exit 1 if it is unknown or not ready."""
    try:
        image_id = app.service.lookup(image)
    except (ImageNotFoundError, ImageNotReadyError) as err:
        raise LookupMissError(err.message, hint=err.hint) from err
    click.echo(image_id, file=app.out)


INSPECT_FIELDS = ("id", "digest", "tags", "env", "entrypoint", "cmd", "workdir", "user", "labels", "layers",
                  "size", "created", "status")


@cli.command()
@click.argument("image", metavar="[TYPE:]IMAGE")
@pass_app
def inspect(app: App, image: str) -> None:
    """Print IMAGE's metadata as JSON (id, digest, tags, env, entrypoint, cmd, ... status)."""
    info = dict(app.service.inspect(image))
    for key in INSPECT_FIELDS:
        info.setdefault(key, None)
    click.echo(json.dumps(info, indent=2, sort_keys=True, default=str), file=app.out)


@cli.command(name="rm")
@click.argument("image", metavar="[TYPE:]IMAGE")
@pass_app
def rm(app: App, image: str) -> None:
    """Remove the tag IMAGE (its files go with its last tag), or a whole image given as id:<hex>."""
    for removed in app.service.remove(image, app.caller):
        kind, _, name = removed.partition(":")
        click.echo(f"removed {kind}:{familiar_name(name)}", file=app.out)


# --------------------------------------------------------------------------- login
def _read_password(password_stdin: bool) -> str:
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise UsageError("no password on standard input",
                             hint="echo \"$TOKEN\" | shifterimg login -u NAME --password-stdin REGISTRY")
        return password
    if not sys.stdin.isatty():
        raise UsageError("cannot prompt for a password: standard input is not a terminal",
                         hint="pipe it in with --password-stdin")
    return str(click.prompt("Password", hide_input=True, err=True))


def _registry_host(registry: str | None) -> str:
    host = normalize_registry(registry or "docker.io")
    if not host or "/" in host or any(c.isspace() for c in host):
        raise ImageReferenceError(f"{registry!r} is not a registry host",
                                  hint="write e.g. registry.example.org:5000")
    return host


def verify_login(config: SiteConfig, host: str, credential: Credential) -> None:
    """Check ``credential`` like ``docker login``: ``GET /v2/`` must succeed with it.

    Uses the registry client's auth flow (Basic, or a Bearer token from the challenge's realm).
    """
    api_host = "registry-1.docker.io" if host == "docker.io" else host
    auth = RegistryAuth(lambda _netloc: credential, lambda netloc: plain_http_allowed(netloc, config))
    url = f"{base_url(api_host, config)}/v2/"
    try:
        connect, idle, _total = config.registry_timeout
        with httpx.Client(auth=auth, timeout=httpx.Timeout(float(idle), connect=float(connect)),
                          follow_redirects=True) as client:
            response = client.get(url)
    except httpx.TransportError as err:
        raise RegistryUnavailableError(f"cannot reach registry {host}: {err}",
                                       hint="check the name and port, and that the registry is up") from None
    except httpx.RequestError as err:  # a redirect loop
        raise request_failure(host, err) from None
    if response.status_code in (401, 403):
        raise AuthenticationError(f"registry {host} rejected the credentials of {credential.username} "
                                  f"(HTTP {response.status_code})", hint="check the user name and password")
    if response.status_code >= 400:
        raise RegistryError(f"registry {host} answered HTTP {response.status_code} to {url}",
                            hint="is this a container registry (Distribution API v2)?")


@cli.command()
@click.argument("registry", required=False)
@click.option("-u", "--username", help="User name (prompted for when missing).")
@click.option("--password-stdin", is_flag=True, help="Read the password (or token) from standard input.")
@click.option("--no-verify", is_flag=True, help="Store the credentials without checking them first.")
@pass_app
def login(app: App, registry: str | None, username: str | None, password_stdin: bool,
          no_verify: bool) -> None:
    """Store credentials for REGISTRY (default docker.io) in a mode-0600 file, after checking them."""
    host = _registry_host(registry)
    if not username:
        if password_stdin or not sys.stdin.isatty():
            raise UsageError("no user name given", hint="add -u/--username NAME")
        username = str(click.prompt("Username", err=True))
    password = _read_password(password_stdin)
    credential = Credential(username, password)
    if not no_verify:
        verify_login(app.config, host, credential)
    store = CredentialStore()
    store.store(host, username, password)
    if no_verify:
        click.echo(f"Credentials for {host} stored in {store.path} without checking them (--no-verify)",
                   file=app.out)
    else:
        click.echo(f"Login succeeded: credentials for {host} saved in {store.path}", file=app.out)


@cli.command()
@click.argument("registry", required=False)
@pass_app
def logout(app: App, registry: str | None) -> None:
    """Forget the stored credentials for REGISTRY (default docker.io)."""
    host = _registry_host(registry)
    if CredentialStore().erase(host):
        click.echo(f"Removed credentials for {host}", file=app.out)
    else:
        click.echo(f"No stored credentials for {host}", file=app.out)


# --------------------------------------------------------------------------- entry point
def _report(err: ShifterError, verbose: bool) -> int:
    click.echo(f"{PROG}: error: {err.render()}", err=True)
    cause = err.__cause__ or err.__context__
    if verbose and cause is not None and not isinstance(cause, ShifterError):
        click.echo(f"{PROG}: cause: {cause.__class__.__name__}: {cause}", err=True)
    return err.exit_code


def _fail_usage(err: click.ClickException) -> int:
    """One line, as every error (click would print the usage and a blank line first)."""
    command = err.ctx.command_path if isinstance(err, click.UsageError) and err.ctx else PROG
    return usage_error(PROG, err.format_message(), command)


def run(argv: Sequence[str], app: App | None = None) -> int:
    """Run one ``shifterimg`` command line; return its exit code (docs/cli.md lists them)."""
    args = list(argv)
    verbose = any(a in ("-v", "--verbose") for a in args)
    try:
        result = cli.main(args=args, prog_name=PROG, standalone_mode=False, obj=app)
        return result if isinstance(result, int) else 0
    except ShifterError as err:
        return _report(err, verbose)
    except click.exceptions.Abort as err:
        if isinstance(err.__cause__ or err.__context__, EOFError):
            click.echo(f"{PROG}: error: no input", err=True)
            return 1
        click.echo(f"{PROG}: interrupted", err=True)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        click.echo(f"{PROG}: interrupted", err=True)
        return EXIT_INTERRUPTED
    except click.ClickException as err:
        return _fail_usage(err)
    except click.exceptions.Exit as err:
        return err.exit_code


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Console entry point: run the command; any exception becomes one line on stderr and an
    exit code (:mod:`shifter.cli.boundary`)."""
    args = list(sys.argv[1:] if argv is None else argv)
    exit_quietly(guard(PROG, lambda: run(args), verbose=wants_verbose(args)))


if __name__ == "__main__":  # pragma: no cover
    main()
