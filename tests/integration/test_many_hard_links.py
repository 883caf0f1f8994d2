"""An image with more hard links to one file than the store's file system allows (65,000 on ext4:
EMLINK) converts correctly with either builder: past the limit, the flattened tree gets copies."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from shifter.cli.shifterimg import run
from tests.fixtures.images import file, hardlink, layer_tar, push_image
from tests.fixtures.registry import Registry

pytestmark = pytest.mark.integration
LINKS = 65_100  # past ext4's 65,000


def _on_ext4(path: Path) -> bool:
    out = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True, check=False)
    return out.stdout.strip() in ("ext2/ext3", "ext4")


def test_more_hard_links_than_the_file_system_allows(site_config: Path, registry: Registry, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The tree builder (mksquashfs) writes the flattened tree to the store's file system; the
    streamed one (tar2sqfs) never does, and tar2sqfs keeps any number of links."""
    if not _on_ext4(tmp_path):
        pytest.skip("the store's file system has no small hard-link limit here")
    builder = "mksquashfs"
    site_config.write_text(site_config.read_text() + f"squashfsBuilder={builder}\n")
    entries = [file("data/shared.bin", b"same content\n", 0o640)]
    entries += [hardlink(f"data/l{n:05d}", "data/shared.bin") for n in range(LINKS)]
    ref = f"{registry.host}/test/links-{builder}:1"
    push_image(tmp_path / "layout", ref, [layer_tar(entries)])
    assert run(["pull", ref]) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert run(["lookup", ref]) == 0
    image_id = capsys.readouterr().out.strip()
    squashfs = site_config.parent / "images" / f"{image_id}.squashfs"
    out = tmp_path / "out"
    subprocess.run(["unsquashfs", "-no-xattrs", "-d", str(out), str(squashfs), "data/l65099", "data/shared.bin",
                    "data/l00000"], check=True, capture_output=True)
    for name in ("shared.bin", "l00000", "l65099"):
        assert (out / "data" / name).read_bytes() == b"same content\n"
    assert (out / "data/l65099").stat().st_mode == (out / "data/shared.bin").stat().st_mode
    listing = subprocess.run(["unsquashfs", "-l", str(squashfs)], capture_output=True, text=True, check=True).stdout
    assert listing.count("squashfs-root/data/l") == LINKS
    assert os.path.getsize(squashfs) < 8 * 1024 * 1024  # copies are deduplicated
