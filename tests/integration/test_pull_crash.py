"""A pull killed with SIGKILL leaves nothing READY; the next pull recovers by itself.
Two processes pulling the same image at once do the work once and both succeed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from shifter.config.site import load_config
from shifter.gateway.models import Status
from shifter.gateway.service import ImageService
from shifter.gateway.stores import Caller
from tests.conftest import PushedImage
from tests.fixtures.processes import wait_for_text

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _child(ref: str, log: Path, pause: float) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PULL_LOG": str(log), "PULL_PAUSE": str(pause)}
    return subprocess.Popen([sys.executable, "-m", "tests.integration.pull_child", ref], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_kill_9_during_conversion_then_pull_again_recovers(site_config: Path, busybox_image: PushedImage,
                                                           tmp_path: Path) -> None:
    log = tmp_path / "pull.log"
    image_id = busybox_image.digest.split(":")[1]
    proc = _child(busybox_image.ref, log, pause=60)
    wait_for_text(log, "converting", proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    service = ImageService.embedded(load_config())
    store = service.store
    assert not store.is_ready(image_id)
    assert not store.metadata_path(image_id).exists()
    assert store.resolve_tag("docker", busybox_image.ref) is None
    stale = service.repo.get(image_id)
    assert stale is not None and stale.status is Status.CONVERTING
    assert any(store.tmp_dir.iterdir())  # the dead pull's tree is still there

    record = service.pull(busybox_image.ref, Caller.current())
    assert record.status is Status.READY and store.is_ready(image_id)
    assert list(store.tmp_dir.iterdir()) == []


def test_two_processes_pulling_one_image_convert_it_once(site_config: Path, busybox_image: PushedImage,
                                                         tmp_path: Path) -> None:
    log = tmp_path / "pull.log"
    procs = [_child(busybox_image.ref, log, pause=0.5) for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    for proc, (_out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()
    ids = {out.decode().strip() for out, _ in outputs}
    assert ids == {busybox_image.digest.split(":")[1]}
    assert log.read_text().count("built") == 1
