"""Registry authentication as an ``httpx.Auth`` generator flow.

The flow is a small state machine, testable without a network:

1. send the request, with a cached Bearer token or Basic credentials when this host is
   already known to want them;
2. on ``401``, read ``WWW-Authenticate``: for ``Basic``, resend with the credentials; for
   ``Bearer realm=..,service=..,scope=..``, GET a token from the realm (with Basic
   credentials when we have them), cache it per ``(realm, service, scope)`` for its
   ``expires_in`` lifetime, and resend;
3. a ``401`` after that flows back to the client, which raises :class:`AuthenticationError`.

The token request is yielded from the flow itself (httpx sends it without re-entering the
flow), so the flow needs no client of its own.  The flow reads the token response body
synchronously: use it with ``httpx.Client`` only.
"""

from __future__ import annotations

import base64
import re
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

from shifter._fastjson import loads as _json_loads
from shifter.errors import AuthenticationError, RegistryUnavailableError
from shifter.registry.credentials import Credential

DEFAULT_TOKEN_LIFETIME = 60  # seconds; the distribution spec's default for a missing expires_in
_MAX_TOKEN_RESPONSE = 1 << 20
_CHALLENGE = re.compile(r"""\s*,?\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)(?:\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*))?""")
_REPO_PATH = re.compile(r"^(?:/.*)?/v2/(.+)/(?:manifests|blobs)/[^/]+$")


@dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: a lowercase scheme and its parameters."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict, hash=False)

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")

    @property
    def service(self) -> str:
        return self.params.get("service", "")

    @property
    def scope(self) -> str:
        return self.params.get("scope", "")


def parse_www_authenticate(headers: list[str]) -> list[Challenge]:
    """Parse ``WWW-Authenticate`` header values (RFC 7235 auth-params) into challenges."""
    challenges: list[Challenge] = []
    for header in headers:
        position = 0
        while position < len(header):
            match = _CHALLENGE.match(header, position)
            if not match or match.end() == position:
                break
            position = match.end()
            name, value = match.group(1), match.group(2)
            if value is None:
                challenges.append(Challenge(name.lower(), {}))
            elif challenges:
                if value.startswith('"'):
                    value = re.sub(r"\\(.)", r"\1", value[1:-1])
                challenges[-1].params[name.lower()] = value
    return challenges


def scope_for_path(path: str) -> str:
    """The pull scope a ``/v2/<name>/(manifests|blobs)/<ref>`` request needs, or ``""``."""
    match = _REPO_PATH.match(path)
    return f"repository:{match.group(1)}:pull" if match else ""


def basic_header(credential: Credential) -> str:
    token = base64.b64encode(f"{credential.username}:{credential.password}".encode()).decode("ascii")
    return f"Basic {token}"


class RegistryAuth(httpx.Auth):
    """Anonymous, Basic and Bearer-challenge authentication for registry requests.

    ``credentials_for(netloc)`` returns the credentials for a registry host (or ``None``);
    ``plain_http_ok(netloc)`` says whether credentials may travel over plain HTTP to that
    host (loopback and configured insecure registries).
    """

    def __init__(self, credentials_for: Callable[[str], Credential | None],
                 plain_http_ok: Callable[[str], bool], clock: Callable[[], float] = time.monotonic) -> None:
        self._credentials_for = credentials_for
        self._plain_http_ok = plain_http_ok
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens: dict[tuple[str, str, str], tuple[str, float]] = {}
        self._bearer_hosts: dict[str, Challenge] = {}
        self._basic_hosts: set[str] = set()
        #: Hosts (``host[:port]``) a credential was sent to: a pull that used one is private by default.
        self.credentials_sent: set[str] = set()

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        host = request.url.netloc.decode("ascii")
        self._apply_known(request, host)
        response = yield request
        if response.status_code != 401:
            return
        challenges = parse_www_authenticate(response.headers.get_list("www-authenticate"))
        bearer = next((c for c in challenges if c.scheme == "bearer" and c.realm), None)
        if bearer is not None:
            scope = bearer.scope or scope_for_path(request.url.path)
            with self._lock:
                self._bearer_hosts[host] = bearer
            sent = request.headers.get("authorization")
            token = self._cached_token(bearer.realm, bearer.service, scope, stale=sent)
            if token is None:
                token_response = yield self._token_request(bearer, scope, host)
                token = self._store_token(token_response, bearer, scope)
            request.headers["Authorization"] = f"Bearer {token}"
            yield request
        elif any(c.scheme == "basic" for c in challenges):
            credential = self._credential(host, request.url.scheme)
            if credential is None or "authorization" in request.headers:
                return  # nothing (new) to offer: the 401 goes back to the caller
            with self._lock:
                self._basic_hosts.add(host)
                self.credentials_sent.add(host)
            request.headers["Authorization"] = basic_header(credential)
            yield request

    def _credential(self, host: str, scheme: str) -> Credential | None:
        if scheme != "https" and not self._plain_http_ok(host):
            return None
        return self._credentials_for(host)

    def _apply_known(self, request: httpx.Request, host: str) -> None:
        """Pre-authenticate a request to a host whose scheme we learnt earlier."""
        if "authorization" in request.headers:
            return
        with self._lock:
            bearer = self._bearer_hosts.get(host)
            basic = host in self._basic_hosts
        if bearer is not None:
            scope = scope_for_path(request.url.path) or bearer.scope
            token = self._cached_token(bearer.realm, bearer.service, scope)
            if token is not None:
                request.headers["Authorization"] = f"Bearer {token}"
        elif basic:
            credential = self._credential(host, request.url.scheme)
            if credential is not None:
                with self._lock:
                    self.credentials_sent.add(host)
                request.headers["Authorization"] = basic_header(credential)

    def _cached_token(self, realm: str, service: str, scope: str, stale: str | None = None) -> str | None:
        key = (realm, service, scope)
        with self._lock:
            entry = self._tokens.get(key)
            if entry is None:
                return None
            token, expires = entry
            if self._clock() >= expires or stale == f"Bearer {token}":
                del self._tokens[key]  # expired, or the registry just refused it
                return None
            return token

    def _token_request(self, challenge: Challenge, scope: str, registry_host: str) -> httpx.Request:
        realm = urlsplit(challenge.realm)
        if realm.scheme not in ("http", "https") or not realm.netloc:
            raise AuthenticationError(f"registry {registry_host} names an invalid token realm "
                                      f"{challenge.realm!r}",
                                      hint="the registry's auth configuration is broken; tell its operator")
        params: list[tuple[str, str | int | float | bool | None]] = []
        if challenge.service:
            params.append(("service", challenge.service))
        params += [("scope", s) for s in scope.split()]
        headers = {"Accept": "application/json"}
        credential = self._credentials_for(registry_host)
        if credential is not None and (realm.scheme == "https" or self._plain_http_ok(realm.netloc)):
            headers["Authorization"] = basic_header(credential)
            with self._lock:
                self.credentials_sent.add(registry_host)
        return httpx.Request("GET", httpx.URL(challenge.realm).copy_merge_params(params), headers=headers)

    def _store_token(self, response: httpx.Response, challenge: Challenge, scope: str) -> str:
        body = response.read()[:_MAX_TOKEN_RESPONSE]
        where = urlsplit(challenge.realm).netloc
        if response.status_code in (401, 403):
            raise AuthenticationError(f"the token service {where} refused the credentials "
                                      f"(HTTP {response.status_code})",
                                      hint=f"run 'shifterimg login {challenge.service or where}'")
        if response.status_code >= 500:
            raise RegistryUnavailableError(f"the token service {where} failed (HTTP {response.status_code})",
                                           hint="try again later")
        token, lifetime = _parse_token(body, where, response.status_code)
        with self._lock:
            self._tokens[(challenge.realm, challenge.service, scope)] = (token, self._clock() + lifetime)
        return token


def _parse_token(body: bytes, where: str, status: int) -> tuple[str, float]:
    """Extract ``(token, usable lifetime in seconds)`` from a token response."""
    try:
        data = _json_loads(body) if status == 200 else None
    except ValueError:
        data = None
    token = (data.get("token") or data.get("access_token")) if isinstance(data, dict) else None
    if not isinstance(token, str) or not token or not isinstance(data, dict):
        raise AuthenticationError(f"the token service {where} gave no usable token (HTTP {status})",
                                  hint="check the registry's auth service, or run 'shifterimg login'")
    expires_in = data.get("expires_in")
    if not isinstance(expires_in, int | float) or isinstance(expires_in, bool) or expires_in <= 0:
        expires_in = DEFAULT_TOKEN_LIFETIME
    # renew a little early so a token never expires between check and use
    return token, max(float(expires_in) - min(10.0, expires_in / 10), 1.0)


__all__ = ["Challenge", "RegistryAuth", "basic_header", "parse_www_authenticate", "scope_for_path"]
