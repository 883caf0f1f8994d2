"""Copy a READY image to a system whose ``imagePath`` the gateway cannot write directly.

``transfer = "rsync"``: each file goes with ``rsync`` (over ``ssh -o BatchMode=yes`` when the
system has a ``host``) to a temporary name in the remote ``imagePath``, then is renamed into
place (``mv`` over ssh): a reader there never sees a half-written file.  The squashfs goes first,
then the ``.meta``, and the ``.json`` last: the image is READY on that side only when all are
there.  Compute nodes then read the one shared copy of that system.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from shifter.errors import StoreError
from shifter.gateway.gwconfig import SystemConfig

_TIMEOUT_S = 3600
_SSH = ["ssh", "-o", "BatchMode=yes"]


def _run(argv: list[str]) -> None:
    try:
        subprocess.run(argv, check=True, capture_output=True, timeout=_TIMEOUT_S, cwd="/", text=True)
    except FileNotFoundError:
        raise StoreError(f"cannot run {argv[0]}", hint="install rsync and openssh-client on the gateway") from None
    except subprocess.CalledProcessError as err:
        detail = (err.stderr or "").strip().splitlines()[-1:] or [f"exit {err.returncode}"]
        raise StoreError(f"transfer failed: {' '.join(argv[:2])}...: {detail[0]}",
                         hint="check the system's host, remote_image_path and the gateway's ssh key") from None
    except subprocess.TimeoutExpired:
        raise StoreError(f"transfer timed out after {_TIMEOUT_S} s", hint="check the network to the system") from None


def _rename(system: SystemConfig, tmp: str, final: str) -> None:
    if system.host:
        _run([*_SSH, system.host, f"mv -f -- {shlex.quote(tmp)} {shlex.quote(final)}"])
    else:
        Path(tmp).replace(final)


def _remove(system: SystemConfig, paths: list[str]) -> None:
    if system.host:
        _run([*_SSH, system.host, "rm -f -- " + " ".join(shlex.quote(p) for p in paths)])
    else:
        for path in paths:
            Path(path).unlink(missing_ok=True)


def send_image(system: SystemConfig, image_path: Path, image_id: str) -> None:
    """Copy ``<id>.squashfs``, ``<id>.meta`` and ``<id>.json`` to the system (temp name, then rename)."""
    remote = system.remote_image_path.rstrip("/")
    for name in (f"{image_id}.squashfs", f"{image_id}.meta", f"{image_id}.json"):
        source = image_path / name
        if not source.exists():
            continue
        tmp, final = f"{remote}/.{name}.transfer", f"{remote}/{name}"
        target = f"{system.host}:{tmp}" if system.host else tmp
        ssh = ["-e", " ".join(_SSH)] if system.host else []
        _run(["rsync", "--perms", "--times", "--acls", *ssh, "--", str(source), target])
        _rename(system, tmp, final)


def remove_image(system: SystemConfig, image_id: str) -> None:
    """Delete an expired image on the system (json first: it stops being READY there)."""
    remote = system.remote_image_path.rstrip("/")
    _remove(system, [f"{remote}/{image_id}.json", f"{remote}/{image_id}.meta", f"{remote}/{image_id}.squashfs"])


__all__ = ["remove_image", "send_image"]
