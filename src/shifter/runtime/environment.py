"""The container's environment, composed in a fixed order from hostile inputs.

Order (later wins; a variable keeps the position where it was first set):

1. the caller's environment (skipped with ``--clearenv``);
   then the container user's identity: ``HOME``, ``USER``, ``LOGNAME`` and ``SHELL`` from the
   user's passwd entry (:func:`identity_env`) -- replacing the caller's values when root acts for
   another user (``--user``: root's ``HOME=/root`` must not reach the user's job), else only where
   the caller's environment lacks them (``--clearenv``);
2. the image's ``ENV``;
3. each ``--env-file``, in order;
4. each ``--env``, in order;
5. each selected module's rules, then the site's: ``siteEnv`` (set), ``siteEnvAppend`` and
   ``siteEnvPrepend`` (``:``-joined path lists), ``siteEnvUnset``.

Every name must be a valid identifier.  Names from the caller's environment or the image that
are not (bash exports functions as ``BASH_FUNC_f%%``) are dropped and reported; names the user
typed (``--env``, ``--env-file``) are refused with an error.

Dynamic-loader variables (``LD_PRELOAD``, ``LD_LIBRARY_PATH``, …) are passed into the
container — what the user runs inside is their business — but they are reported in
:attr:`ComposedEnv.unsafe` so the privileged edge can assert that no privileged step runs with
them: it never passes this environment to anything but the final ``execve`` of the user's
command, and runs helpers with :data:`PRIVILEGED_ENV`.

Stdlib only: this module is on the launch path.
"""

from __future__ import annotations

import os
import stat

from shifter._record import Record
from shifter.config.site import ModuleConfig, SiteConfig
from shifter.errors import ConfigError, UsageError
from shifter.runtime.asuser import AsUser
from shifter.runtime.spec import Identity

TYPE_CHECKING = False  # typing, collections: not on the launch path
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

# glibc's UNSECURE_ENVVARS (ignored by ld.so for setuid programs), plus GLIBC_TUNABLES and the
# variables that steer the Python interpreter the launcher itself runs in.
_UNSAFE_EXACT = frozenset({
    "GCONV_PATH", "GETCONF_DIR", "GLIBC_TUNABLES", "HOSTALIASES", "LOCALDOMAIN", "LOCPATH",
    "MALLOC_ARENA_MAX", "MALLOC_ARENA_TEST", "MALLOC_PERTURB_", "MALLOC_TRACE", "MALLOC_TOP_PAD_",
    "MALLOC_MMAP_MAX_",
    "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "NIS_PATH", "NLSPATH", "RESOLV_HOST_CONF",
    "RES_OPTIONS", "TMPDIR", "TZDIR",
})
_UNSAFE_PREFIXES = ("LD_", "PYTHON")

#: The whole environment of any helper the privileged edge runs (never the user's).
PRIVILEGED_ENV: tuple[tuple[str, str], ...] = (("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), ("LANG", "C"))

ENV_FILE_MAX_BYTES = 1024 * 1024


class EnvRules(Record):
    """One layer of ``siteEnv``-style rules: the site's, or one module's."""

    origin: str
    set: tuple[str, ...] = ()
    append: tuple[str, ...] = ()
    prepend: tuple[str, ...] = ()
    unset: tuple[str, ...] = ()

    @classmethod
    def from_module(cls, module: ModuleConfig) -> EnvRules:
        return cls(f"module_{module.name}", module.site_env, module.site_env_append, module.site_env_prepend,
                   module.site_env_unset)

    @classmethod
    def from_site(cls, config: SiteConfig) -> EnvRules:
        return cls("site", config.site_env, config.site_env_append, config.site_env_prepend,
                   config.site_env_unset)


class ComposedEnv(Record):
    """The result: the final environment, in order, and what was noticed on the way."""

    env: tuple[tuple[str, str], ...]
    unsafe: tuple[str, ...]  # loader/interpreter variables present in ``env``
    dropped: tuple[str, ...]  # invalid names dropped from the caller's environment or the image


def is_valid_name(name: str) -> bool:
    """True for a portable environment variable name (``[A-Za-z_][A-Za-z0-9_]*``)."""
    return name.isascii() and name.isidentifier()  # [A-Za-z_][A-Za-z0-9_]*, without re


def is_unsafe_name(name: str) -> bool:
    """True for variables that change how a dynamic loader or the Python launcher behaves."""
    return name in _UNSAFE_EXACT or name.startswith(_UNSAFE_PREFIXES)


def parse_assignment(text: str, where: str, error: type[ConfigError] = UsageError) -> tuple[str, str]:
    """Split ``NAME=value``; ``where`` names the origin for the error message."""
    name, sep, value = text.partition("=")
    if not sep:
        raise error(f"{where}: expected NAME=value", hint="write e.g. --env=OMP_NUM_THREADS=4")
    if not is_valid_name(name):
        raise error(f"{where}: {name[:64]!r} is not a valid variable name",
                    hint="names are letters, digits and '_', not starting with a digit")
    if "\0" in value:
        raise error(f"{where}: the value of {name} contains a NUL byte")
    return name, value


def parse_env_file(text: str, source: str) -> list[tuple[str, str]]:
    """Parse an ``--env-file``: ``NAME=value`` lines, ``#`` comments, blank lines.

    The value is everything after the first ``=``, literally (no quotes are removed).  Errors
    name ``file:line`` but never echo the line, since the file may not be the user's to read.
    """
    pairs: list[tuple[str, str]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.lstrip()
        if not line or line.startswith("#"):
            continue
        pairs.append(parse_assignment(line, f"{source}:{number}"))
    return pairs


def read_text_for(path: str, identity: Identity | None = None, limit: int = ENV_FILE_MAX_BYTES) -> str:
    """Read a small text file the user named, with the user's rights.

    When the process is root acting for another user (``--user``), the file is opened with the
    user's effective ids (:class:`~shifter.runtime.asuser.AsUser`: the kernel checks every
    directory on the way and every link, so root's rights are never lent to the user), and its
    mode must let ``identity`` read it.  Only regular files up to ``limit`` bytes are read.
    """
    try:
        if identity is not None:
            with AsUser(identity):
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
        else:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as err:
        raise UsageError(f"cannot open {path}: {err.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise UsageError(f"{path} is not a regular file")
    with os.fdopen(fd, "rb") as handle:
        acting_for_user = identity is not None and os.geteuid() == 0 and identity.uid != 0
        if acting_for_user and identity is not None and not _mode_allows(st, identity):
            raise UsageError(f"cannot open {path}: Permission denied",
                             hint=f"the file must be readable by {identity.user}")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise UsageError(f"{path} is larger than {limit} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text") from None


def _mode_allows(st: os.stat_result, identity: Identity) -> bool:
    if st.st_uid == identity.uid:
        return bool(st.st_mode & stat.S_IRUSR)
    if st.st_gid == identity.gid or st.st_gid in identity.groups:
        return bool(st.st_mode & stat.S_IRGRP)
    return bool(st.st_mode & stat.S_IROTH)


def image_env_pairs(entries: Iterable[object]) -> tuple[list[tuple[str, str]], list[str]]:
    """The image's ``ENV`` list (``["K=V", ...]``) as pairs, plus names dropped as invalid."""
    pairs: list[tuple[str, str]] = []
    dropped: list[str] = []
    for entry in entries:
        if not isinstance(entry, str):
            dropped.append(repr(entry)[:64])
            continue
        name, sep, value = entry.partition("=")
        if sep and is_valid_name(name) and "\0" not in value:
            pairs.append((name, value))
        else:
            dropped.append(name[:64])
    return pairs, dropped


def apply_rules(env: dict[str, str], rules: EnvRules) -> None:
    """Apply one layer of site/module rules to ``env`` in place."""
    where = f"udiRoot.conf ({rules.origin})"
    for entry in rules.set:
        name, value = parse_assignment(entry, f"{where} siteEnv", ConfigError)
        env[name] = value
    for entry in rules.append:
        name, value = parse_assignment(entry, f"{where} siteEnvAppend", ConfigError)
        env[name] = f"{env[name]}:{value}" if env.get(name) else value
    for entry in rules.prepend:
        name, value = parse_assignment(entry, f"{where} siteEnvPrepend", ConfigError)
        env[name] = f"{value}:{env[name]}" if env.get(name) else value
    for name in rules.unset:
        env.pop(name, None)


def identity_env(identity: Identity) -> tuple[tuple[str, str], ...]:
    """``HOME``, ``USER``, ``LOGNAME`` (and ``SHELL`` when the passwd entry has one) of the user
    the container runs as, in that order (``fastpath.identity_pairs`` is the same)."""
    pairs = (("HOME", identity.home), ("USER", identity.user), ("LOGNAME", identity.user))
    return (*pairs, ("SHELL", identity.shell)) if identity.shell else pairs


def apply_identity(env: dict[str, str], pairs: Iterable[tuple[str, str]], replace: bool) -> None:
    """Set the identity variables in ``env``: all of them when ``replace`` (root acting for another
    user), else only those missing."""
    for name, value in pairs:
        if replace or name not in env:
            env[name] = value


def compose_environment(caller: Mapping[str, str], *, clearenv: bool = False, image: Sequence[object] = (),
                        files: Sequence[Sequence[tuple[str, str]]] = (), cli: Sequence[tuple[str, str]] = (),
                        rules: Sequence[EnvRules] = (), identity: Sequence[tuple[str, str]] = (),
                        replace_identity: bool = False) -> ComposedEnv:
    """Compose the container environment in the documented order (see the module docstring).

    ``identity``: :func:`identity_env` of the container user; ``replace_identity`` when the caller
    is someone else (root with ``--user``)."""
    env: dict[str, str] = {}
    dropped: list[str] = []
    if not clearenv:
        for name, value in caller.items():
            if is_valid_name(name) and "\0" not in value:
                env[name] = value
            else:
                dropped.append(name[:64])
    apply_identity(env, identity, replace_identity)
    image_pairs, image_dropped = image_env_pairs(image)
    dropped.extend(image_dropped)
    for pairs in (image_pairs, *files, cli):
        env.update(pairs)
    for layer in rules:
        apply_rules(env, layer)
    unsafe = tuple(name for name in env if is_unsafe_name(name))
    return ComposedEnv(env=tuple(env.items()), unsafe=unsafe, dropped=tuple(dropped))


__all__ = ["ENV_FILE_MAX_BYTES", "PRIVILEGED_ENV", "ComposedEnv", "EnvRules", "apply_identity", "apply_rules",
           "compose_environment", "identity_env", "image_env_pairs", "is_unsafe_name", "is_valid_name",
           "parse_assignment", "parse_env_file", "read_text_for"]
