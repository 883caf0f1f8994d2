"""Who is calling the gateway: a MUNGE credential in the ``authentication`` header.

:mod:`shifter.munge` checks it with the system's ``munged``.  Every HTTP request carries a fresh
credential (a replay is refused).  The payload is empty for most requests; a pull with registry
credentials puts them in the payload (``{"authorized_locations": {...}}``, as NERSC's client does),
which ``munged`` encrypts: they never travel in clear.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from shifter.munge import DEFAULT_SOCKET, MungeError, MungeUnavailableError, encode
from shifter.munge import decode as _decode


@dataclass(frozen=True)
class Credential:
    """What a decoded credential says: the caller's uid/gid and the payload."""

    uid: int
    gid: int
    payload: bytes = b""
    tokens: Mapping[str, str] = field(default_factory=dict)


def decode(credential: str, socket_path: str = DEFAULT_SOCKET) -> Credential:
    """Check ``credential`` with munged; raises :class:`MungeError` (refused, also for a payload
    that is not what a client sends) or :class:`MungeUnavailableError` (munged down)."""
    uid, gid, payload = _decode(credential, socket_path)
    return Credential(uid, gid, payload, parse_tokens(payload))


def parse_tokens(payload: bytes) -> dict[str, str]:
    """``{"authorized_locations": {"<registry>": "<user>:<password>"}}`` -> that mapping (else empty)."""
    if not payload:
        return {}
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise MungeError("the credential's payload is not JSON",
                         hint="send an empty payload or {\"authorized_locations\": {...}}") from None
    locations = data.get("authorized_locations") if isinstance(data, dict) else None
    if not isinstance(locations, dict):
        return {}
    return {str(k): str(v) for k, v in locations.items() if isinstance(v, str) and ":" in v}


def token_payload(tokens: Mapping[str, str]) -> bytes:
    """The payload that carries registry credentials (``host -> "user:password"``)."""
    return json.dumps({"authorized_locations": dict(tokens)}).encode() if tokens else b""


__all__ = ["DEFAULT_SOCKET", "Credential", "MungeError", "MungeUnavailableError", "decode", "encode",
           "parse_tokens", "token_payload"]
