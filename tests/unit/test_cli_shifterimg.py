"""``shifterimg`` command line: output formats, exit codes, login, progress display.

The gateway service is substituted through the seam ``run(argv, app=App(_service=...))``;
everything else (click parsing, error mapping, formatting, credentials file) runs for real.
"""

from __future__ import annotations

import io
import json
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from shifter.cli.progress import PlainProgress, RichProgress, human_size, layer_label, progress_for
from shifter.cli.shifterimg import App, familiar_name, format_image_rows, run
from shifter.config.site import SiteConfig
from shifter.errors import (
    AuthenticationError,
    DigestMismatchError,
    ImageNotFoundError,
    ImageNotReadyError,
    RegistryUnavailableError,
)
from shifter.gateway.models import ImageRecord, Status
from shifter.gateway.stores import Caller

ID = "0123456789abcdef" * 4
ROW = {"system": "perlmutter", "type": "docker", "status": "READY", "id": ID,
       "pulled_at": "2024-01-02T03:04:05Z", "tag": "docker.io/library/ubuntu:22.04", "store": "site"}


@dataclass
class FakeService:
    """Stands in for ImageService: records calls, reports progress, raises what it is told."""

    error: BaseException | None = None
    calls: list[tuple[str, str]] | None = None

    def _call(self, name: str, arg: str) -> None:
        if self.calls is None:
            self.calls = []
        self.calls.append((name, arg))
        if self.error is not None:
            raise self.error

    def pull(self, ref: str, caller: Caller, progress: Any, acl: Any = None) -> ImageRecord:
        self._call("pull", ref)
        progress.phase("pulling", "downloading 1 layer")
        progress.layer_start("sha256:" + "ab" * 32, 2048)
        progress.layer_advance("sha256:" + "ab" * 32, 2048)
        progress.layer_done("sha256:" + "ab" * 32)
        progress.phase("converting", "building squashfs")
        return ImageRecord(ID, "sha256:" + ID, "docker", Status.READY)

    def images(self) -> list[dict[str, Any]]:
        self._call("images", "")
        return [ROW, {**ROW, "tag": "127.0.0.1:5000/team/app:1", "id": "f" * 64, "system": "perlmutter"},
                {**ROW, "tag": None, "id": "e" * 64, "status": "FAILED", "pulled_at": None}]

    def lookup(self, ref: str) -> str:
        self._call("lookup", ref)
        return ID

    def inspect(self, ref: str) -> dict[str, Any]:
        self._call("inspect", ref)
        return {"id": ID, "digest": "sha256:" + ID, "tags": ["docker:ubuntu"], "env": ["A=1"],
                "status": "READY"}

    def remove(self, ref: str, caller: Caller) -> list[str]:
        self._call("remove", ref)
        return ["docker:docker.io/library/ubuntu:22.04", f"id:{ID}"]


def _app(service: FakeService, system: str = "perlmutter") -> App:
    caller = Caller(os.getuid(), os.getgid(), "tester", "/nonexistent")
    return App(_config=SiteConfig(system=system), _service=service, _caller=caller)  # type: ignore[arg-type]


def _run(capsys: pytest.CaptureFixture[str], argv: list[str], service: FakeService | None = None
         ) -> tuple[int, str, str]:
    code = run(argv, _app(service or FakeService()))
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------- images
def test_images_uses_nersc_columns(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, ["images"])
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 3
    line = next(x for x in lines if x.endswith(" ubuntu:22.04"))
    assert line.startswith("perlmutter docker     READY    0123456789   ")
    assert line.split()[5] == "ubuntu:22.04"
    assert len(line.split()[4]) == len("2024-01-02T03:04:05")
    assert any(x.endswith("127.0.0.1:5000/team/app:1") for x in lines)
    assert any(x.endswith("<none>") and " - " in x for x in lines)


def test_images_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, ["images", "--json"])
    rows = json.loads(out)
    assert code == 0 and rows[0]["tag"] == "docker.io/library/ubuntu:22.04" and rows[0]["id"] == ID


def test_rows_sorted_by_tag() -> None:
    rows = [{**ROW, "tag": "docker.io/library/zeta:1"}, {**ROW, "tag": "docker.io/library/alpha:1"}]
    assert [x.split()[-1] for x in format_image_rows(rows)] == ["alpha:1", "zeta:1"]


def test_converting_status_keeps_the_columns_and_lines_name_their_store() -> None:
    rows = [{**ROW, "tag": "docker.io/library/a:1", "status": "CONVERTING", "store": "user"},
            {**ROW, "tag": "docker.io/library/b:1", "store": "site"},
            {**ROW, "tag": "docker.io/library/c:1", "store": "user", "image_store": "site"}]
    lines = format_image_rows(rows)
    assert len({line.index("0123456789") for line in lines}) == 1  # the id column stays aligned
    assert [line.split()[5] for line in lines] == ["a:1", "b:1", "c:1"]
    assert [line.split(" [", 1)[1] for line in lines] == ["user]", "site]", "user tag -> site image]"]
    assert not format_image_rows([{**ROW, "store": "site"}])[0].endswith("]")  # only the site store: as NERSC


def test_familiar_names() -> None:
    assert familiar_name("docker.io/library/ubuntu:22.04") == "ubuntu:22.04"
    assert familiar_name("docker.io/nersc/app:1") == "nersc/app:1"
    assert familiar_name("host:5000/a/b:1") == "host:5000/a/b:1"


# --------------------------------------------------------------------------- lookup / inspect / rm
def test_lookup_prints_only_the_id(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(capsys, ["lookup", "ubuntu:22.04"])[:2] == (0, ID + "\n")


@pytest.mark.parametrize("error", [ImageNotFoundError("image x is not in the image store", hint="pull it"),
                                   ImageNotReadyError("image x is not ready (status PULLING)")])
def test_lookup_unknown_or_not_ready_exits_1(capsys: pytest.CaptureFixture[str], error: Exception) -> None:
    code, out, err = _run(capsys, ["lookup", "x"], FakeService(error=error))
    assert code == 1 and out == ""
    assert err.startswith("shifterimg: error: image x is not")
    assert len(err.splitlines()) == 1


def test_inspect_json_has_every_documented_field(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, ["inspect", "ubuntu"])
    info = json.loads(out)
    assert code == 0
    for key in ("id", "digest", "tags", "env", "entrypoint", "cmd", "workdir", "user", "labels", "layers",
                "size", "created", "status"):
        assert key in info


def test_rm_reports_what_went(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, ["rm", "ubuntu:22.04"])
    assert code == 0
    assert out.splitlines() == ["removed docker:ubuntu:22.04", f"removed id:{ID}"]


# --------------------------------------------------------------------------- pull and errors
def test_pull_plain_progress_then_nersc_status_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, ["pull", "ubuntu:22.04"])
    assert code == 0
    assert out.rstrip().endswith("Pulling Image: docker:ubuntu:22.04, status: READY")
    assert "layer abababababab: 2.0 KB" in err and "converting: building squashfs" in err


def test_pull_quiet(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, ["pull", "-q", "docker:ubuntu:22.04"])
    assert code == 0 and err == "" and "status: READY" in out


@pytest.mark.parametrize(("error", "code"), [
    (ImageNotFoundError("manifest unknown", hint="check the name"), 3),
    (AuthenticationError("registry refused the credentials", hint="run shifterimg login"), 6),
    (RegistryUnavailableError("registry 127.0.0.1:1 is unavailable"), 7),
    (DigestMismatchError("blob has digest x, expected y"), 10),
])
def test_pull_errors_are_one_line_with_their_exit_code(capsys: pytest.CaptureFixture[str],
                                                       error: Exception, code: int) -> None:
    got, out, err = _run(capsys, ["pull", "ubuntu"], FakeService(error=error))
    assert got == code and out == ""
    assert err.count("\n") == 1 and err.startswith(f"shifterimg: error: {error}")


def test_keyboard_interrupt_exits_130(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, ["pull", "ubuntu"], FakeService(error=KeyboardInterrupt()))
    assert code == 130 and "interrupted" in err


def test_bad_reference_and_bad_usage_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(capsys, ["pull"])[0] == 2
    assert _run(capsys, ["frobnicate"])[0] == 2
    assert _run(capsys, ["-u", "alice", "pull", "ubuntu"])[0] == 2  # private images: not yet


def test_system_option_must_match_the_site(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(capsys, ["-s", "perlmutter", "lookup", "x"])[0] == 0
    code, out, err = _run(capsys, ["-s", "elsewhere", "lookup", "x"])
    assert code == 2 and out == "" and "is not served here" in err


def test_help_and_version_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(capsys, ["--help"])[0] == 0
    assert _run(capsys, ["-h"])[0] == 0


# --------------------------------------------------------------------------- login
def test_login_password_stdin_writes_a_private_file(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret\n"))
    code, out, _ = _run(capsys, ["login", "-u", "alice", "--password-stdin", "--no-verify",
                                 "registry.example.org:5000"])
    auth = tmp_path / "xdg" / "shifter" / "auth.json"
    assert code == 0 and "registry.example.org:5000" in out
    assert stat.S_IMODE(auth.stat().st_mode) == 0o600
    assert "registry.example.org:5000" in json.loads(auth.read_text())["auths"]
    assert "s3cret" not in out


def test_login_no_verify_says_it_did_not_check(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret\n"))
    code, out, _ = _run(capsys, ["login", "-u", "alice", "--password-stdin", "--no-verify", "127.0.0.1:9"])
    assert code == 0 and "without checking them" in out and "succeeded" not in out


def test_login_without_a_terminal_needs_password_stdin(capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    code, _, err = _run(capsys, ["login", "-u", "alice", "registry.example.org"])
    assert code == 2 and "--password-stdin" in err


def test_logout_of_unknown_registry(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    code, out, _ = _run(capsys, ["logout", "nowhere.example.org"])
    assert code == 0 and "No stored credentials" in out


# --------------------------------------------------------------------------- progress
def test_plain_progress_is_one_line_per_event_not_per_chunk() -> None:
    stream = io.StringIO()
    sink = PlainProgress(stream)
    sink.layer_start("sha256:" + "cd" * 32, 10_000_000)
    for _ in range(100):
        sink.layer_advance("sha256:" + "cd" * 32, 100_000)
    sink.layer_done("sha256:" + "cd" * 32)
    sink.phase("converting", "building squashfs")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].endswith("layer cdcdcdcdcdcd: 10.0 MB") and lines[1].endswith("done (10.0 MB)")


def test_rich_progress_from_many_threads() -> None:
    stream = io.StringIO()
    display = RichProgress(Console(file=stream, force_terminal=True, width=100))
    display.start()

    def worker(n: int) -> None:
        digest = f"sha256:{n:064x}"
        display.layer_start(digest, 1000)
        for _ in range(10):
            display.layer_advance(digest, 100)
        display.layer_done(digest)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    display.phase("converting", "building squashfs")
    display.stop()
    assert "converting: building squashfs" in stream.getvalue()
    assert all(task.completed == 1000 for task in display.progress.tasks if task.fields.get("layer"))


def test_rich_progress_bars_show_bytes_and_speed_at_80_columns() -> None:
    stream = io.StringIO()
    display = RichProgress(Console(file=stream, force_terminal=True, width=80, color_system=None))
    display.phase("pulling", "downloading 3 layers (227.0 MB) of registry.example.org:5000/team/app:1")
    digest = "sha256:" + "ab" * 32
    display.layer_start(digest, 50 * 1024 * 1024)
    display.layer_advance(digest, 20 * 1024 * 1024)
    display.progress.console.print(display.progress.get_renderable())
    lines = [line for line in stream.getvalue().splitlines() if layer_label(digest) in line]
    assert lines and all(len(line) <= 80 for line in lines)
    words = lines[-1].split()
    assert "21.0/52.4" in words and words[-2] in ("?", "MB/s", "kB/s")  # bytes, speed ("?": none yet), time
    assert "downloading 3 layers (227.0 MB) of registry.example.org:5000/team/app:1" in stream.getvalue()


def test_progress_for_picks_the_display() -> None:
    with progress_for(io.StringIO()) as sink:
        assert isinstance(sink, PlainProgress)
    with progress_for(io.StringIO(), tty=True) as sink:
        assert isinstance(sink, RichProgress)


def test_labels_and_sizes() -> None:
    assert layer_label("sha256:" + "ab" * 32) == "layer abababababab"
    assert layer_label("layer 2") == "layer 2"
    assert human_size(999) == "999 B" and human_size(1500) == "1.5 KB" and human_size(2.5e9) == "2.5 GB"
