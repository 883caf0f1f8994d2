"""Two processes pulling two *different* images that share a layer: one downloads the shared
blob, the other waits for the blob's cache lock and reuses the committed blob (no two writers
on one partial file, which would commit a blob whose bytes were never verified)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shifter.config.site import load_config
from shifter.store.layout import ImageStore
from tests.fixtures.images import Layer, directory, file, layer_tar, push_image
from tests.fixtures.processes import wait_for_text
from tests.fixtures.registry import Registry

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _child(ref: str, events: Path, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "tests.integration.blob_child", ref], cwd=ROOT,
                            env={**os.environ, "EVENTS": str(events), **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_two_images_sharing_a_layer_download_it_once(site_config: Path, registry: Registry,
                                                     busybox_layer: Layer, tmp_path: Path) -> None:
    refs = []
    for name in ("left", "right"):
        top = layer_tar([directory(name), file(f"{name}/id.txt", name.encode())])
        ref = f"{registry.host}/test/shared-{name}:1"
        push_image(tmp_path / f"layout-{name}", ref, [busybox_layer, top])
        refs.append(ref)
    shared = busybox_layer.digest
    first_log, second_log, go = tmp_path / "first.log", tmp_path / "second.log", tmp_path / "go"

    first = _child(refs[0], first_log, HOLD_DIGEST=shared, GO=str(go))
    wait_for_text(first_log, "hold", first)  # mid-download of the shared layer, holding its lock
    second = _child(refs[1], second_log)
    wait_for_text(second_log, f"phase wait layer {shared[:19]}", second)
    go.touch()
    for proc in (first, second):
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()

    # the second process reported the shared layer as found in the cache, in one step
    advances = [line for line in second_log.read_text().splitlines() if line.startswith(f"advance {shared}")]
    assert advances == [f"advance {shared} {len(busybox_layer.blob)}"]
    config = load_config()
    blob = Path(config.image_path) / "cache" / "blobs" / "sha256" / shared.split(":")[1]
    assert "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest() == shared
    store = ImageStore(config.image_path)
    for ref in refs:
        image_id = store.resolve_tag("docker", ref)
        assert image_id is not None and store.is_ready(image_id)
