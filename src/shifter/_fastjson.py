"""``json.loads`` for the launch path, without importing ``json`` (which imports ``re``, ``enum``
and more: ~5 ms of a launch budget of a few ms).

The C scanner of CPython's ``_json`` accelerator does the parsing exactly as ``json.loads``
does (``json.decoder.JSONDecoder`` drives the very same scanner).  Anything unusual (no
``_json``, a document that does not parse) goes to the real ``json.loads``, so results and
error messages are identical: this is only a faster road to the same answer.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_WHITESPACE = " \t\n\r"  # JSON's whitespace (json.decoder.WHITESPACE)


class _Context:
    """The decoder settings ``_json.make_scanner`` reads: those of a default ``JSONDecoder``."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}.__getitem__


_scanner: Any = None


def _make_scanner() -> Any:
    global _scanner  # noqa: PLW0603  (built once per process)
    try:
        import _json  # noqa: PLC0415

        _scanner = _json.make_scanner(_Context())  # type: ignore[arg-type]
    except (ImportError, AttributeError, TypeError):
        _scanner = False
    return _scanner


def loads(text: str | bytes) -> Any:
    """Parse a JSON document like ``json.loads`` (same result, same errors; a document nested too
    deeply is a :class:`NestingError`, a ``ValueError``, instead of a ``RecursionError``)."""
    scanner = _scanner if _scanner is not None else _make_scanner()
    if scanner and isinstance(text, str):
        start = len(text) - len(text.lstrip(_WHITESPACE))
        try:
            value, end = scanner(text, start)
        except (StopIteration, ValueError, RecursionError):
            pass  # let json.loads raise its own error
        else:
            if not text[end:].strip(_WHITESPACE):
                return value
    elif scanner and isinstance(text, bytes | bytearray) and text[:3] != b"\xef\xbb\xbf":
        try:
            decoded = text.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            if decoded[:1] != "\ufeff" and _plain_utf8(text):
                return loads(decoded)
    import json  # noqa: PLC0415  (rare: no accelerator, or a document that does not parse)

    try:
        return json.loads(text)
    except RecursionError:  # `[` x 100000: a hostile document, not a bug
        raise NestingError("JSON nested too deeply") from None


class NestingError(ValueError):
    """A JSON document nested deeper than the parser's recursion limit (a ``ValueError``, as
    every other malformed document)."""


def _plain_utf8(data: bytes | bytearray) -> bool:
    """``json.loads`` guesses UTF-16/32 from NUL bytes in the first four bytes; plain UTF-8 has none."""
    return b"\x00" not in data[:4]


__all__ = ["NestingError", "loads"]
