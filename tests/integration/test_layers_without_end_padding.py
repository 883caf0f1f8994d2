"""A layer whose tar stops right after its last member's data (no padding to 512 bytes, no
end-of-archive blocks), as Debian's umoci 0.4.7 ``insert`` writes them, is accepted by skopeo,
umoci and podman: ``shifterimg`` accepts it too, with either squashfs builder.  A tar cut inside a
member's data is still refused."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from shifter.cli.shifterimg import run
from tests.fixtures.images import busybox_entries, compress, file, layer_tar, push_image, raw_layer, tar_bytes
from tests.fixtures.registry import Registry

pytestmark = pytest.mark.integration


def _unpadded(entries: list, cut_inside: bool = False) -> tuple[bytes, bytes]:  # type: ignore[type-arg]
    """(gzip blob, raw tar) of ``entries`` ending right after the last member's data."""
    raw = tar_bytes(entries)
    last = entries[-1].data
    end = raw.rindex(last) + len(last) - (1 if cut_inside else 0)
    raw = raw[:end]
    return compress(raw), raw


@pytest.mark.parametrize("builder", ["tar2sqfs", "mksquashfs"])
def test_layer_without_end_padding_is_accepted(builder: str, site_config: Path, registry: Registry,
                                               tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site_config.write_text(site_config.read_text() + f"squashfsBuilder={builder}\n")
    base = layer_tar(busybox_entries())
    blob, raw = _unpadded([file("etc/inserted.conf", b"x" * 700)])
    top = raw_layer(blob, diff_id="sha256:" + hashlib.sha256(raw).hexdigest())
    ref = f"{registry.host}/test/unpadded-{builder}:1"
    push_image(tmp_path / "layout", ref, [base, top])
    code = run(["pull", ref])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "downloading 2 layers (" in err
    assert run(["lookup", ref]) == 0
    image_id = capsys.readouterr().out.strip()
    squashfs = site_config.parent / "images" / f"{image_id}.squashfs"
    listing = subprocess.run(["unsquashfs", "-l", str(squashfs)], capture_output=True, text=True,
                             check=True).stdout
    assert "etc/inserted.conf" in listing


def test_layer_cut_inside_its_data_is_still_refused(site_config: Path, registry: Registry, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    blob, raw = _unpadded([*busybox_entries(), file("etc/cut.conf", b"y" * 700)], cut_inside=True)
    ref = f"{registry.host}/test/cut-inside:1"
    push_image(tmp_path / "layout", ref, [raw_layer(blob, diff_id="sha256:" + hashlib.sha256(raw).hexdigest())])
    assert run(["pull", ref]) == 11
    err = capsys.readouterr().err
    assert "downloading 1 layer (" in err and "is not a valid tar archive" in err
