"""The Distribution API v2 client: resolve an image, then fetch its blobs, verified.

``resolve`` follows a tag or digest through an index to the manifest for the wanted
platform, checks every manifest's digest over the exact bytes served, and fetches and
verifies the image config.  ``fetch_blobs`` downloads layers concurrently into a blob
cache (see :mod:`shifter.registry.cache`).  Mirrors are tried before the registry; a
mirror that fails falls through to the next.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx

from shifter.config.site import SiteConfig
from shifter.errors import (
    DigestMismatchError,
    ImageNotFoundError,
    LayerError,
    ManifestError,
    PlatformMismatchError,
    RegistryError,
    RegistryUnavailableError,
)
from shifter.oci import mediatypes as mt
from shifter.oci.digest import Digest
from shifter.oci.manifest import (
    Descriptor,
    ImageConfig,
    ImageIndex,
    ImageManifest,
    parse_config,
    parse_manifest,
)
from shifter.oci.platform import Platform, host_platform, match_rank
from shifter.oci.reference import DOCKER_HUB, DOCKER_HUB_API, ImageRef
from shifter.registry.auth import RegistryAuth
from shifter.registry.blobs import BlobDownloader, DownloadCancelled
from shifter.registry.cache import BlobCache, BlobLock
from shifter.registry.credentials import Credential, CredentialStore
from shifter.registry.endpoints import Endpoint, endpoints, plain_http_allowed
from shifter.registry.progress import NullProgress, ProgressSink
from shifter.registry.responses import read_capped
from shifter.registry.session import RetryPolicy, Session

MAX_MANIFEST_SIZE = 4 * 1024 * 1024
MAX_CONFIG_SIZE = 32 * 1024 * 1024
MAX_INDEX_DEPTH = 2
LOCK_POLL_S = 0.5  # how often a wait for another process's download checks for cancellation
_T = TypeVar("_T")


@dataclass(frozen=True)
class ResolvedImage:
    """Everything known about an image before its layers are downloaded.

    ``digest`` is the platform-specific image manifest's digest (the image id);
    ``index_digest`` the digest of the index the tag pointed at, if any.
    """

    ref: ImageRef
    digest: str
    media_type: str
    manifest_bytes: bytes
    manifest: ImageManifest
    config_bytes: bytes
    config: ImageConfig
    platform: Platform
    index_digest: str | None = None

    @property
    def layers(self) -> tuple[Descriptor, ...]:
        return self.manifest.layers

    @property
    def top_digest(self) -> str:
        """What the tag points at (compare with :meth:`RegistryClient.head_digest`)."""
        return self.index_digest or self.digest


@dataclass(frozen=True)
class _Fetched:
    data: bytes
    content_type: str
    digest: str


class RegistryClient:
    """A registry client for one site configuration and one user's credentials."""

    def __init__(self, config: SiteConfig, credentials: CredentialStore,
                 transport: httpx.BaseTransport | None = None, *, retry: RetryPolicy | None = None,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
                 timeout: httpx.Timeout | None = None) -> None:
        self.config = config
        self.credentials = credentials
        self._credential_cache: dict[str, Credential | None] = {}
        self._lock = threading.Lock()
        self._dead_mirrors: set[str] = set()
        self.auth = RegistryAuth(self._credentials_for, lambda netloc: plain_http_allowed(netloc, config),
                                 clock)
        connect, idle, blob_total = config.registry_timeout
        http = httpx.Client(transport=transport, auth=self.auth, follow_redirects=True,
                            timeout=timeout or httpx.Timeout(float(idle), connect=float(connect)),
                            headers={"User-Agent": "shifter/0.1"})
        self.session = Session(http, retry or RetryPolicy(), sleep, clock=clock, blob_timeout=float(blob_total))

    def close(self) -> None:
        self.session.http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- resolving

    def default_platform(self) -> Platform:
        """The site's ``platform`` setting, else this host's platform."""
        return Platform.parse(self.config.platform) if self.config.platform else host_platform()

    def resolve(self, ref: ImageRef, platform: Platform | None = None) -> ResolvedImage:
        """Resolve ``ref`` to a verified manifest and config for ``platform`` (default: the host's)."""
        want = platform or self.default_platform()
        top = self._fetch_manifest(ref, ref.reference, ref.digest)
        parsed = parse_manifest(top.data, top.content_type, what=f"manifest of {ref}")
        fetched, index_digest, chosen = top, None, None
        for _ in range(MAX_INDEX_DEPTH + 1):
            if not isinstance(parsed, ImageIndex):
                break
            entry = parsed.select(want)
            index_digest, chosen = index_digest or fetched.digest, entry.platform
            fetched = self._fetch_manifest(ref, entry.digest, entry.digest, entry.size)
            parsed = parse_manifest(fetched.data, fetched.content_type or entry.media_type,
                                    what=f"manifest {entry.digest} of {ref}")
        if isinstance(parsed, ImageIndex):
            raise ManifestError(f"the index of {ref} nests more than {MAX_INDEX_DEPTH} levels deep",
                                hint="this is not a usable image")
        config_bytes = self._fetch_config(ref, parsed.config)
        config = parse_config(config_bytes, what=f"image config of {ref}")
        if chosen is None:
            chosen = _check_platform(ref, want, config)
        return ResolvedImage(ref, fetched.digest, parsed.media_type, fetched.data, parsed, config_bytes,
                             config, chosen, index_digest)

    def used_credentials(self, ref: ImageRef) -> bool:
        """True when a stored credential was sent to ``ref``'s registry or one of its mirrors (by
        this client so far): the image may be one only its puller is entitled to, so a pull that
        used credentials is private to the puller unless asked otherwise (``docs/internals.md``)."""
        hosts = {e.netloc for e in endpoints(ref, self.config)} | {ref.api_host, ref.registry}
        return bool(hosts & self.auth.credentials_sent)

    def head_digest(self, ref: ImageRef) -> str | None:
        """The digest the tag points at now (``HEAD``, ``Docker-Content-Digest``), or ``None``.

        Cheap check for re-pulling an unchanged tag; ``None`` when the registry does not say.
        """
        def attempt(endpoint: Endpoint) -> str | None:
            response = self.session.send("HEAD", self._manifest_url(endpoint, ref, ref.reference),
                                         headers={"Accept": mt.MANIFEST_ACCEPT}, what=f"manifest of {ref}",
                                         registry=ref.registry)
            value = response.headers.get("docker-content-digest", "")
            try:
                return str(Digest.parse(value))
            except ManifestError:
                return None
        return self._on_endpoints(ref, attempt)

    def _fetch_manifest(self, ref: ImageRef, reference: str, expected: str | None,
                        size: int | None = None) -> _Fetched:
        def attempt(endpoint: Endpoint) -> _Fetched:
            url = self._manifest_url(endpoint, ref, reference)
            with self._stream(endpoint, ref, url, {"Accept": mt.MANIFEST_ACCEPT},
                              what=f"manifest {reference} of {ref.name}") as response:
                data, too_big = read_capped(response, MAX_MANIFEST_SIZE)
                if too_big:
                    raise ManifestError(f"the manifest of {ref} is larger than {MAX_MANIFEST_SIZE} bytes",
                                        hint="this is not a usable image manifest")
                header = response.headers.get("docker-content-digest", "")
                content_type = response.headers.get("content-type", "")
            return _Fetched(data, content_type, _verify_manifest(ref, data, expected, header, size))
        return self._on_endpoints(ref, attempt)

    def _fetch_config(self, ref: ImageRef, descriptor: Descriptor) -> bytes:
        if descriptor.size > MAX_CONFIG_SIZE:
            raise ManifestError(f"the image config of {ref} declares {descriptor.size} bytes",
                                hint=f"image configs larger than {MAX_CONFIG_SIZE} bytes are refused")
        digest = Digest.parse(descriptor.digest)

        def attempt(endpoint: Endpoint) -> bytes:
            url = self._blob_url(endpoint, ref, descriptor.digest)
            with self._stream(endpoint, ref, url, {"Accept-Encoding": "identity"},
                              what=f"image config {descriptor.digest} of {ref}", blob=True) as response:
                data, too_big = read_capped(response, descriptor.size)
            if too_big or len(data) != descriptor.size:
                raise DigestMismatchError(f"the image config of {ref} is not the {descriptor.size} bytes "
                                          "its manifest declares", hint="the registry served corrupted data")
            digest.verify(data, what=f"the image config of {ref}")
            return data
        return self._on_endpoints(ref, attempt)

    # ------------------------------------------------------------------- blobs

    def fetch_blob(self, ref: ImageRef, descriptor: Descriptor, dest_path: Path,
                   progress: ProgressSink | None = None) -> Path:
        """Download one blob to ``dest_path`` (via ``dest_path.partial``, resumed if present)."""
        partial = dest_path.with_name(dest_path.name + ".partial")
        self._download(ref, descriptor, partial, progress or NullProgress())
        os.replace(partial, dest_path)
        return dest_path

    def fetch_blobs(self, ref: ImageRef, descriptors: Sequence[Descriptor], cache: BlobCache,
                    progress: ProgressSink | None = None) -> list[Path]:
        """Download the blobs concurrently into ``cache``; the cached paths, in ``descriptors`` order.

        Blobs already in the cache (of the right size) are not downloaded again.  Each download
        holds the blob's cache lock, so another process pulling an image that shares a layer
        waits for it (progress phase ``wait``) and then reuses the committed blob.  On the first
        failure the other downloads stop (keeping their partial files) and the error is raised.
        """
        sink = progress or NullProgress()
        unique = {d.digest: d for d in descriptors}
        self._check_image_size(ref, unique.values())
        cancel = threading.Event()
        workers = max(1, min(self.config.download_concurrency, len(unique)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="shifter-blob") as pool:
            futures: dict[str, Future[Path]] = {
                digest: pool.submit(self._cached_blob, ref, desc, cache, sink, cancel)
                for digest, desc in unique.items()}
            done, _ = wait(futures.values(), return_when=FIRST_EXCEPTION)
            failed = next((f for f in futures.values() if f in done and f.exception() is not None), None)
            if failed is not None:
                cancel.set()
                for future in futures.values():
                    future.cancel()
                wait(futures.values())
                raise failed.exception()  # type: ignore[misc]
        return [futures[d.digest].result() for d in descriptors]

    def _check_image_size(self, ref: ImageRef, descriptors: Iterable[Descriptor]) -> None:
        """Refuse, before downloading anything, layers that declare more than ``maxImageSize``
        (compressed bytes are a lower bound of what they unpack to; each download is cut off at
        its declared size)."""
        limit = self.config.max_image_size
        total = sum(max(0, d.size) for d in descriptors)
        if limit and total > limit:
            raise LayerError(f"the layers of {ref} declare {total} bytes to download, more than the site's "
                             f"limit of {limit} bytes (maxImageSize)",
                             hint="the image is too large for this site; an admin can raise maxImageSize in "
                                  "udiRoot.conf (0: no limit)")

    def _cached_blob(self, ref: ImageRef, descriptor: Descriptor, cache: BlobCache, sink: ProgressSink,
                     cancel: threading.Event) -> Path:
        """The blob in the cache: found there, or downloaded under its lock (one writer per blob)."""
        if _is_cached(cache, descriptor):
            return _report_cached(cache, descriptor, sink)
        lock = cache.lock(descriptor.digest)
        _take_blob_lock(lock, descriptor, sink, cancel)
        try:
            if _is_cached(cache, descriptor):  # another process committed it while we waited
                return _report_cached(cache, descriptor, sink)
            partial = cache.partial_path(descriptor.digest)
            self._download(ref, descriptor, partial, sink, cancel)
            cache.commit(descriptor.digest, partial)
        finally:
            lock.release()
        return cache.blob_path(descriptor.digest)

    def _download(self, ref: ImageRef, descriptor: Descriptor, partial: Path, sink: ProgressSink,
                  cancel: threading.Event | None = None) -> None:
        Digest.parse(descriptor.digest)
        points = [e for e in endpoints(ref, self.config) if e.base_url not in self._dead_mirrors]
        urls = [self._blob_url(e, ref, descriptor.digest) for e in points]
        if mt.is_foreign_layer(descriptor.media_type):
            urls += [u for u in descriptor.urls if u.startswith("https://")]
        BlobDownloader(self.session, ref.registry, cancel).download(urls, descriptor, partial, sink)

    # ----------------------------------------------------------------- helpers

    def _credentials_for(self, netloc: str) -> Credential | None:
        key = DOCKER_HUB if netloc == DOCKER_HUB_API else netloc
        with self._lock:
            if key not in self._credential_cache:
                self._credential_cache[key] = self.credentials.lookup(key)
            return self._credential_cache[key]

    @staticmethod
    def _manifest_url(endpoint: Endpoint, ref: ImageRef, reference: str) -> str:
        return f"{endpoint.base_url}/v2/{ref.repository}/manifests/{reference}"

    @staticmethod
    def _blob_url(endpoint: Endpoint, ref: ImageRef, digest: str) -> str:
        return f"{endpoint.base_url}/v2/{ref.repository}/blobs/{digest}"

    @contextmanager
    def _stream(self, endpoint: Endpoint, ref: ImageRef, url: str, headers: dict[str, str], *, what: str,
                blob: bool = False) -> Iterator[httpx.Response]:
        response = self.session.send("GET", url, headers=headers, what=what, registry=ref.registry,
                                     stream=True, blob=blob)
        try:
            yield response
        except httpx.TransportError as err:
            raise RegistryUnavailableError(f"registry {endpoint.netloc} broke off: {err}",
                                           hint="check the network, or try again later") from None
        finally:
            response.close()

    def _on_endpoints(self, ref: ImageRef, attempt: Callable[[Endpoint], _T]) -> _T:
        """Run ``attempt`` on each mirror, then on the registry, until one succeeds."""
        points = endpoints(ref, self.config)
        for endpoint in points:
            if endpoint.mirror and endpoint.base_url in self._dead_mirrors:
                continue
            try:
                return attempt(endpoint)
            except (RegistryError, ImageNotFoundError) as err:
                if not endpoint.mirror:
                    raise
                if isinstance(err, RegistryUnavailableError):
                    with self._lock:
                        self._dead_mirrors.add(endpoint.base_url)
        raise AssertionError("unreachable: the registry itself is always the last endpoint")


def _is_cached(cache: BlobCache, descriptor: Descriptor) -> bool:
    try:
        return cache.blob_path(descriptor.digest).stat().st_size == descriptor.size
    except FileNotFoundError:
        return False


def _report_cached(cache: BlobCache, descriptor: Descriptor, sink: ProgressSink) -> Path:
    sink.layer_start(descriptor.digest, descriptor.size)
    sink.layer_advance(descriptor.digest, descriptor.size)
    sink.layer_done(descriptor.digest)
    return cache.blob_path(descriptor.digest)


def _take_blob_lock(lock: BlobLock, descriptor: Descriptor, sink: ProgressSink, cancel: threading.Event) -> None:
    """Take the blob's lock; while another process holds it (downloading the same layer for
    another image), say so and wait, giving up when this batch is cancelled."""
    if lock.acquire(blocking=False):
        return
    sink.phase("wait", f"layer {descriptor.digest[:19]} is being downloaded by another process; waiting")
    while not lock.acquire(timeout=LOCK_POLL_S):
        if cancel.is_set():
            raise DownloadCancelled(descriptor.digest)


def _verify_manifest(ref: ImageRef, data: bytes, expected: str | None, header: str, size: int | None) -> str:
    """The manifest's digest, checked against the pinned digest, the declared size and the header."""
    if size is not None and len(data) != size:
        raise DigestMismatchError(f"a manifest of {ref} is {len(data)} bytes, its index declares {size}",
                                  hint="the registry served corrupted or tampered data")
    if expected:
        pinned = Digest.parse(expected, what="pinned digest")
        pinned.verify(data, what=f"the manifest of {ref}")
        return str(pinned)
    actual = Digest.of(data)
    if header:
        try:
            claimed = Digest.parse(header, what="Docker-Content-Digest")
        except ManifestError:
            return str(actual)
        if claimed.algorithm == actual.algorithm and claimed != actual:
            raise DigestMismatchError(f"the manifest of {ref} hashes to {actual}, "
                                      f"the registry says {claimed}",
                                      hint="a proxy or mirror altered the manifest; try again or check it")
    return str(actual)


def _check_platform(ref: ImageRef, want: Platform, config: ImageConfig) -> Platform:
    """A single-platform image must suit ``want`` when its config says what it is."""
    offered = config.platform
    if not offered.os or not offered.architecture:
        return want
    if match_rank(want, offered) is None:
        raise PlatformMismatchError(f"{ref} is built for {offered}, not for {want}; it offers: {offered}",
                                    hint="pick an image built for this platform, or set 'platform' in the "
                                         "site configuration")
    return offered


__all__ = ["MAX_CONFIG_SIZE", "MAX_MANIFEST_SIZE", "RegistryClient", "ResolvedImage", "RetryPolicy"]
