"""Image references, normalised the way Docker does it, and Shifter's ``type:tag`` syntax.

``ubuntu`` is ``docker.io/library/ubuntu:latest``; ``host:5000/a/b@sha256:...`` keeps its
registry and digest; ``localhost/x`` names a registry on localhost.  The grammar is the one
of distribution's ``reference`` package::

    reference := name [ ":" tag ] [ "@" digest ]
    name      := [ domain "/" ] path-component [ "/" path-component ]*
    domain    := host [ ":" port ]        (a first component with "." or ":", or "localhost")

This module is on the ``shifter`` launch path: stdlib only, no ``httpx``.
"""

from __future__ import annotations

from shifter._record import Record
from shifter.errors import ImageReferenceError

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
DEFAULT_TAG = "latest"
IMAGE_TYPES = ("docker", "id", "local")
MAX_NAME_LENGTH = 255

# The grammar, as regular expressions (``re`` costs ~4 ms to import, so the checks below are
# written out by hand; ``re`` is used only for the rare forms noted there):
#   path component  [a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*
#   domain          (?:C(?:\.C)*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?   C: [a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]
#   tag             [\w][\w.-]{0,127}
#   digest          sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}
#   image id        [0-9a-f]{12,64}
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?"
_TAG_RE = r"[\w][\w.-]{0,127}"
_HEX = frozenset("0123456789abcdef")
_DIGITS = frozenset("0123456789")
_LOWER_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_ALNUM = _LOWER_ALNUM | frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_HOST_CHARS = _ALNUM | {"-"}
_WORD = _ALNUM | {"_"}
_TAG_CHARS = _WORD | {".", "-"}

_HINT = "write e.g. ubuntu:22.04, docker.io/library/ubuntu:22.04 or host:5000/team/app@sha256:<hex>"


class ImageRef(Record):
    """A normalised image reference.

    ``tag`` is ``None`` only for a digest-only reference; ``digest`` is ``None`` unless the
    reference pins one (``...@sha256:<hex>``).
    """

    registry: str
    repository: str
    tag: str | None = DEFAULT_TAG
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> ImageRef:
        """Parse and normalise a Docker image reference (see the module docstring)."""
        return parse_reference(text)

    @property
    def name(self) -> str:
        """``registry/repository`` without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def api_host(self) -> str:
        """The host that serves the registry API (Docker Hub's differs from its name)."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/`` in the API: the digest if pinned, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def with_digest(self, digest: str) -> ImageRef:
        """The same image pinned to ``digest`` (the tag is kept for display)."""
        return ImageRef(self.registry, self.repository, self.tag, digest)

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def _is_hex(text: str, shortest: int, longest: int) -> bool:
    """``[0-9a-f]{shortest,longest}``."""
    return shortest <= len(text) <= longest and _HEX.issuperset(text)


def _is_digest(text: str) -> bool:
    """``sha256:`` and 64, or ``sha512:`` and 128 lowercase hex digits."""
    algorithm, colon, hexpart = text.partition(":")
    size = {"sha256": 64, "sha512": 128}.get(algorithm) if colon else None
    return size is not None and _is_hex(hexpart, size, size)


def _is_path_component(text: str) -> bool:
    """Runs of ``[a-z0-9]`` joined by exactly one of ``.``, ``_``, ``__`` or ``-+``."""
    if not text or text[0] not in _LOWER_ALNUM or text[-1] not in _LOWER_ALNUM:
        return False
    separator = ""
    for char in text:
        if char in _LOWER_ALNUM:
            if separator and separator not in (".", "_", "__") and separator.strip("-"):
                return False
            separator = ""
        else:
            separator += char
    return True


def _is_domain(text: str) -> bool:
    """A registry host: dot-separated ASCII labels (or a bracketed IPv6 address), optional port."""
    if text.startswith("["):
        import re  # noqa: PLC0415  (IPv6 literals are rare)

        return re.fullmatch(_DOMAIN_RE, text) is not None
    host, colon, port = text.partition(":")
    if colon and not (port and _DIGITS.issuperset(port)):
        return False
    for label in host.split("."):
        if not label or label[0] not in _ALNUM or label[-1] not in _ALNUM or not _HOST_CHARS.issuperset(label):
            return False
    return True


def _is_tag(text: str) -> bool:
    """A word character, then up to 127 word characters, ``.`` or ``-`` (``\\w`` is Unicode-aware)."""
    if not text.isascii():
        import re  # noqa: PLC0415  (only for non-ASCII tags, which Docker itself refuses)

        return re.fullmatch(_TAG_RE, text) is not None
    return 1 <= len(text) <= 128 and text[0] in _WORD and _TAG_CHARS.issuperset(text)


def _fail(text: str, why: str, hint: str = _HINT) -> ImageReferenceError:
    return ImageReferenceError(f"invalid image reference {text!r}: {why}", hint=hint)


def _split_domain(text: str, name: str) -> tuple[str, str]:
    """Split ``name`` into (registry, repository) with Docker's rule for the first component."""
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        if not _is_domain(first):
            raise _fail(text, f"{first!r} is not a valid registry host")
        registry = first.lower()
        repository = rest
    else:
        registry, repository = DOCKER_HUB, name
    if registry in _HUB_ALIASES:
        registry = DOCKER_HUB
        if "/" not in repository:
            repository = f"library/{repository}"
    return registry, repository


def _check_repository(text: str, repository: str) -> None:
    if not repository:
        raise _fail(text, "the repository name is empty")
    if repository != repository.lower():
        raise _fail(text, "the repository name must be lowercase", hint=f"write {text.lower()!r}")
    for component in repository.split("/"):
        if not _is_path_component(component):
            raise _fail(text, f"{component!r} is not a valid name component",
                        hint="name components use a-z, 0-9 and single '.', '_' or '-' separators")


def parse_reference(text: str) -> ImageRef:
    """Parse and normalise a Docker image reference; raise :class:`ImageReferenceError`."""
    if not isinstance(text, str) or not text.strip():
        raise _fail(str(text), "it is empty")
    if text != text.strip():
        raise _fail(text, "it contains surrounding whitespace")
    if _is_hex(text, 64, 64):
        raise _fail(text, "a 64-character hex string is an image id, not a name", hint=f"write id:{text}")
    rest, at, digest = text.partition("@")
    if at and not _is_digest(digest):
        raise _fail(text, f"{digest!r} is not a valid digest",
                    hint="digests look like sha256:<64 lowercase hex characters>")
    name, tag = rest, None
    colon = rest.rfind(":")
    if colon > rest.rfind("/"):
        name, tag = rest[:colon], rest[colon + 1:]
        if not _is_tag(tag):
            raise _fail(text, f"{tag!r} is not a valid tag",
                        hint="tags use letters, digits, '_', '.' and '-' (at most 128, "
                             "not starting with '.' or '-')")
    if len(name) > MAX_NAME_LENGTH:
        raise _fail(text, f"the name is longer than {MAX_NAME_LENGTH} characters")
    registry, repository = _split_domain(text, name)
    _check_repository(text, repository)
    if tag is None and not at:
        tag = DEFAULT_TAG
    return ImageRef(registry, repository, tag, digest if at else None)


def _parse_id(text: str, value: str) -> str:
    hexid = value.lower().removeprefix("sha256:")
    if not _is_hex(hexid, 12, 64):
        raise _fail(text, "an image id is 12 to 64 hex characters",
                    hint="copy the id from 'shifterimg images' or 'shifterimg lookup'")
    return hexid


def _looks_like_type(prefix: str, rest: str) -> bool:
    """``foo`` in ``foo:bar:1`` (not a reference): a word where a type goes, not ``host:port/``."""
    return prefix.isascii() and prefix.isalpha() and not rest.partition("/")[0].isdigit()


def parse_image_arg(text: str, default_type: str = "docker") -> tuple[str, ImageRef | str]:
    """Split Shifter's ``type:tag`` syntax.

    ``docker:ubuntu:22.04`` and ``ubuntu:22.04`` give ``("docker", ImageRef)``;
    ``id:<hex>`` gives ``("id", "<hex>")`` (lowercase, 12-64 characters, ``sha256:`` allowed);
    ``local:/path`` gives ``("local", "/path")``.  The prefix is a type only when it is one of
    ``docker``, ``id`` or ``local``; anything else is part of the image name.
    """
    if not isinstance(text, str) or not text.strip():
        raise _fail(str(text), "it is empty")
    prefix, sep, value = text.partition(":")
    if sep and prefix in IMAGE_TYPES:
        image_type = prefix
    else:
        image_type, value = default_type, text
    if image_type == "docker":
        try:
            return image_type, parse_reference(value)
        except ImageReferenceError:
            if not sep or prefix in IMAGE_TYPES or not _looks_like_type(prefix, value):
                raise
            raise _fail(text, f"unknown image type {prefix!r} ({', '.join(sorted(IMAGE_TYPES))})",
                        hint=f"did you mean docker:{text.partition(':')[2]}?") from None
    if image_type == "id":
        return image_type, _parse_id(text, value)
    if image_type == "local":
        if not value.startswith("/"):
            raise _fail(text, "a local image is an absolute directory path", hint="write local:/path/to/root")
        return image_type, value
    raise _fail(text, f"unknown image type {image_type!r}", hint="image types are docker, id and local")


__all__ = ["DEFAULT_TAG", "DOCKER_HUB", "DOCKER_HUB_API", "IMAGE_TYPES", "ImageRef", "parse_image_arg",
           "parse_reference"]
