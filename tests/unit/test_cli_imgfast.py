"""The fast ``shifterimg lookup``/``images`` (``shifter.cli.imgfast``) gives the full path's answers.

The fast path reads the store's files and its SQLite database with ``sqlite3`` instead of the
ORM; these tests build one store (READY, private, untagged, in-flight and file-only images) and
compare both paths' output byte for byte, and check that whatever the fast path does not serve
falls through (``None``) rather than answering differently.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest

from shifter.cli import imgfast
from shifter.cli.shifterimg import run
from shifter.gateway import sqlite_reader
from shifter.gateway.models import Status
from shifter.gateway.repository import ImageRepository


def _image(root: Path, repo: ImageRepository | None, n: int, tag: str | None, *, status: Status = Status.READY,
           acl: dict[str, object] | None = None) -> str:
    image_id = f"{n:064x}"
    acl = acl or {"private": False, "users": [], "groups": []}
    if status is Status.READY:
        (root / f"{image_id}.squashfs").write_bytes(b"hsqs")
        meta = {"schema": 1, "status": "READY", "id": image_id, "digest": f"sha256:{image_id}", "type": "docker",
                "source": tag or "old/app:0", "size": 4, "acl": acl, "pulled_at": "2026-01-02T03:04:05Z"}
        (root / f"{image_id}.json").write_text(json.dumps(meta))
    if tag is not None and status is Status.READY:
        (root / "tags/docker" / urllib.parse.quote(tag, safe="")).write_text(image_id + "\n")
    if repo is not None:
        repo.set_status(image_id, status, "ready" if status is Status.READY else "downloading",
                        digest=f"sha256:{image_id}", type="docker", source=tag or "old/app:0", owner="root",
                        size=4, acl=acl)
        if tag is not None:
            repo.set_tag("docker", tag, image_id, "root")
    return image_id


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "site"
    (root / "tags/docker").mkdir(parents=True)
    repo = ImageRepository.from_url(f"sqlite:///{root / 'shifter.db'}")
    _image(root, repo, 1, "docker.io/library/ubuntu:22.04")
    _image(root, repo, 2, "r.io/team/app:1", acl={"private": True, "users": [4242], "groups": []})
    _image(root, repo, 3, None)  # untagged (a moved tag's old image)
    _image(root, repo, 4, "r.io/team/app:2", status=Status.FAILED)
    _image(root, None, 5, "r.io/files/only:1")  # on disk, unknown to the database
    config = tmp_path / "udiRoot.conf"
    config.write_text(f"imagePath={root}\nudiMount={tmp_path / 'udi'}\nloopMount={tmp_path / 'loop'}\n"
                      f"userImagePath={tmp_path / 'user'}\n")
    monkeypatch.setenv("SHIFTER_CONFIG", str(config))
    monkeypatch.setenv("TZ", "UTC")
    return root


def _full(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = run(list(argv))
    return code, capsys.readouterr().out


@pytest.mark.parametrize("argv", [["images"], ["images", "--json"], ["lookup", "ubuntu:22.04"],
                                  ["lookup", "docker:r.io/team/app:1"], ["lookup", "r.io/files/only:1"]])
def test_fast_and_full_path_print_the_same(site: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    fast = imgfast.fast_output(argv)
    code, full = _full(capsys, *argv)
    assert code == 0
    assert fast == full


@pytest.mark.parametrize("argv", [["lookup", "r.io/team/app:2"], ["lookup", "no/such:1"], ["lookup", "id:" + "1" * 12],
                                  ["images", "-v"], ["-v", "images"], ["pull", "x:1"], ["lookup"], ["images", "x"]])
def test_what_the_fast_path_does_not_serve_goes_to_the_full_path(site: Path, argv: list[str]) -> None:
    assert imgfast.fast_output(argv) is None


def test_a_remote_gateway_or_a_missing_database_goes_to_the_full_path(site: Path, tmp_path: Path) -> None:
    config = tmp_path / "udiRoot.conf"
    config.write_text(config.read_text() + "imageGateway=http://127.0.0.1:1\n")
    assert imgfast.fast_output(["lookup", "ubuntu:22.04"]) is None
    config.write_text(config.read_text().replace("imageGateway=http://127.0.0.1:1\n", ""))
    (site / "shifter.db").unlink()
    assert imgfast.fast_output(["images"]) is None


def test_a_pull_in_flight_goes_to_the_full_path(site: Path) -> None:
    """The full path first settles pulls whose process died (they become FAILED): the fast path,
    which only reads, leaves any PULLING/CONVERTING record to it."""
    _image(site, ImageRepository.from_url(f"sqlite:///{site / 'shifter.db'}"), 6, "r.io/team/app:3",
           status=Status.PULLING)
    assert imgfast.fast_output(["images"]) is None


def test_sqlite_reader_gives_the_repositorys_records(site: Path) -> None:
    url = f"sqlite:///{site / 'shifter.db'}"
    path = sqlite_reader.sqlite_path(url)
    assert path == str(site / "shifter.db")
    assert sqlite_reader.list_images(path) == ImageRepository.from_url(url).list_images()
    assert sqlite_reader.sqlite_path("postgresql+psycopg://u@h/db") is None
    assert sqlite_reader.sqlite_path("sqlite:///relative.db") is None


def test_a_damaged_database_is_a_reader_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"not a database" * 100)
    with pytest.raises(sqlite_reader.ReaderError):
        sqlite_reader.list_images(str(bad))


def test_the_fast_path_imports_neither_the_orm_nor_the_http_client(site: Path) -> None:
    code = ("import sys; from shifter.cli import imgfast; "
            "assert imgfast.fast_output(['lookup', 'ubuntu:22.04']); assert imgfast.fast_output(['images']); "
            "bad = [m for m in ('sqlalchemy', 'httpx', 'click', 'rich') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
