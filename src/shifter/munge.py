"""MUNGE credentials through Debian's ``libmunge.so.2`` (ctypes): make one, or check one.

No maintained MUNGE binding installs from PyPI (``python-munge``/``pymunge`` are absent), so this
calls libmunge directly: one round trip to the local ``munged`` over its socket (about 0.1 ms), no
process per request.  ``munged`` does the checking:

* a credential made with another key does not decode (``EMUNGE_CRED_INVALID``);
* an expired one (older than its TTL, 300 s by default) gives ``EMUNGE_CRED_EXPIRED``;
* a credential decoded once before by the same ``munged`` gives ``EMUNGE_CRED_REPLAYED``:
  a captured header cannot be sent again.

A leaf module (it imports only :mod:`shifter.errors` and ctypes): the gateway checks credentials
with it (:mod:`shifter.gateway.auth`), and ``shifterimg`` and the runtime make theirs with it.
"""

from __future__ import annotations

import ctypes

from shifter.errors import ShifterError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_SOCKET = "/run/munge/munge.socket.2"
_OPT_SOCKET = 8  # MUNGE_OPT_SOCKET in munge.h
_EMUNGE_SOCKET, _EMUNGE_TIMEOUT = 6, 7
_ERRORS = {8: "malformed credential", 9: "unsupported credential version", 11: "invalid MAC",
           13: "unknown realm", 14: "invalid credential (another MUNGE key?)", 15: "expired credential",
           16: "credential from the future (clock skew)", 17: "replayed credential",
           18: "unauthorized credential"}


class MungeError(ShifterError):
    """A credential was refused (HTTP 401), or could not be made."""

    exit_code = 6


class MungeUnavailableError(MungeError):
    """``munged`` cannot be reached (HTTP 503 on the gateway; the client cannot authenticate)."""

    exit_code = 7


class _Lib:
    """``libmunge.so.2``, loaded once on first use."""

    _lib: Any = None
    _libc: Any = None

    @classmethod
    def get(cls) -> tuple[Any, Any]:
        if cls._lib is None:
            try:
                lib = ctypes.CDLL("libmunge.so.2")
            except OSError as err:
                raise MungeUnavailableError(f"cannot load libmunge: {err}",
                                            hint="install Debian's 'munge' package (libmunge2)") from None
            lib.munge_ctx_create.restype = ctypes.c_void_p
            lib.munge_ctx_destroy.argtypes = [ctypes.c_void_p]
            lib.munge_strerror.restype = ctypes.c_char_p
            lib.munge_encode.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_void_p, ctypes.c_void_p,
                                         ctypes.c_int]
            lib.munge_decode.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p),
                                         ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_uint32),
                                         ctypes.POINTER(ctypes.c_uint32)]
            libc = ctypes.CDLL("libc.so.6")
            libc.free.argtypes = [ctypes.c_void_p]
            cls._lib, cls._libc = lib, libc
        return cls._lib, cls._libc


def _context(lib: Any, socket_path: str) -> Any:
    ctx = lib.munge_ctx_create()
    if not ctx:
        raise MungeError("cannot create a MUNGE context", hint="out of memory?")
    rc = lib.munge_ctx_set(ctypes.c_void_p(ctx), ctypes.c_int(_OPT_SOCKET), ctypes.c_char_p(socket_path.encode()))
    if rc != 0:
        lib.munge_ctx_destroy(ctx)
        raise MungeError(f"bad MUNGE socket {socket_path!r}", hint="check mungeSocket in the gateway config")
    return ctx


def _fail(lib: Any, rc: int, socket_path: str, verb: str) -> MungeError:
    if rc in (_EMUNGE_SOCKET, _EMUNGE_TIMEOUT):
        return MungeUnavailableError(f"cannot reach munged at {socket_path} to {verb} a credential",
                                     hint="is munged running? (munged --socket=...)")
    reason = _ERRORS.get(rc) or lib.munge_strerror(rc).decode(errors="replace")
    return MungeError(f"MUNGE credential refused: {reason}",
                      hint="send a fresh credential made by this system's munged (munge -n)")


def encode(payload: bytes = b"", socket_path: str = DEFAULT_SOCKET) -> str:
    """A fresh credential for this process's uid/gid carrying ``payload`` (encrypted by munged)."""
    lib, libc = _Lib.get()
    ctx = _context(lib, socket_path)
    cred = ctypes.c_char_p()
    try:
        rc = lib.munge_encode(ctypes.byref(cred), ctx, payload or None, len(payload))
        if rc != 0:
            raise _fail(lib, rc, socket_path, "make")
        return (cred.value or b"").decode("ascii")
    finally:
        if cred:
            libc.free(ctypes.cast(cred, ctypes.c_void_p))
        lib.munge_ctx_destroy(ctx)


def decode(credential: str, socket_path: str = DEFAULT_SOCKET) -> tuple[int, int, bytes]:
    """Check ``credential`` with munged: its (uid, gid, payload); raises :class:`MungeError`
    (refused) or :class:`MungeUnavailableError` (munged down)."""
    if not credential or len(credential) > 65536 or not credential.isascii():
        raise MungeError("MUNGE credential refused: missing or malformed",
                         hint="send the header 'authentication: <output of munge -n>'")
    lib, libc = _Lib.get()
    ctx = _context(lib, socket_path)
    buf, length = ctypes.c_void_p(), ctypes.c_int(0)
    uid, gid = ctypes.c_uint32(0), ctypes.c_uint32(0)
    try:
        rc = lib.munge_decode(credential.encode("ascii"), ctx, ctypes.byref(buf), ctypes.byref(length),
                              ctypes.byref(uid), ctypes.byref(gid))
        payload = ctypes.string_at(buf, length.value) if buf and length.value > 0 else b""
        if rc != 0:
            raise _fail(lib, rc, socket_path, "check")
    finally:
        if buf:
            libc.free(buf)
        lib.munge_ctx_destroy(ctx)
    return uid.value, gid.value, payload


__all__ = ["DEFAULT_SOCKET", "MungeError", "MungeUnavailableError", "decode", "encode"]
