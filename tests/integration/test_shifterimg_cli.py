"""``shifterimg`` end to end: real docker-registry on 127.0.0.1, real mksquashfs, real store.

Commands run in-process through :func:`shifter.cli.shifterimg.run` (fresh state per call, as
a new process would have); one test runs the installed console script itself.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from shifter.cli.shifterimg import run
from tests.conftest import AUTH_PASSWORD, AUTH_USER, PushedImage
from tests.fixtures.images import OCILayout, file, layer_tar, push, push_image
from tests.fixtures.registry import Registry, free_port

pytestmark = pytest.mark.integration


def shifterimg(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = run(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> bool:
    """stderr ends with exactly one ``shifterimg: error:`` line (progress lines may come before it)."""
    lines = err.splitlines()
    errors = [x for x in lines if x.startswith("shifterimg: error: ")]
    return len(errors) == 1 and lines[-1] == errors[0] and "(hint: " in errors[0]


def snapshot(store: Path) -> set[str]:
    """What a reader of the store can see: images, metadata and tags (not db, locks, cache)."""
    if not store.is_dir():
        return set()
    seen = {p.name for p in store.iterdir() if p.suffix in (".squashfs", ".json")}
    tags = store / "tags"
    if tags.is_dir():
        seen |= {str(p.relative_to(store)) for p in tags.rglob("*") if p.is_file()}
    return seen


def test_pull_images_lookup_inspect_rm(capsys: pytest.CaptureFixture[str], store: Path,
                                       busybox_image: PushedImage) -> None:
    code, out, err = shifterimg(capsys, "pull", busybox_image.ref)
    assert code == 0, err
    assert out.rstrip().endswith(f"Pulling Image: docker:{busybox_image.ref}, status: READY")
    image_id = busybox_image.digest.split(":")[1]
    assert (store / f"{image_id}.squashfs").is_file()

    code, out, _ = shifterimg(capsys, "images")
    assert code == 0
    line = next(x for x in out.splitlines() if x.endswith(busybox_image.ref))
    assert line.split()[:4] == ["testsys", "docker", "READY", image_id[:10]]

    code, out, _ = shifterimg(capsys, "images", "--json")
    assert any(row["id"] == image_id and row["tag"] == busybox_image.ref for row in json.loads(out))

    assert shifterimg(capsys, "lookup", busybox_image.ref)[:2] == (0, image_id + "\n")

    code, out, _ = shifterimg(capsys, "inspect", f"docker:{busybox_image.ref}")
    info = json.loads(out)
    assert code == 0
    assert info["id"] == image_id and info["digest"] == busybox_image.digest and info["status"] == "READY"
    assert "IMAGE_VAR=from-image" in info["env"] and info["workdir"] == "/app" and info["cmd"] == ["/bin/sh"]
    assert info["labels"] == {"org.example.test": "yes"} and len(info["layers"]) == 2
    assert f"docker:{busybox_image.ref}" in info["tags"] and info["size"] > 0 and info["created"]
    assert "entrypoint" in info and "user" in info

    code, out, _ = shifterimg(capsys, "rm", busybox_image.ref)
    assert code == 0 and f"removed docker:{busybox_image.ref}" in out
    assert shifterimg(capsys, "lookup", busybox_image.ref)[0] == 1
    assert not (store / f"{image_id}.squashfs").exists()


def test_pull_by_digest_and_repull_does_no_work(capsys: pytest.CaptureFixture[str], store: Path,
                                                 busybox_image: PushedImage) -> None:
    name = busybox_image.ref.rsplit(":", 1)[0]
    by_digest = f"docker:{name}@{busybox_image.digest}"
    code, _, err = shifterimg(capsys, "pull", by_digest)
    assert code == 0, err
    assert shifterimg(capsys, "lookup", by_digest)[1].strip() == busybox_image.digest.split(":")[1]

    assert shifterimg(capsys, "pull", busybox_image.ref)[0] == 0
    code, out, err = shifterimg(capsys, "pull", busybox_image.ref)  # unchanged tag: manifest check only
    assert code == 0 and "status: READY" in out
    assert "converting" not in err and "layer " not in err


def test_unknown_image_exit_3_store_unchanged(capsys: pytest.CaptureFixture[str], store: Path,
                                              registry: Registry) -> None:
    before = snapshot(store)
    code, out, err = shifterimg(capsys, "pull", f"{registry.host}/test/does-not-exist:1")
    assert code == 3 and out == ""
    assert one_error_line(err)
    assert snapshot(store) == before


def test_dead_registry_exit_7(capsys: pytest.CaptureFixture[str], store: Path) -> None:
    before = snapshot(store)
    code, _, err = shifterimg(capsys, "pull", f"127.0.0.1:{free_port()}/test/app:1")
    assert code == 7 and one_error_line(err)
    assert snapshot(store) == before


def test_digest_mismatch_exit_10_store_unchanged(capsys: pytest.CaptureFixture[str], store: Path,
                                                 registry: Registry, tmp_path: Path) -> None:
    layer = layer_tar([file("data/payload.bin", b"original content " * 1000)])
    ref = f"{registry.host}/test/corrupt:1"
    push_image(tmp_path / "layout", ref, [layer])
    blob = registry.root / "data" / "docker" / "registry" / "v2" / "blobs" / "sha256" / \
        layer.digest[7:9] / layer.digest[7:] / "data"
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different content: only the digest check can tell
    blob.write_bytes(bytes(data))
    before = snapshot(store)
    code, out, err = shifterimg(capsys, "pull", ref)
    assert code == 10, err
    assert out == "" and one_error_line(err)
    assert snapshot(store) == before


def test_login_then_pull_private_image(capsys: pytest.CaptureFixture[str], store: Path, site_config: Path,
                                       auth_registry: Registry, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    ref = f"{auth_registry.host}/team/private:1"
    push_image(tmp_path / "layout", ref, [layer_tar([file("secret.txt", b"42\n")])],
               creds=auth_registry.creds)
    auth_file = site_config.parent / "home" / ".config" / "shifter" / "auth.json"

    assert shifterimg(capsys, "pull", ref)[0] == 6  # anonymous: refused

    monkeypatch.setattr("sys.stdin", io.StringIO("wrong-password\n"))
    code, _, err = shifterimg(capsys, "login", "-u", AUTH_USER, "--password-stdin", auth_registry.host)
    assert code == 6 and one_error_line(err) and not auth_file.exists()

    monkeypatch.setattr("sys.stdin", io.StringIO(AUTH_PASSWORD + "\n"))
    code, out, err = shifterimg(capsys, "login", "-u", AUTH_USER, "--password-stdin", auth_registry.host)
    assert code == 0, err
    assert auth_file.stat().st_mode & 0o777 == 0o600 and AUTH_PASSWORD not in out

    code, out, err = shifterimg(capsys, "pull", ref)
    assert code == 0, err
    assert "status: READY" in out


def _docker_archive(layout: Path, tag: str, dest: Path, name: str) -> Path:
    subprocess.run(["skopeo", "copy", "--quiet", f"oci:{layout}:{tag}", f"docker-archive:{dest}:{name}"],
                   check=True, capture_output=True, timeout=120)
    return dest


def _oci_tarball(layout: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w") as tar:
        for path in sorted(layout.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(layout)), recursive=False)
    return dest


def test_import_docker_archive_and_oci_layout(capsys: pytest.CaptureFixture[str], store: Path,
                                              tmp_path: Path) -> None:
    layout = OCILayout(tmp_path / "layout")
    digest = layout.add_image("t", [layer_tar([file("bin/tool", b"#!/bin/sh\n", 0o755)]),
                                    layer_tar([file("etc/app.conf", b"x=1\n")])],
                              config={"Entrypoint": ["/bin/tool"]})
    docker_tar = _docker_archive(layout.root, "t", tmp_path / "app.tar", "app:1")
    oci_tar = _oci_tarball(layout.root, tmp_path / "app-oci.tar")

    code, out, err = shifterimg(capsys, "import", str(docker_tar), "docker:app:1")
    assert code == 0, err
    assert out.rstrip().endswith("Importing Image: docker:app:1, status: READY")
    code, out, err = shifterimg(capsys, "import", str(oci_tar), "app:oci")
    assert code == 0, err

    oci_id = shifterimg(capsys, "lookup", "app:oci")[1].strip()
    assert oci_id == digest.split(":")[1]  # an OCI layout keeps the registry's manifest digest
    info = json.loads(shifterimg(capsys, "inspect", "app:1")[1])
    assert info["entrypoint"] == ["/bin/tool"] and info["status"] == "READY" and len(info["layers"]) == 2
    assert (store / f"{info['id']}.squashfs").is_file()


def test_import_tampered_archive_leaves_store_unchanged(capsys: pytest.CaptureFixture[str], store: Path,
                                                        tmp_path: Path) -> None:
    layout = OCILayout(tmp_path / "layout")
    layer = layer_tar([file("x", b"payload" * 100)])
    layout.add_image("t", [layer])
    blob = layout.root / "blobs" / "sha256" / layer.digest[7:]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    before = snapshot(store)
    code, _, err = shifterimg(capsys, "import", str(_oci_tarball(layout.root, tmp_path / "bad.tar")), "bad:1")
    assert code == 10 and one_error_line(err)
    assert snapshot(store) == before


def test_console_script_exit_code_and_one_error_line(store: Path, registry: Registry, tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "shifterimg"
    result = subprocess.run([str(script), "lookup", f"{registry.host}/test/never-pulled:1"],
                            check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("shifterimg: error: ") and result.stderr.count("\n") == 1

    layout = OCILayout(tmp_path / "layout")
    layout.add_image("t", [layer_tar([file("a", b"1")])])
    push(layout.root, "t", f"{registry.host}/test/script:1")
    result = subprocess.run([str(script), "pull", f"{registry.host}/test/script:1"],
                            check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "status: READY" in result.stdout and "converting" in result.stderr  # plain lines: not a TTY
