"""Issue 2, requirement 8, through the ``shifterimg`` command line: each failure is one line on
stderr with a hint, exits with the code docs/cli.md documents, and leaves the store as it was.

Unknown image (3), registry down (7) and digest mismatch (10) are in ``test_shifterimg_cli``;
this file covers auth failure (6), platform mismatch (9), malformed manifest/config (8),
malformed layer (11) and disk full (14, on a real tmpfs that is too small).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from shifter.errors import DISK_FULL_HINT
from tests.fixtures.images import MT_OCI_CONFIG, MT_OCI_MANIFEST, OCILayout, file, layer_tar, push, raw_layer
from tests.fixtures.registry import Registry
from tests.integration.test_shifterimg_cli import one_error_line, shifterimg, snapshot

pytestmark = pytest.mark.integration


def _small_image(registry: Registry, tmp_path: Path, name: str) -> str:
    layout = OCILayout(tmp_path / f"layout-{name}")
    layout.add_image("t", [layer_tar([file("etc/tiny.conf", b"tiny=1\n")])])
    ref = f"{registry.host}/errors/{name}:1"
    push(layout.root, "t", ref)
    return ref


def _ready_before(capsys: pytest.CaptureFixture[str], ref: str) -> str:
    code, _, err = shifterimg(capsys, "pull", ref)
    assert code == 0, err
    return shifterimg(capsys, "lookup", ref)[1].strip()


def _fails_cleanly(capsys: pytest.CaptureFixture[str], store: Path, ref: str,
                   code: int) -> str:
    """Pull ``ref``: exit ``code``, nothing on stdout, one error line with a hint, store unchanged."""
    before = snapshot(store)
    got, out, err = shifterimg(capsys, "pull", ref)
    assert got == code, err
    assert out == "" and one_error_line(err), err
    assert snapshot(store) == before
    work = store / ".tmp"
    assert not work.is_dir() or not any(work.iterdir())  # no work files left behind
    return err.splitlines()[-1]


def test_auth_failure_exit_6(capsys: pytest.CaptureFixture[str], store: Path,
                             auth_registry: Registry, tmp_path: Path) -> None:
    layout = OCILayout(tmp_path / "layout")
    layout.add_image("t", [layer_tar([file("secret", b"1")])])
    ref = f"{auth_registry.host}/team/locked:1"
    push(layout.root, "t", ref, creds=auth_registry.creds)
    line = _fails_cleanly(capsys, store, ref, 6)
    assert "shifterimg login" in line


def test_platform_mismatch_exit_9_lists_what_is_offered(capsys: pytest.CaptureFixture[str],
                                                        store: Path, registry: Registry,
                                                        tmp_path: Path) -> None:
    layout = OCILayout(tmp_path / "layout")
    layout.add_index("t", [([layer_tar([file("arm", b"1")])], ("linux", "arm64", "v8"))])
    ref = f"{registry.host}/errors/arm-only:1"
    push(layout.root, "t", ref, all_platforms=True)
    line = _fails_cleanly(capsys, store, ref, 9)
    assert "linux/arm64" in line and "offers" in line


def _put_blob(registry: Registry, repo: str, data: bytes) -> dict[str, object]:
    import httpx  # noqa: PLC0415
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with httpx.Client(base_url=registry.url) as client:
        start = client.post(f"/v2/{repo}/blobs/uploads/")
        assert start.status_code == 202, start.text
        location = httpx.URL(start.headers["location"])  # keeps the registry's own _state parameter
        done = client.put(location.copy_merge_params({"digest": digest}), content=data,
                          headers={"Content-Type": "application/octet-stream"})
        assert done.status_code == 201, done.text
    return {"digest": digest, "size": len(data)}


def _put_manifest(registry: Registry, repo: str, tag: str, manifest: dict[str, object]) -> None:
    import httpx  # noqa: PLC0415
    response = httpx.put(f"{registry.url}/v2/{repo}/manifests/{tag}", content=json.dumps(manifest).encode(),
                         headers={"Content-Type": MT_OCI_MANIFEST})
    assert response.status_code == 201, response.text


def test_malformed_image_config_exit_8(capsys: pytest.CaptureFixture[str], store: Path,
                                       registry: Registry) -> None:
    repo = "errors/bad-config"
    config = _put_blob(registry, repo, b"{this is not JSON")
    layer = layer_tar([file("a", b"1")])
    layer_desc = _put_blob(registry, repo, layer.blob)
    _put_manifest(registry, repo, "1", {"schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
                                        "config": {"mediaType": MT_OCI_CONFIG, **config},
                                        "layers": [{"mediaType": layer.media_type, **layer_desc}]})
    _fails_cleanly(capsys, store, f"{registry.host}/{repo}:1", 8)


def test_malformed_manifest_exit_8(capsys: pytest.CaptureFixture[str], store: Path,
                                   registry: Registry) -> None:
    repo = "errors/bad-manifest"
    config = _put_blob(registry, repo, b"{}")
    # a layer whose media type no image format knows: the client must refuse, not guess
    layer_desc = _put_blob(registry, repo, b"whatever")
    _put_manifest(registry, repo, "1", {"schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
                                        "config": {"mediaType": MT_OCI_CONFIG, **config},
                                        "layers": [{"mediaType": "application/x-not-a-layer", **layer_desc}]})
    _fails_cleanly(capsys, store, f"{registry.host}/{repo}:1", 8)


def test_malformed_layer_exit_11(capsys: pytest.CaptureFixture[str], store: Path,
                                 registry: Registry, tmp_path: Path) -> None:
    previous_ref = _small_image(registry, tmp_path, "before-garbage")
    previous = _ready_before(capsys, previous_ref)
    layout = OCILayout(tmp_path / "layout")
    layout.add_image("t", [raw_layer(os.urandom(64 * 1024), "gzip")])  # garbage bytes as a layer
    ref = f"{registry.host}/errors/garbage-layer:1"
    push(layout.root, "t", ref)
    _fails_cleanly(capsys, store, ref, 11)
    assert shifterimg(capsys, "lookup", previous_ref)[1].strip() == previous


# --------------------------------------------------------------------------- disk full, for real
@pytest.fixture
def tiny_store(store: Path) -> Iterator[Path]:
    """The site store on a 4 MiB tmpfs (needs root to mount)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(store)], check=True)
    try:
        yield store
    finally:
        subprocess.run(["umount", "-l", str(store)], check=False)


def _big_random_image(registry: Registry, tmp_path: Path, name: str) -> str:
    """A layer of 6 MiB incompressible bytes: larger than the tmpfs in every form."""
    layout = OCILayout(tmp_path / f"layout-{name}")
    layout.add_image("t", [layer_tar([file("data/random.bin", os.urandom(6 * 1024 * 1024))])])
    ref = f"{registry.host}/errors/{name}:1"
    push(layout.root, "t", ref)
    return ref


def _digest_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_disk_full(capsys: pytest.CaptureFixture[str], store: Path, ref: str, previous_ref: str,
                      previous_id: str) -> None:
    squashfs = store / f"{previous_id}.squashfs"
    before_hash = _digest_of(squashfs)
    line = _fails_cleanly(capsys, store, ref, 14)
    assert "no space left" in line
    assert shifterimg(capsys, "lookup", previous_ref)[1].strip() == previous_id  # the previous image is intact
    assert _digest_of(squashfs) == before_hash
    partial = store / "cache" / "partial" / "sha256"
    assert not partial.is_dir() or sum(p.stat().st_size for p in partial.iterdir()) == 0


def test_disk_full_while_downloading_exit_14(capsys: pytest.CaptureFixture[str], tiny_store: Path,
                                             registry: Registry, tmp_path: Path) -> None:
    previous_ref = _small_image(registry, tmp_path, "before-full-download")
    previous = _ready_before(capsys, previous_ref)
    ref = _big_random_image(registry, tmp_path, "too-big-download")
    _assert_disk_full(capsys, tiny_store, ref, previous_ref, previous)


def test_disk_full_while_converting_exit_14(capsys: pytest.CaptureFixture[str], tiny_store: Path,
                                            site_config: Path, registry: Registry, tmp_path: Path) -> None:
    cache = tmp_path / "cache-elsewhere"  # the blobs fit; the image does not
    with open(site_config, "a") as conf:
        conf.write(f"cacheDir={cache}\n")
    previous_ref = _small_image(registry, tmp_path, "before-full-convert")
    previous = _ready_before(capsys, previous_ref)
    ref = _big_random_image(registry, tmp_path, "too-big-convert")
    _assert_disk_full(capsys, tiny_store, ref, previous_ref, previous)
    assert any(cache.rglob("*")), "the download went to the cache outside the full store"


@pytest.mark.parametrize("builder", ["tar2sqfs", "mksquashfs"])
def test_store_full_during_conversion_is_exit_14_whichever_builder(
        builder: str, capsys: pytest.CaptureFixture[str], store: Path, site_config: Path, registry: Registry,
        tmp_path: Path) -> None:
    """A store with more room than the builder's slack check (tar2sqfs deletes its output when it
    fails, and says only "I/O error"): still exit 14, with the same message and hint."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m,mode=0755", "tmpfs", str(store)], check=True)
    try:
        with open(site_config, "a") as conf:
            conf.write(f"cacheDir={tmp_path / 'cache'}\nsquashfsBuilder={builder}\n")
        layout = OCILayout(tmp_path / "layout")
        layout.add_image("t", [layer_tar([file("data/random.bin", os.urandom(32 * 1024 * 1024))])])
        ref = f"{registry.host}/errors/full-{builder}:1"
        push(layout.root, "t", ref)
        line = _fails_cleanly(capsys, store, ref, 14)
        assert "no space left while writing" in line and line.endswith(f"(hint: {DISK_FULL_HINT})")
    finally:
        subprocess.run(["umount", "-l", str(store)], check=False)
