"""One HTTP session for registry calls: the httpx client, the retry policy and the clock."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import httpx

from shifter.errors import RegistryUnavailableError
from shifter.registry.responses import RETRYABLE_STATUS, check_response, request_failure, transport_failure


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff (``base_delay * 2**n``, capped)."""

    attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 8.0

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th consecutive failure (1-based)."""
        return float(min(self.max_delay, self.base_delay * 2 ** max(failures - 1, 0)))


class Session:
    """Sends registry requests with retries on connection errors, timeouts, 429 and 5xx."""

    def __init__(self, http: httpx.Client, retry: RetryPolicy,
                 sleep: Callable[[float], None] = time.sleep, *,
                 clock: Callable[[], float] = time.monotonic, blob_timeout: float = 3600.0) -> None:
        self.http = http
        self.retry = retry
        self.sleep = sleep
        self.clock = clock
        self.blob_timeout = blob_timeout  # seconds for one whole blob (registryTimeout's TOTAL)

    def send(self, method: str, url: str, *, headers: Mapping[str, str], what: str, registry: str,
             stream: bool = False, blob: bool = False, attempts: int | None = None) -> httpx.Response:
        """Send until a non-retryable answer; raise typed errors for non-2xx answers.

        With ``stream=True`` the caller must close the returned response.
        """
        attempts = max(1, attempts if attempts is not None else self.retry.attempts)
        where = httpx.URL(url).netloc.decode("ascii")
        for attempt in range(1, attempts + 1):
            last = attempt == attempts
            try:
                response = self.http.send(self.http.build_request(method, url, headers=dict(headers)),
                                          stream=True)
            except httpx.TransportError as err:
                if last:
                    raise transport_failure(where, err) from None
                self.sleep(self.retry.delay(attempt))
                continue
            except httpx.RequestError as err:  # a redirect loop, an undecodable answer: not retried
                raise request_failure(where, err) from None
            if response.status_code in RETRYABLE_STATUS and not last:
                response.close()
                self.sleep(self._retry_after(response, attempt))
                continue
            try:
                check_response(response, what=what, registry=registry, blob=blob)
                if not stream:
                    response.read()
            except httpx.TransportError as err:
                response.close()
                if last:
                    raise transport_failure(where, err) from None
                self.sleep(self.retry.delay(attempt))
                continue
            except httpx.RequestError as err:
                response.close()
                raise request_failure(where, err) from None
            except BaseException:
                response.close()
                raise
            if not stream:
                response.close()
            return response
        raise RegistryUnavailableError(f"registry {where} did not answer", hint="try again later")

    def _retry_after(self, response: httpx.Response, attempt: int) -> float:
        """Honour a small ``Retry-After`` (seconds); otherwise the policy's backoff."""
        value = response.headers.get("retry-after", "")
        if value.isdigit():
            return float(min(int(value), self.retry.max_delay))
        return self.retry.delay(attempt)


__all__ = ["RetryPolicy", "Session"]
