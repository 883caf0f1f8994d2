"""Layer bombs: the site's limits on an image's uncompressed size and entry count.

Both the tree path (``flatten``) and the streamed path (``plan_stream``, pass 1) count every
member from its tar header, before its data is read or anything is written
(``FlattenPolicy.max_image_bytes`` / ``max_image_entries``, site keys ``maxImageSize`` /
``maxImageEntries``).  The registry download and ``shifterimg import`` caps are tested here too.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from shifter.config.site import SiteConfig, parse_config
from shifter.convert.archive import read_archive
from shifter.errors import ArchiveError, LayerError
from shifter.oci.manifest import Descriptor
from shifter.oci.reference import parse_reference
from shifter.registry.client import RegistryClient
from shifter.registry.credentials import CredentialStore
from shifter.unpack import FlattenPolicy, flatten
from shifter.unpack.stream import plan_stream
from tests.fixtures.images import compress, directory, file, tar_bytes

Converter = Callable[[list[Path], Path, FlattenPolicy], object]


def _flatten(blobs: list[Path], dest: Path, policy: FlattenPolicy) -> object:
    return flatten(blobs, dest, policy)


def _plan(blobs: list[Path], _dest: Path, policy: FlattenPolicy) -> object:
    return plan_stream(blobs, policy)


CONVERTERS = pytest.mark.parametrize("convert", [_flatten, _plan], ids=["tree", "stream"])


def _blob(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(compress(data, "gzip"))
    return path


def _dest(tmp_path: Path) -> Path:
    dest = tmp_path / "tree"
    dest.mkdir()
    return dest


@CONVERTERS
def test_zero_filled_file_bomb_past_max_image_size(tmp_path: Path, convert: Converter) -> None:
    # 4 MiB of zeros gzip to a few KiB: the limit counts uncompressed bytes.
    blob = _blob(tmp_path, "bomb", tar_bytes([file("zeros", b"\0" * (4 << 20))]))
    assert blob.stat().st_size < 64 * 1024
    dest = _dest(tmp_path)
    with pytest.raises(LayerError, match="maxImageSize") as info:
        convert([blob], dest, FlattenPolicy(max_image_bytes=1 << 20))
    assert "maxImageSize" in info.value.hint and "udiRoot.conf" in info.value.hint
    assert list(dest.iterdir()) == []  # refused before anything was written


@CONVERTERS
def test_declared_member_size_past_the_limit_is_refused_from_the_header(tmp_path: Path,
                                                                        convert: Converter) -> None:
    # The header claims 1 TiB and the data is simply not there: only a header-based refusal
    # can name the limit (reading the data would end in "truncated").
    huge = tarfile.TarInfo("huge")
    huge.size = 1 << 40
    blob = _blob(tmp_path, "liar", huge.tobuf(tarfile.PAX_FORMAT))
    dest = _dest(tmp_path)
    with pytest.raises(LayerError, match=f"declares {1 << 40} bytes.*maxImageSize"):
        convert([blob], dest, FlattenPolicy(max_image_bytes=64 << 30))
    assert list(dest.iterdir()) == []


@CONVERTERS
def test_size_bomb_split_across_layers(tmp_path: Path, convert: Converter) -> None:
    blobs = [_blob(tmp_path, f"l{i}", tar_bytes([file(f"part{i}", b"x" * 600)])) for i in range(2)]
    with pytest.raises(LayerError, match=r"layer 2/2 .*maxImageSize"):
        convert(blobs, _dest(tmp_path), FlattenPolicy(max_image_bytes=1000))
    ok = tmp_path / "ok"
    ok.mkdir()
    convert(blobs, ok, FlattenPolicy(max_image_bytes=1200))  # exactly what the layers declare


@CONVERTERS
def test_entry_count_bomb_past_max_image_entries(tmp_path: Path, convert: Converter) -> None:
    entries = [directory("d")] + [file(f"d/{i}") for i in range(40)]
    blob = _blob(tmp_path, "many", tar_bytes(entries))
    with pytest.raises(LayerError, match=r"more than 20 entries.*maxImageEntries"):
        convert([blob], _dest(tmp_path), FlattenPolicy(max_image_entries=20))


@CONVERTERS
def test_zero_means_unlimited(tmp_path: Path, convert: Converter) -> None:
    entries = [directory("d")] + [file(f"d/{i}", b"y" * 100) for i in range(40)]
    blob = _blob(tmp_path, "many", tar_bytes(entries))
    convert([blob], _dest(tmp_path), FlattenPolicy(max_image_bytes=0, max_image_entries=0))


def test_site_keys_and_defaults() -> None:
    default = SiteConfig()
    assert (default.max_image_size, default.max_image_entries) == (64 << 30, 5_000_000)
    policy = FlattenPolicy()
    assert (policy.max_image_bytes, policy.max_image_entries) == (64 << 30, 5_000_000)
    config = parse_config("maxImageSize=2G\nmaxImageEntries=0\n")
    assert (config.max_image_size, config.max_image_entries) == (2 << 30, 0)


def test_download_declaring_more_than_max_image_size_is_refused_before_any_request(tmp_path: Path) -> None:
    import httpx  # noqa: PLC0415

    def no_network(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"unexpected request {request.url}")

    config = SiteConfig(max_image_size=1 << 20)
    client = RegistryClient(config, CredentialStore(tmp_path / "creds.json"), httpx.MockTransport(no_network))
    layers = [Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", "sha256:" + c * 64, 700_000)
              for c in "ab"]
    with client, pytest.raises(LayerError, match=r"declare 1400000 bytes.*maxImageSize"):
        client.fetch_blobs(parse_reference("127.0.0.1:1/bomb:1"), layers, cache=None)


def test_import_archive_blob_past_max_image_size_is_refused_from_its_header(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("manifest.json", b'[{"Config": "c.json", "RepoTags": ["bomb:1"], '
                                             b'"Layers": ["layer.tar"]}]'),
                           ("c.json", b'{"architecture": "amd64", "os": "linux", "rootfs": '
                                      b'{"type": "layers", "diff_ids": ["sha256:' + b"0" * 64 + b'"]}}'),
                           ("layer.tar", b"\0" * (2 << 20))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    archive = tmp_path / "bomb.tar"
    archive.write_bytes(buf.getvalue())

    class NoSink:
        def get(self, digest: str) -> None:
            return None

        def commit(self, digest: str, partial: Path, size: int | None = None) -> Path:
            raise AssertionError("nothing may be committed")

    with pytest.raises(ArchiveError, match=r"layer 1 .*maxImageSize"):
        read_archive(archive, NoSink(), tmp_path / "tmp", max_bytes=1 << 20)
    assert not any((tmp_path / "tmp").iterdir())


def _pax_header_declaring(size: int) -> bytes:
    """One raw tar header block of type 'x' (PAX extended header) claiming ``size`` bytes."""
    info = tarfile.TarInfo("././@PaxHeader")
    info.type = tarfile.XHDTYPE
    info.size = size
    return info.tobuf(tarfile.GNU_FORMAT)  # GNU: base-256 sizes, so 50 GiB fits the header


@CONVERTERS
@pytest.mark.parametrize("declared", [64 << 20, 50 << 30])
def test_pax_header_memory_bomb_is_refused_before_reading(tmp_path: Path, convert: Converter,
                                                          declared: int) -> None:
    # tarfile would read the whole extended header into memory, trusting its declared size.
    blob = _blob(tmp_path, "paxbomb", _pax_header_declaring(declared) + b"\0" * 1024)
    with pytest.raises(LayerError, match="extended header"):
        convert([blob], _dest(tmp_path), FlattenPolicy())


@CONVERTERS
def test_gnu_longname_memory_bomb_is_refused_before_reading(tmp_path: Path, convert: Converter) -> None:
    info = tarfile.TarInfo("././@LongLink")
    info.type = tarfile.GNUTYPE_LONGNAME
    info.size = 64 << 20
    blob = _blob(tmp_path, "longbomb", info.tobuf(tarfile.USTAR_FORMAT) + b"\0" * 1024)
    with pytest.raises(LayerError, match="extended header"):
        convert([blob], _dest(tmp_path), FlattenPolicy())
