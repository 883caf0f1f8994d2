"""``shifterimg`` through a remote gateway (``imageGateway`` in udiRoot.conf).

:class:`GatewayClient` offers the methods of :class:`~shifter.gateway.service.ImageService` that
``shifterimg`` calls (pull, images, lookup, inspect, remove), so the commands, their output and
their exit codes stay those of the embedded mode.  The URLs of ``imageGateway`` are tried in
turn: one that cannot be reached or answers 5xx gives way to the next.

Every request carries a fresh MUNGE credential (:mod:`shifter.gateway.auth`); a pull carries
the caller's stored registry credentials for the image's registry *inside* the MUNGE payload,
which munged encrypts: they never travel in clear.  An error answer becomes the same typed
error as in embedded mode (the gateway sends its exit code in ``x-shifter-exit-code``).
"""

from __future__ import annotations

import json
import time
import urllib.parse
from typing import Any

import httpx

from shifter.config.site import SiteConfig
from shifter.errors import (
    AccessDeniedError,
    ImageNotFoundError,
    ImageNotReadyError,
    ShifterError,
    StoreError,
    UsageError,
)
from shifter.gateway import auth, nersc
from shifter.gateway.acl import ImageAcl
from shifter.gateway.progress import NullProgress, ProgressSink
from shifter.gateway.stores import Caller
from shifter.oci.reference import ImageRef, parse_image_arg

POLL_S = 0.5
TIMEOUT_S = 30.0


class GatewayUnavailableError(ShifterError):
    """No gateway of ``imageGateway`` answered."""

    exit_code = 7


_BY_STATUS: dict[int, type[ShifterError]] = {400: UsageError, 401: auth.MungeError, 403: AccessDeniedError,
                                             404: ImageNotFoundError, 409: ImageNotReadyError}


class GatewayRecord:
    """What ``shifterimg pull`` prints from: ``status`` (READY) and ``id``."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.id = str(record.get("id"))
        self.status = str(record.get("status"))
        self.record = record


class GatewayClient:
    """A remote gateway seen as an image service."""

    def __init__(self, config: SiteConfig, *, transport: httpx.BaseTransport | None = None,
                 sleep: Any = time.sleep) -> None:
        self.config = config
        self.urls = [u.rstrip("/") for u in config.image_gateway]
        self.system = config.system
        self.munge_socket = config.munge_socket
        self.http = httpx.Client(transport=transport, timeout=float(config.gateway_timeout or TIMEOUT_S))
        self.sleep = sleep
        self.exit_code: int | None = None  # of the last answer that carried one

    # --- transport ----------------------------------------------------------------------
    def request(self, method: str, path: str, *, payload: bytes = b"", body: bytes | None = None) -> Any:
        """One request, to the first gateway that answers; a typed error for an error answer."""
        problems = []
        for base in self.urls:
            headers = {"authentication": auth.encode(payload, self.munge_socket)}  # fresh: replays are refused
            if method == "POST":
                headers["Content-Type"] = "application/json"
            try:
                response = self.http.request(method, base + path, headers=headers, content=body or b"")
            except httpx.TransportError as err:
                problems.append(f"{base}: {err.__class__.__name__}")
                continue
            if response.status_code >= 500:
                problems.append(f"{base}: HTTP {response.status_code}")
                continue
            return self._answer(response)
        raise GatewayUnavailableError(f"no image gateway answered ({'; '.join(problems)})",
                                      hint="check imageGateway in udiRoot.conf, and that shifter-gateway runs")

    def _answer(self, response: httpx.Response) -> Any:
        code = response.headers.get("x-shifter-exit-code", "")
        self.exit_code = int(code) if code.isdigit() else None
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.status_code == 200 and data is not None:
            return data
        message = data.get("error") if isinstance(data, dict) else None
        kind = _BY_STATUS.get(response.status_code, StoreError)
        err = kind(str(message or f"the gateway answered HTTP {response.status_code}"))
        if self.exit_code is not None:
            err.exit_code = self.exit_code
        raise err

    def _path(self, verb: str, ref_text: str) -> tuple[str, str]:
        image_type, value = parse_image_arg(ref_text, self.config.default_image_type)
        if image_type != "docker" or not isinstance(value, ImageRef):
            raise UsageError(f"{ref_text!r}: only docker images go through the image gateway",
                             hint="write e.g. docker:ubuntu:22.04")
        quoted = urllib.parse.quote(str(value), safe="")
        return f"/api/{verb}/{urllib.parse.quote(self.system, safe='')}/docker/{quoted}/", str(value)

    # --- the ImageService methods shifterimg uses ------------------------------------------
    def pull(self, ref_text: str, caller: Caller, progress: ProgressSink | None = None, *,
             acl: ImageAcl | None = None) -> GatewayRecord:
        """POST the pull until it leaves the busy states (as NERSC's client); raise on FAILURE."""
        progress = progress or NullProgress()
        path, ref = self._path("pull", ref_text)
        body = json.dumps(_acl_body(acl)).encode() if acl is not None else b""
        payload = auth.token_payload(_tokens_for(ref))
        shown = ""
        while True:
            record = self.request("POST", path, payload=payload, body=body)
            status, message = str(record.get("status")), str(record.get("status_message"))
            if (status, message) != shown:
                progress.phase(status.lower(), message if message != nersc.MISSING else status)
                shown = (status, message)  # type: ignore[assignment]
            if status not in nersc.BUSY:
                break
            self.sleep(POLL_S)
        if status != "READY":
            err = ShifterError(message if message != nersc.MISSING else f"pull of {ref_text} ended in {status}")
            err.exit_code = self.exit_code or 1
            raise err
        return GatewayRecord(record)

    def lookup(self, ref_text: str) -> str:
        path, _ref = self._path("lookup", ref_text)
        return str(self.request("GET", path)["id"])

    def images(self) -> list[dict[str, Any]]:
        """``shifterimg images`` rows (one per tag) from ``/api/list``."""
        data = self.request("GET", f"/api/list/{urllib.parse.quote(self.system, safe='')}/")
        rows = []
        for record in data.get("list", []) if isinstance(data, dict) else []:
            tags = record.get("tag") if isinstance(record.get("tag"), list) else [record.get("tag")]
            for tag in tags:
                rows.append(_row(record, str(tag), self.system))
        return rows

    def inspect(self, ref_text: str) -> dict[str, Any]:
        """What the gateway's lookup tells about an image (a subset of the embedded ``inspect``)."""
        path, ref = self._path("lookup", ref_text)
        record = self.request("GET", path)
        get = lambda key: None if record.get(key) == nersc.MISSING else record.get(key)  # noqa: E731
        return {"id": record.get("id"), "tags": [f"docker:{t}" for t in record.get("tag", [ref])],
                "env": get("ENV"), "entrypoint": get("ENTRY"), "workdir": get("WORKDIR"),
                "labels": get("LABELS"), "status": record.get("status"), "system": record.get("system"),
                "gateway": True}

    def remove(self, ref_text: str, caller: Caller) -> list[str]:
        path, _ref = self._path("remove", ref_text)
        return [str(item) for item in self.request("DELETE", path).get("removed", [])]

    def import_archive(self, *_args: Any, **_kwargs: Any) -> Any:
        raise UsageError("shifterimg import works on the local store only, not through imageGateway",
                         hint="import on the gateway host (shifterimg import there), or push the image to a "
                              "registry and pull it")


def _acl_body(acl: ImageAcl) -> dict[str, Any]:
    if not acl.private:
        return {"public": True}
    return {"allowed_uids": ",".join(map(str, acl.users)), "allowed_gids": ",".join(map(str, acl.groups))}


def _tokens_for(ref: str) -> dict[str, str]:
    """The caller's stored credentials for the image's registry (``shifterimg login``), if any."""
    from shifter.registry.credentials import CredentialStore, normalize_registry  # noqa: PLC0415

    _type, value = parse_image_arg(f"docker:{ref}")
    assert isinstance(value, ImageRef)
    host = normalize_registry(value.registry)
    credential = CredentialStore().lookup(host)
    return {host: f"{credential.username}:{credential.password}"} if credential else {}


def _row(record: dict[str, Any], tag: str, system: str) -> dict[str, Any]:
    pulled = record.get("last_pull")
    acl = {"private": isinstance(record.get("userACL"), list) or isinstance(record.get("groupACL"), list)}
    return {"system": record.get("system", system), "type": record.get("itype", "docker"),
            "status": record.get("status"), "id": record.get("id"), "tag": tag, "acl": acl,
            "pulled_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(pulled))
            if isinstance(pulled, (int, float)) else None}


__all__ = ["GatewayClient", "GatewayRecord", "GatewayUnavailableError"]
