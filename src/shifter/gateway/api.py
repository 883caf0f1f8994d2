"""The gateway's HTTP API: NERSC Shifter's imagegw routes, served by FastAPI on uvicorn.

The contract is NERSC Shifter 22.02.1's (docs/gateway.md has the table); what its C client
needs is kept to the letter: ``Content-Type`` exactly ``application/json``, a ``Content-Length``,
``last_pull`` a float, percent-decoded tags, ``POST /api/pull`` answering at once (the client
polls by POSTing again).  Beyond NERSC: real status codes (400 bad input, 401 refused
credential, 403 not allowed, 404 unknown, 409 busy, 503 munged or database down), removal by
the image's owner (``DELETE /api/remove/...``), Prometheus ``/metrics``, and the OpenAPI
document at ``/openapi.json``.

Every ``/api`` request needs a MUNGE credential in the ``authentication`` header, checked with
the system's ``munged`` (:mod:`shifter.gateway.auth`).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from shifter.errors import (
    AccessDeniedError,
    ConfigError,
    ImageNotFoundError,
    ImageNotReadyError,
    ImageReferenceError,
    ShifterError,
    StoreError,
)
from shifter.gateway import auth
from shifter.gateway.engine import Gateway, caller_for_uid
from shifter.gateway.stores import Caller

CALLER_CACHE_S = 60.0
LOOKUP_THREADS = 8
AUTH_DOC = "A MUNGE credential (output of `munge -n`), fresh for every request."
_STATUS: list[tuple[type[ShifterError], int]] = [
    (auth.MungeUnavailableError, 503), (auth.MungeError, 401), (AccessDeniedError, 403),
    (ImageNotFoundError, 404), (ImageNotReadyError, 409), (ImageReferenceError, 400), (ConfigError, 400),
    (StoreError, 503)]


EXIT_CODE_HEADER = "x-shifter-exit-code"  # for shifterimg: the exit code of the error (embedded mode's)


def json_response(data: object, status: int = 200, exit_code: int | None = None) -> Response:
    """JSON with ``Content-Type: application/json`` exactly (no charset: NERSC's client compares)."""
    headers = {EXIT_CODE_HEADER: str(exit_code)} if exit_code is not None else None
    return Response(json.dumps(data), status_code=status, media_type="application/json", headers=headers)


def status_of(err: ShifterError) -> int:
    for kind, code in _STATUS:
        if isinstance(err, kind):
            return code
    return 500


def error_body(status: int, message: str, url: str) -> dict[str, Any]:
    return {"status": status, "error": message, "message": f"{_REASONS.get(status, 'Error')}: {url}"}


_REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
            409: "Conflict", 500: "Internal Server Error", 503: "Service Unavailable"}


class Authenticator:
    """Header -> caller, through the system's munged (callers cached by uid for a minute)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._callers: dict[int, tuple[float, Caller]] = {}

    def __call__(self, system: str, header: str | None) -> tuple[Caller, dict[str, str]]:
        sysvc = self.gateway.system(system)
        credential = auth.decode(header or "", sysvc.system.munge_socket)
        return self._caller(credential.uid, credential.gid), dict(credential.tokens)

    def _caller(self, uid: int, gid: int) -> Caller:
        now = time.monotonic()
        cached = self._callers.get(uid)
        if cached is not None and now - cached[0] < CALLER_CACHE_S:
            return cached[1]
        caller = caller_for_uid(uid, gid)
        self._callers[uid] = (now, caller)
        return caller


def _register_errors(app: FastAPI) -> None:
    @app.exception_handler(ShifterError)
    async def shifter_error(request: Request, err: ShifterError) -> Response:
        status = status_of(err)
        return json_response(error_body(status, err.render(), str(request.url)), status, err.exit_code)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, err: RequestValidationError) -> Response:
        first = err.errors()[0] if err.errors() else {}
        message = f"bad request: {first.get('msg', 'invalid input')} ({'.'.join(map(str, first.get('loc', ())))})"
        return json_response(error_body(400, message, str(request.url)), 400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> Response:
        return json_response(error_body(err.status_code, str(err.detail), str(request.url)), err.status_code)


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ConfigError("the request body is not JSON", hint='send {"allowed_uids": "1001"} or nothing') from None
    if not isinstance(data, dict):
        raise ConfigError("the request body must be a JSON object", hint='send {"allowed_uids": "1001"} or nothing')
    return data


PULL_BODY = {"requestBody": {"required": False, "content": {"application/json": {"schema": {
    "type": "object", "properties": {
        "allowed_uids": {"type": "string", "description": "comma-separated uids (the caller is added)"},
        "allowed_gids": {"type": "string", "description": "comma-separated gids"},
        "public": {"type": "boolean", "description": "make the image public (owner or admin)"}}}}}}}
IMPORT_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["filepath"], "properties": {
        "filepath": {"type": "string", "description": "absolute path of a squashfs file the caller owns"},
        "format": {"type": "string", "enum": ["squashfs"]},
        "allowed_uids": {"type": "string"}, "allowed_gids": {"type": "string"}}}}}}}
RECORD = {"200": {"description": "an image record (NERSC fields; \"MISSING\" where absent)"}}


def create_app(gateway: Gateway, lifespan: Any = None) -> FastAPI:
    """The ASGI application serving ``gateway`` (FastAPI behind :class:`FastLookup`)."""
    app = FastAPI(title="Shifter image gateway", version="1", summary="NERSC Shifter compatible imagegw API",
                  lifespan=lifespan)
    authenticate = Authenticator(gateway)
    _register_errors(app)
    Auth = Header(None, alias="authentication", description=AUTH_DOC)

    @app.get("/", response_class=PlainTextResponse)
    async def root() -> str:
        return "{lookup,pull,expire,list,queue,autoexpire,metrics,remove}"

    @app.get("/api/lookup/{system}/{imgtype}/{tag:path}/", responses=RECORD)  # type: ignore[arg-type]
    async def lookup(request: Request, system: str, imgtype: str, tag: str,
                     authentication: str | None = Auth) -> Response:
        status, body, code = lookup_answer(gateway, authenticate, (system, imgtype, tag), authentication,
                                           str(request.url))
        headers = {EXIT_CODE_HEADER: str(code)} if code is not None else None
        return Response(body, status_code=status, media_type="application/json", headers=headers)

    @app.post("/api/pull/{system}/{imgtype}/{tag:path}/", openapi_extra=PULL_BODY, responses=RECORD)  # type: ignore[arg-type]
    async def pull(request: Request, system: str, imgtype: str, tag: str,
                   authentication: str | None = Auth) -> Response:
        caller, tokens = authenticate(system, authentication)
        body = await _body(request)
        from starlette.concurrency import run_in_threadpool  # noqa: PLC0415
        answer = await run_in_threadpool(lambda: gateway.pull(system, imgtype, tag, caller, tokens=tokens,
                                                              body=body))
        return json_response(answer.record, exit_code=answer.exit_code)

    @app.post("/api/doimport/{system}/{imgtype}/{tag:path}/", openapi_extra=IMPORT_BODY,
              responses=RECORD)  # type: ignore[arg-type]
    async def doimport(request: Request, system: str, imgtype: str, tag: str,
                       authentication: str | None = Auth) -> Response:
        caller, _tokens = authenticate(system, authentication)
        body = await _body(request)
        from starlette.concurrency import run_in_threadpool  # noqa: PLC0415
        record = await run_in_threadpool(lambda: gateway.doimport(system, imgtype, tag, caller, body))
        return json_response(record)

    @app.get("/api/list/{system}/")
    def images(system: str, authentication: str | None = Auth) -> Response:
        caller, _tokens = authenticate(system, authentication)
        return json_response({"list": gateway.images(system, caller)})

    @app.get("/api/queue/{system}/")
    def queue(system: str, authentication: str | None = Auth) -> Response:
        authenticate(system, authentication)
        return json_response({"list": gateway.queue(system)})

    @app.get("/api/expire/{system}/{imgtype}/{tag:path}/")
    def expire(system: str, imgtype: str, tag: str, authentication: str | None = Auth) -> Response:
        caller, _tokens = authenticate(system, authentication)
        return json_response({"status": gateway.expire(system, imgtype, tag, caller)})

    @app.get("/api/autoexpire/{system}/")
    def autoexpire(system: str, authentication: str | None = Auth) -> Response:
        caller, _tokens = authenticate(system, authentication)
        return json_response({"status": gateway.autoexpire(system, caller)})

    @app.get("/api/metrics/{system}/")
    def metrics(system: str, limit: int = 10, authentication: str | None = Auth) -> Response:
        caller, _tokens = authenticate(system, authentication)
        return json_response(gateway.metrics(system, caller, min(max(limit, 0), 10_000)))

    @app.delete("/api/remove/{system}/{imgtype}/{tag:path}/")
    def remove(system: str, imgtype: str, tag: str, authentication: str | None = Auth) -> Response:
        caller, _tokens = authenticate(system, authentication)
        return json_response({"removed": gateway.remove(system, imgtype, tag, caller)})

    @app.get("/metrics", response_class=PlainTextResponse)
    def prometheus() -> Response:
        return Response(gateway.prometheus(), media_type="text/plain; version=0.0.4")

    return FastLookup(app, gateway, authenticate)  # type: ignore[return-value]


def lookup_answer(gateway: Gateway, authenticate: Authenticator, where: tuple[str, str, str],
                  header: str | None, url: str) -> tuple[int, bytes, int | None]:
    """A lookup's status, JSON body and exit code (one implementation for both routes to it)."""
    system, imgtype, tag = where
    try:
        caller, _tokens = authenticate(system, header)
        return 200, json.dumps(gateway.lookup(system, imgtype, tag, caller)).encode(), None
    except ShifterError as err:
        status = status_of(err)
        return status, json.dumps(error_body(status, err.render(), url)).encode(), err.exit_code


class FastLookup:
    """``GET /api/lookup/...`` answered before FastAPI's routing and validation (the hot path: every
    job start on every node looks an image up); everything else, and the OpenAPI document (which
    describes this same route), goes to FastAPI.  Both call :func:`lookup_answer`."""

    PREFIX = "/api/lookup/"

    def __init__(self, app: FastAPI, gateway: Gateway, authenticate: Authenticator) -> None:
        from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

        self.app = app
        self.gateway = gateway
        self.authenticate = authenticate
        # The MUNGE check waits ~0.2 ms on munged (ctypes releases the GIL): in threads, the event
        # loop parses other requests meanwhile.
        self.pool = ThreadPoolExecutor(LOOKUP_THREADS, thread_name_prefix="lookup")

    def __getattr__(self, name: str) -> Any:  # app.openapi(), app.routes ... for tools and tests
        return getattr(self.app, name)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        where = self._route(scope)
        if where is None:
            await self.app(scope, receive, send)
            return
        header = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"authentication"), None)
        url = f"http://{_host(scope)}{scope['path']}"
        loop = asyncio.get_running_loop()
        status, body, code = await loop.run_in_executor(self.pool, lookup_answer, self.gateway, self.authenticate,
                                                        where, header, url)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if code is not None:
            headers.append((EXIT_CODE_HEADER.encode(), str(code).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _route(self, scope: Any) -> tuple[str, str, str] | None:
        if scope.get("type") != "http" or scope.get("method") != "GET":
            return None
        path = scope.get("path", "")
        if not path.startswith(self.PREFIX) or not path.endswith("/"):
            return None
        parts = path[len(self.PREFIX):-1].split("/", 2)
        if len(parts) != 3 or not all(parts):
            return None
        return parts[0], parts[1], parts[2]


def _host(scope: Any) -> str:
    server = scope.get("server") or ("gateway", 0)
    return f"{server[0]}:{server[1]}"


__all__ = ["create_app", "json_response", "status_of"]
