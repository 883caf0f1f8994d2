"""The REST gateway's operations, per system, on top of :class:`~shifter.gateway.service.ImageService`.

No HTTP here (``gateway.api`` maps these calls and their typed errors to routes and status
codes).  Rules enforced for every caller (a MUNGE-authenticated uid):

* lookup and list show an image only to those its access list lets run it (admins: all);
* a pull of a tag whose image is private to others is refused (403), and a pull that asks to
  change an image's list is refused unless the caller owns the image or is an admin (the
  service applies the same rule again);
* expire, autoexpire and metrics are for the system's admins; ``remove`` for the image's owner
  or an admin.

Pulls run in the background (:mod:`shifter.gateway.jobs`); a READY tag younger than
``pull_update_timeout`` is answered from the store without asking the registry.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import logging
import os
import threading
import time
from collections import deque
from typing import Any

from shifter.errors import AccessDeniedError, ImageNotFoundError, ShifterError, UsageError
from shifter.gateway import nersc
from shifter.gateway.acl import PUBLIC, ImageAcl, resolve_acl
from shifter.gateway.gwconfig import GatewayConfig, SystemConfig
from shifter.gateway.jobs import Job, JobSink, JobTable, describe
from shifter.gateway.records import Status
from shifter.gateway.repository import ImageRepository
from shifter.gateway.service import ImageService
from shifter.gateway.stores import Caller, choose_store
from shifter.gateway.taglock import pull_lock
from shifter.gateway.usage import UsageTable
from shifter.oci.reference import ImageRef, parse_image_arg
from shifter.store import publish

log = logging.getLogger("shifter.gateway")
_ROOT = Caller(0, 0, "root", "/")


class UnknownSystemError(ImageNotFoundError):
    """A system this gateway does not serve (HTTP 404)."""


@dataclasses.dataclass(frozen=True)
class PullAnswer:
    """A pull's current record, and for a failed one the exit code ``shifterimg`` gives its error."""

    record: dict[str, Any]
    exit_code: int | None = None


class TokenCredentials:
    """Registry credentials that came inside the caller's MUNGE payload (duck-types ``CredentialStore``)."""

    def __init__(self, tokens: dict[str, str]) -> None:
        self.tokens = tokens

    def lookup(self, registry: str) -> Any:
        from shifter.registry.credentials import Credential, normalize_registry  # noqa: PLC0415

        for location, value in self.tokens.items():
            name = "docker.io" if location == "default" else normalize_registry(location)
            if name == registry:
                user, _, password = value.partition(":")
                return Credential(user, password)
        return None


class SystemService:
    """One system: its store, database and service."""

    def __init__(self, gw: GatewayConfig, system: SystemConfig) -> None:
        self.system = system
        self.site = dataclasses.replace(gw.site, image_path=system.image_path, gateway_admins=system.admins,
                                        system=system.name, database_url=system.database(gw.database_url))
        self.choice = choose_store(self.site, _ROOT, site_writable=True)
        self.store = self.choice.store
        publish.ensure_layout(self.store)
        self.repo = ImageRepository.from_url(self.choice.database_url)
        self.service = ImageService(self.site, self.choice, self.repo)
        self.usage = UsageTable(self.repo.engine, system.name)
        self._meta: dict[str, tuple[int, dict[str, Any]]] = {}

    def puller(self, tokens: dict[str, str]) -> ImageService:
        """A service whose registry client uses the caller's tokens (and nobody else's)."""
        def registry() -> Any:
            from shifter.registry.client import RegistryClient  # noqa: PLC0415
            return RegistryClient(self.site, TokenCredentials(tokens))  # type: ignore[arg-type]
        return ImageService(self.site, self.choice, self.repo, registry=registry)

    def metadata(self, image_id: str) -> dict[str, Any] | None:
        """A READY image's metadata (cached while its json file is unchanged); None when not READY."""
        try:
            stamp = os.stat(self.store.metadata_file(image_id)).st_mtime_ns
        except OSError:
            return None
        cached = self._meta.get(image_id)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        if not self.store.is_ready(image_id):
            return None
        with contextlib.suppress(ShifterError):
            meta = dict(self.store.read_metadata(image_id))
            self._meta[image_id] = (stamp, meta)
            return meta
        return None

    def is_admin(self, caller: Caller) -> bool:
        return caller.is_admin(self.site)


def readable(meta: dict[str, Any], caller: Caller, admin: bool) -> bool:
    return admin or ImageAcl.from_json(meta.get("acl")).allows(caller.uid, caller.gid, caller.groups)


@functools.lru_cache(maxsize=4096)
def normalise(itype: str, tag: str) -> str:
    """NERSC's ``<imgtype>/<tag>`` as our tag text (``alpine`` -> ``alpine:latest``); 400 when bad."""
    if itype != "docker":
        raise UsageError(f"image type {itype!r} is not served by this gateway", hint="use docker")
    _type, ref = parse_image_arg(f"docker:{tag}")
    assert isinstance(ref, ImageRef)
    return str(ref)


def requested_acl(body: dict[str, Any], caller: Caller) -> ImageAcl | None:
    """The pull body's ``allowed_uids``/``allowed_gids`` (NERSC: comma-separated strings) or ``public``."""
    users, groups = _id_list(body.get("allowed_uids")), _id_list(body.get("allowed_gids"))
    acl = resolve_acl(users, groups, requester_uid=caller.uid)
    if body.get("public") is True:
        if acl is not None:
            raise UsageError("public cannot go with allowed_uids/allowed_gids", hint="give one or the other")
        return PUBLIC
    return acl


def _id_list(value: object) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list) and all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
        return [str(v) for v in value]
    raise UsageError("allowed_uids/allowed_gids must be comma-separated ids", hint='e.g. "1001,1002"')


class Gateway:
    """All systems of one gateway process, their pull jobs, metrics and sweeps."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.systems = {name: SystemService(config, system) for name, system in config.systems.items()}
        self.jobs = JobTable(config.workers, config.pull_timeout)
        self.lookups: deque[dict[str, Any]] = deque(maxlen=10_000)
        self.counters: dict[str, int] = {"lookups": 0, "lookup_misses": 0}
        self.checked: dict[tuple[str, str], float] = {}  # (system, tag) -> when the registry was last asked
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None

    # --- life cycle ------------------------------------------------------------------
    def start(self) -> None:
        """Fail (and clean) the pulls a crashed gateway left, then start the sweeper thread."""
        for sysvc in self.systems.values():
            for image_id in sysvc.service.recover():
                log.warning("system %s: pull of %s was interrupted (gateway restart): marked FAILED",
                            sysvc.system.name, image_id[:12])
        self._sweeper = threading.Thread(target=self._sweep_loop, name="sweeper", daemon=True)
        self._sweeper.start()

    def close(self) -> None:
        self._stop.set()
        self.jobs.close()
        for sysvc in self.systems.values():
            sysvc.usage.flush()

    def _sweep_loop(self) -> None:
        last_expire = time.monotonic()
        while not self._stop.wait(max(1, self.config.heartbeat)):
            for job in self.jobs.reap():
                log.warning("pull of %s failed: %s", job.key[1], job.message)
            for sysvc in self.systems.values():
                with contextlib.suppress(ShifterError):
                    sysvc.usage.flush()
            interval = self.config.autoexpire_interval
            if interval and time.monotonic() - last_expire > interval:
                last_expire = time.monotonic()
                for name in self.systems:
                    with contextlib.suppress(ShifterError):
                        self.autoexpire(name, _ROOT, admin_check=False)

    # --- lookups ---------------------------------------------------------------------
    def system(self, name: str) -> SystemService:
        try:
            return self.systems[name]
        except KeyError:
            raise UnknownSystemError(f"system {name!r} is not served by this gateway",
                                     hint=f"systems here: {', '.join(sorted(self.systems))}") from None

    def lookup(self, system: str, itype: str, tag: str, caller: Caller) -> dict[str, Any]:
        sysvc = self.system(system)
        ref = normalise(itype, tag)
        image_id = sysvc.store.resolve_tag("docker", ref)
        meta = sysvc.metadata(image_id) if image_id else None
        self.counters["lookups"] += 1
        # Not READY, or private to others: the same answer, so a lookup does not reveal private images.
        if image_id is None or meta is None or not readable(meta, caller, sysvc.is_admin(caller)):
            self.counters["lookup_misses"] += 1
            raise ImageNotFoundError(f"no READY image {itype}:{ref} on {system} for {caller.username}",
                                     hint=f"pull it: shifterimg pull {itype}:{ref}")
        sysvc.usage.touch(image_id)
        self.lookups.append({"user": caller.username, "uid": caller.uid, "system": system, "type": itype,
                             "tag": ref, "id": image_id, "time": time.time()})
        return nersc.record(system=system, itype=itype, tags=[ref], status="READY", image_id=image_id,
                            metadata=meta, message="ready")

    def images(self, system: str, caller: Caller) -> list[dict[str, Any]]:
        """READY images the caller may run, one record per image with all its tags."""
        sysvc = self.system(system)
        admin = sysvc.is_admin(caller)
        tags: dict[str, list[str]] = {}
        for image_type, ref, image_id in sysvc.store.tags():
            if image_type == "docker":
                tags.setdefault(image_id, []).append(ref)
        out = []
        for image_id, refs in sorted(tags.items()):
            meta = sysvc.metadata(image_id)
            if meta is not None and readable(meta, caller, admin):
                out.append(nersc.record(system=system, itype="docker", tags=sorted(refs), status="READY",
                                        image_id=image_id, metadata=meta, message="ready"))
        return out

    def queue(self, system: str) -> list[dict[str, Any]]:
        self.system(system)
        return [describe(job) for job in self.jobs.in_flight() if job.key[0] == system]

    # --- pulls -----------------------------------------------------------------------
    def pull(self, system: str, itype: str, tag: str, caller: Caller, *, tokens: dict[str, str],
             body: dict[str, Any]) -> PullAnswer:
        """The tag's current state; starts a background pull when needed."""
        sysvc = self.system(system)
        ref = normalise(itype, tag)
        acl = requested_acl(body, caller)
        key = (system, ref)
        request = (caller.uid, tuple(sorted(tokens.items())), acl)
        job = self.jobs.current(key, request)
        if job is None:
            ready = self._fresh_ready(sysvc, ref, caller, acl)
            if ready is not None:
                return PullAnswer(ready)
            job = self.jobs.submit(key, caller, lambda j: self._run_pull(sysvc, j, ref, tokens, acl), request)
        return PullAnswer(self._job_record(sysvc, job, itype), job.exit_code if job.status == "FAILURE" else None)

    def _fresh_ready(self, sysvc: SystemService, ref: str, caller: Caller,
                     acl: ImageAcl | None) -> dict[str, Any] | None:
        """The READY answer without a pull, or None; refuses pulls over others' private images."""
        image_id = sysvc.store.resolve_tag("docker", ref)
        meta = sysvc.metadata(image_id) if image_id else None
        if image_id is None or meta is None:
            return None
        admin = sysvc.is_admin(caller)
        current = ImageAcl.from_json(meta.get("acl"))
        if not readable(meta, caller, admin):
            raise AccessDeniedError(f"docker:{ref} on {sysvc.system.name} is private to other users",
                                    hint="ask its owner to add you (shifterimg pull -u), or an admin")
        if acl is not None and not acl.same_as(current):
            record = sysvc.repo.get(image_id)
            if not admin and (record is None or record.owner != caller.username):
                raise AccessDeniedError(f"{caller.username} may not change who can use docker:{ref} "
                                        f"(owner: {record.owner if record else 'unknown'})",
                                        hint="only the image's owner or a gateway admin can")
            return None
        checked = self.checked.get((sysvc.system.name, ref))
        if checked is None or time.monotonic() - checked > self.config.pull_update_timeout:
            return None
        sysvc.usage.touch(image_id)
        return nersc.record(system=sysvc.system.name, itype="docker", tags=[ref], status="READY",
                            image_id=image_id, metadata=meta, message="ready")

    def _run_pull(self, sysvc: SystemService, job: Job, ref: str, tokens: dict[str, str],
                  acl: ImageAcl | None) -> None:
        sink = JobSink(job)
        try:
            waiting = lambda: sink.phase("wait", "another gateway instance is pulling this tag")  # noqa: E731
            with pull_lock(sysvc.repo.engine, sysvc.store.locks_dir, sysvc.system.name, ref, waiting):
                record = sysvc.puller(tokens).pull(f"docker:{ref}", job.caller, sink, acl=acl)
            job.image_id = record.id
            meta = sysvc.store.read_metadata(record.id)
            nersc.write_meta(sysvc.store.root, record.id, meta)
            if sysvc.system.transfer == "rsync":
                sink.phase("transfer", f"copying {record.id[:12]} to {sysvc.system.name}")
                from shifter.gateway.transfer import send_image  # noqa: PLC0415
                send_image(sysvc.system, sysvc.store.root, record.id)
            sysvc.usage.touch(record.id)
            self.checked[(sysvc.system.name, ref)] = time.monotonic()
            job.status, job.message = "READY", "ready"
        except ShifterError as err:
            self.jobs.fail(job, err.render(), err.exit_code)
        except Exception as err:  # a bug: the job must still end, and say why
            log.exception("pull of %s crashed", ref)
            self.jobs.fail(job, f"internal error: {err.__class__.__name__}: {err}")
        finally:
            job.finished = job.finished or time.monotonic()

    def _job_record(self, sysvc: SystemService, job: Job, itype: str) -> dict[str, Any]:
        meta = sysvc.metadata(job.image_id) if job.image_id and job.status == "READY" else None
        return nersc.record(system=sysvc.system.name, itype=itype, tags=[job.key[1]], status=job.status,
                            image_id=job.image_id, metadata=meta, message=job.message)

    # --- import ------------------------------------------------------------------------
    def doimport(self, system: str, itype: str, tag: str, caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        """Import a squashfs file of the caller's on the gateway host as ``tag`` (``import_users`` only)."""
        from shifter.gateway import squashimport as imp  # noqa: PLC0415

        sysvc = self.system(system)
        ref = normalise(itype, tag)
        admin = sysvc.is_admin(caller)
        users = self.config.import_users
        if not admin and "all" not in users and caller.username not in users:
            raise AccessDeniedError(f"{caller.username} may not import images on {system}",
                                    hint="ask an admin to add you to import_users in the gateway config")
        if body.get("format", "squashfs") != "squashfs":
            raise UsageError("only format squashfs can be imported", hint='send "format": "squashfs"')
        acl = requested_acl(body, caller) or PUBLIC
        self._fresh_ready(sysvc, ref, caller, acl)  # refuses a tag of someone else's private image
        image_id, work, size = imp.copy_into_store(imp.open_import_file(body.get("filepath"), caller, admin),
                                                   sysvc.store)
        with publish.image_lock(sysvc.store, image_id):
            metadata = imp.import_metadata(image_id, ref, size, acl.to_json())
            publish.publish_image(sysvc.store, image_id, work, metadata)
            sysvc.repo.set_status(image_id, Status.READY, "imported", digest=f"sha256:{image_id}", type="docker",
                                  source=ref, owner=caller.username, size=size, acl=metadata["acl"],
                                  created="", pulled_at=dt.datetime.now(dt.UTC).replace(tzinfo=None))
            with publish.tags_lock(sysvc.store):
                publish.set_tag(sysvc.store, "docker", ref, image_id)
                sysvc.repo.set_tag("docker", ref, image_id, caller.username, None)
        nersc.write_meta(sysvc.store.root, image_id, metadata)
        if sysvc.system.transfer == "rsync":
            from shifter.gateway.transfer import send_image  # noqa: PLC0415
            send_image(sysvc.system, sysvc.store.root, image_id)
        sysvc.usage.touch(image_id)
        return nersc.record(system=system, itype=itype, tags=[ref], status="READY", image_id=image_id,
                            metadata=metadata, message="imported")

    # --- removal and expiry ----------------------------------------------------------
    def remove(self, system: str, itype: str, tag: str, caller: Caller) -> list[str]:
        """Remove a tag (its image goes with its last tag): the image's owner or an admin."""
        sysvc = self.system(system)
        ref = normalise(itype, tag)
        image_id = sysvc.store.resolve_tag("docker", ref)
        meta = sysvc.metadata(image_id) if image_id else None
        if image_id is None or (meta is not None and not readable(meta, caller, sysvc.is_admin(caller))):
            raise ImageNotFoundError(f"no image docker:{ref} on {system}", hint="see shifterimg images")
        removed = sysvc.service.remove(f"docker:{ref}", caller)
        if f"id:{image_id}" in removed:
            self._forget(sysvc, image_id)
        return removed

    def expire(self, system: str, itype: str, tag: str, caller: Caller) -> bool:
        """Expire (delete) the image a tag names, all its tags with it: admins only."""
        sysvc = self.system(system)
        ref = normalise(itype, tag)
        self._require_admin(sysvc, caller, "expire images")
        image_id = sysvc.store.resolve_tag("docker", ref)
        if image_id is None:
            raise ImageNotFoundError(f"no image docker:{ref} on {system}", hint="see shifterimg images")
        sysvc.service.remove(f"id:{image_id}", caller)
        self._forget(sysvc, image_id)
        return True

    def autoexpire(self, system: str, caller: Caller, *, admin_check: bool = True) -> list[str]:
        """Expire images unused (no lookup, no pull) for ``expire_after`` seconds: admins only."""
        sysvc = self.system(system)
        if admin_check:
            self._require_admin(sysvc, caller, "run autoexpire")
        sysvc.service.recover()
        if not self.config.expire_after:
            return []
        sysvc.usage.flush()
        horizon = time.time() - self.config.expire_after
        expired = []
        for record in sysvc.repo.list_images():
            if record.status is not Status.READY or record.status.busy:
                continue
            last = max(filter(None, [sysvc.usage.last_used(record.id), nersc.epoch(record.pulled_at),
                                     nersc.epoch(record.updated_at)]), default=0.0)
            if last < horizon:
                with contextlib.suppress(ShifterError):
                    sysvc.service.remove(f"id:{record.id}", _ROOT)
                    self._forget(sysvc, record.id)
                    expired.append(record.id)
        return expired

    def _forget(self, sysvc: SystemService, image_id: str) -> None:
        nersc.meta_path(sysvc.store.root, image_id).unlink(missing_ok=True)
        sysvc.usage.forget(image_id)
        sysvc._meta.pop(image_id, None)
        if sysvc.system.transfer == "rsync":
            from shifter.gateway.transfer import remove_image  # noqa: PLC0415
            remove_image(sysvc.system, image_id)

    def metrics(self, system: str, caller: Caller, limit: int) -> list[dict[str, Any]]:
        sysvc = self.system(system)
        self._require_admin(sysvc, caller, "read lookup metrics")
        rows = [row for row in list(self.lookups) if row["system"] == system]
        return rows[-limit:] if limit > 0 else []

    @staticmethod
    def _require_admin(sysvc: SystemService, caller: Caller, what: str) -> None:
        if not sysvc.is_admin(caller):
            raise AccessDeniedError(f"{caller.username} may not {what} on {sysvc.system.name}",
                                    hint="only the system's admins (admins in the gateway config) may")

    def prometheus(self) -> str:
        """The ``/metrics`` text (Prometheus exposition format)."""
        lines = ["# TYPE shifter_gateway_lookups_total counter",
                 f"shifter_gateway_lookups_total {self.counters['lookups']}",
                 "# TYPE shifter_gateway_lookup_misses_total counter",
                 f"shifter_gateway_lookup_misses_total {self.counters['lookup_misses']}",
                 "# TYPE shifter_gateway_pulls_started_total counter",
                 f"shifter_gateway_pulls_started_total {self.jobs.started}",
                 "# TYPE shifter_gateway_pulls_failed_total counter",
                 f"shifter_gateway_pulls_failed_total {self.jobs.failed}",
                 "# TYPE shifter_gateway_pulls_in_flight gauge",
                 f"shifter_gateway_pulls_in_flight {len(self.jobs.in_flight())}",
                 "# TYPE shifter_gateway_images gauge"]
        for name, sysvc in sorted(self.systems.items()):
            count = sum(1 for _ in sysvc.store.image_ids())
            lines.append(f'shifter_gateway_images{{system="{name}"}} {count}')
        return "\n".join(lines) + "\n"


def caller_for_uid(uid: int, gid: int) -> Caller:
    """The caller a credential names (from the gateway's user database; unknown uids keep their numbers)."""
    try:
        return Caller.for_uid(uid)
    except KeyError:
        return Caller(uid, gid, str(uid), "/", (gid,))


__all__ = ["Gateway", "PullAnswer", "SystemService", "TokenCredentials", "UnknownSystemError", "caller_for_uid",
           "normalise"]
