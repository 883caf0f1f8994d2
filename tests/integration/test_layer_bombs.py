"""Layer bombs through ``shifterimg pull``: a layer that unpacks past the site's ``maxImageSize``
or ``maxImageEntries`` fails with exit code 11 and a hint naming the setting, and leaves the
store as it was (no image, no work files), on both conversion paths.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from shifter.convert import tar2sqfs
from tests.fixtures.images import Entry, OCILayout, directory, file, layer_tar, push
from tests.fixtures.registry import Registry
from tests.integration.test_image_errors import _fails_cleanly, _ready_before, _small_image
from tests.integration.test_shifterimg_cli import shifterimg

pytestmark = pytest.mark.integration

BUILDERS = ["mksquashfs"] + (["tar2sqfs"] if tar2sqfs.tar2sqfs_available() else [])


@pytest.fixture(params=BUILDERS)
def store(request: pytest.FixtureRequest, store: Path, site_config: Path) -> Path:
    """The site store (tests/integration/conftest.py) with small image limits, converting with each
    squashfs builder."""
    with site_config.open("a") as conf:
        conf.write(f"maxImageSize=1M\nmaxImageEntries=100\nsquashfsBuilder={request.param}\n")
    return store


def _push(registry: Registry, tmp_path: Path, name: str, entries: list[Entry]) -> str:
    layout = OCILayout(tmp_path / f"layout-{name}")
    layout.add_image("t", [layer_tar(entries)])
    ref = f"{registry.host}/bombs/{name}:1"
    push(layout.root, "t", ref)
    return ref


def test_zero_filled_layer_bomb_past_max_image_size_exit_11(capsys: pytest.CaptureFixture[str], store: Path,
                                                            registry: Registry, tmp_path: Path) -> None:
    previous_ref = _small_image(registry, tmp_path, "before-bomb")
    previous = _ready_before(capsys, previous_ref)
    # 8 MiB of zeros: a few KiB to download, 8x the limit once unpacked.
    ref = _push(registry, tmp_path, "zeros", [file("zeros", b"\0" * (8 << 20))])
    line = _fails_cleanly(capsys, store, ref, 11)
    assert "maxImageSize" in line
    assert shifterimg(capsys, "lookup", previous_ref)[1].strip() == previous


def test_entry_count_layer_bomb_past_max_image_entries_exit_11(capsys: pytest.CaptureFixture[str], store: Path,
                                                               registry: Registry, tmp_path: Path) -> None:
    ref = _push(registry, tmp_path, "entries", [directory("d")] + [file(f"d/{i}") for i in range(300)])
    line = _fails_cleanly(capsys, store, ref, 11)
    assert "maxImageEntries" in line
