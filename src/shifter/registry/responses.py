"""Turning registry HTTP responses and transport failures into typed Shifter errors."""

from __future__ import annotations

from typing import Any

import httpx

from shifter._fastjson import loads as _json_loads
from shifter.errors import (
    AuthenticationError,
    ImageNotFoundError,
    RegistryError,
    RegistryUnavailableError,
)

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_MAX_ERROR_BODY = 64 * 1024
_NOT_FOUND_CODES = frozenset({"MANIFEST_UNKNOWN", "NAME_UNKNOWN", "TAG_INVALID", "NAME_INVALID"})


def read_capped(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """Up to ``limit`` bytes of the (decoded) body and whether it was longer."""
    chunks: list[bytes] = []
    total = 0
    for chunk in response.iter_bytes():
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            return b"".join(chunks)[:limit], True
    return b"".join(chunks), False


def error_details(body: bytes) -> tuple[list[str], str]:
    """The distribution error codes and a readable message from an error body."""
    try:
        data: Any = _json_loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace").strip()
        return [], text[:200] if text and "<" not in text[:1] else ""
    errors = data.get("errors") if isinstance(data, dict) else None
    if not isinstance(errors, list):
        return [], ""
    codes, messages = [], []
    for item in errors:
        if isinstance(item, dict):
            code, message = item.get("code"), item.get("message")
            if isinstance(code, str):
                codes.append(code)
            if isinstance(message, str) and message:
                messages.append(message)
    return codes, "; ".join(messages)


def unavailable(where: str, why: str) -> RegistryUnavailableError:
    return RegistryUnavailableError(f"registry {where} is unavailable: {why}",
                                    hint="check the registry URL and the network, or try again later")


def transport_failure(where: str, err: httpx.TransportError) -> RegistryUnavailableError:
    """A connection refused, timeout, TLS or protocol failure as a typed error."""
    kind = "timed out" if isinstance(err, httpx.TimeoutException) else "connection failed"
    detail = str(err) or type(err).__name__
    return unavailable(where, f"{kind} ({detail})")


def request_failure(where: str, err: httpx.RequestError) -> RegistryError:
    """A request that failed for a reason retrying does not fix: a redirect loop, a bad encoding."""
    if isinstance(err, httpx.TooManyRedirects):
        return RegistryError(f"registry {where} redirects in a loop ({err})",
                             hint="the registry (or a mirror, or a proxy in front of it) is misconfigured; "
                                  "check its URL or tell its admin")
    return RegistryError(f"registry {where} sent an answer that cannot be read ({type(err).__name__}: {err})",
                         hint="check the registry, or try again later")


def check_response(response: httpx.Response, *, what: str, registry: str, blob: bool = False) -> None:
    """Raise the typed error for a non-2xx ``response`` about ``what`` (e.g. ``manifest x:1``)."""
    status = response.status_code
    if status < 300:
        return
    body, _ = read_capped(response, _MAX_ERROR_BODY) if response.request.method != "HEAD" else (b"", False)
    codes, message = error_details(body)
    detail = f"HTTP {status}" + (f" {'/'.join(codes)}" if codes else "") + (f": {message}" if message else "")
    where = response.url.netloc.decode("ascii")
    if status in (401, 403):
        raise AuthenticationError(f"registry {where} refused access to {what} ({detail})",
                                  hint=f"run 'shifterimg login {registry}'; if you are logged in, check "
                                       "that the image name is right and that you may pull it")
    if status == 404 and blob:
        raise RegistryError(f"registry {where} does not have {what} ({detail})",
                            hint="the image in the registry is incomplete; push it again")
    if status == 404 or (codes and set(codes) <= _NOT_FOUND_CODES):
        raise ImageNotFoundError(f"{what} not found on {where} ({detail})",
                                 hint="check the image name and tag")
    if status in RETRYABLE_STATUS or status >= 500:
        hint = "the registry limits requests; log in or try later" if status == 429 else \
            "check the registry URL and the network, or try again later"
        raise RegistryUnavailableError(f"registry {where} failed on {what} ({detail})", hint=hint)
    raise RegistryError(f"registry {where} answered {what} with {detail}",
                        hint="check the image reference and the registry")


__all__ = ["RETRYABLE_STATUS", "check_response", "error_details", "read_capped", "transport_failure",
           "unavailable"]
