"""A pull that died (kill -9, Ctrl-C on ``shifter`` while it auto-pulls) is seen as dead at once, and
what it left (work files, partial downloads) is reclaimed by ``recover``/``prune`` and counted by
``status``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shifter.cli import gateway, shifterimg
from shifter.config.site import load_config
from shifter.gateway.models import Status
from shifter.gateway.service import ImageService
from shifter.gateway.stores import Caller
from tests.conftest import PushedImage
from tests.fixtures.hostile_registry import hostile_registry
from tests.fixtures.processes import wait_for_text
from tests.fixtures.runtime import VENV_BIN

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _killed_pull(ref: str, log: Path) -> None:
    """Start a pull in a child process and kill -9 it while it converts."""
    env = {**os.environ, "PULL_LOG": str(log), "PULL_PAUSE": "60"}
    proc = subprocess.Popen([sys.executable, "-m", "tests.integration.pull_child", ref], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_text(log, "converting", proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_lookup_and_images_see_a_killed_puller_as_dead_at_once(site_config: Path, busybox_image: PushedImage,
                                                               tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    _killed_pull(busybox_image.ref, tmp_path / "pull.log")
    image_id = busybox_image.digest.split(":")[1]
    service = ImageService.embedded(load_config())
    assert service.repo.get(image_id).status is Status.CONVERTING  # type: ignore[union-attr]

    assert shifterimg.run(["lookup", busybox_image.ref]) == 1  # no `recover`, no new pull
    err = capsys.readouterr().err
    assert "FAILED" in err and "died" in err and "pull it again" in err and "wait" not in err
    assert shifterimg.run(["images", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["status"] for row in rows if row["id"] == image_id] == ["FAILED"]
    assert not any(service.store.tmp_dir.iterdir())  # its work files went with it


def test_recover_and_prune_reclaim_partial_downloads_and_status_counts_them(
        site_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    service = ImageService.embedded(load_config())
    partial_dir = service.cache.partial_dir
    partial_dir.mkdir(parents=True, exist_ok=True)
    dead = partial_dir / ("a" * 64)  # a download whose process died: nobody holds its lock
    dead.write_bytes(b"x" * 100_000)
    live = partial_dir / ("b" * 64)  # a download in progress: its lock is held
    live.write_bytes(b"y" * 1000)
    lock = service.cache.lock("sha256:" + "b" * 64)
    assert lock.acquire(blocking=False)
    try:
        assert gateway.run(["status", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["partial_bytes"] == 101_000
        assert gateway.run(["recover"]) == 0
        assert "100000 bytes of partial downloads removed" in capsys.readouterr().out
        assert not dead.exists() and live.exists()

        dead.write_bytes(b"x" * 5000)
        assert gateway.run(["prune", "--max-size", "0"]) == 0
        assert "5000 bytes of partial downloads" in capsys.readouterr().out
        assert not dead.exists() and live.exists()
    finally:
        lock.release()


def test_ctrl_c_on_shifter_while_it_auto_pulls_lets_the_pull_record_it(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("runs shifter as root with a root-owned site configuration")
    (tmp_path / "images").mkdir()
    conf = tmp_path / "udiRoot.conf"
    with hostile_registry() as registry:  # its trickle image: a pull that takes long enough to interrupt
        conf.write_text(f"imagePath={tmp_path / 'images'}\nudiMount=/var/lib/shifter-test-none/u\n"
                        f"loopMount=/var/lib/shifter-test-none/l\nregistryTimeout=5,30,600\n")
        err_file = tmp_path / "stderr"
        ref = f"{registry}/trickle/app:1"
        with open(err_file, "wb") as err:
            proc = subprocess.Popen([str(VENV_BIN / "shifter"), f"--image={ref}", "true"], stderr=err,
                                    stdout=subprocess.DEVNULL, env={"PATH": "/usr/bin:/bin",
                                                                    "SHIFTER_CONFIG": str(conf)},
                                    start_new_session=True)
            wait_for_text(err_file, "pulling", proc)
            time.sleep(0.5)
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
            assert proc.wait(timeout=60) == 130
    text = err_file.read_text()
    assert "Traceback" not in text
    assert text.splitlines()[-1].startswith(f"shifter: error: interrupted while pulling docker:{ref}")
    service = ImageService.embedded(load_config(str(conf)), Caller.current())
    records = service.repo.list_images()
    assert [r.status for r in records] == [Status.FAILED] and "interrupted" in records[0].status_message
