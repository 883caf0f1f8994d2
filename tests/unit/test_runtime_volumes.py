"""Volume specs as a table: good specs, hostile specs, flags, perNodeCache, duplicates."""

from __future__ import annotations

import pytest

from shifter.errors import VolumeError
from shifter.runtime.spec import VolumeSpec
from shifter.runtime.volumes import (
    check_duplicate_targets,
    check_user_target,
    parse_per_node_cache,
    parse_site_volume,
    parse_site_volumes,
    parse_size,
    parse_user_volume,
    parse_user_volumes,
    split_specs,
)

GOOD_USER = [
    ("/scratch/in:/input", VolumeSpec("/scratch/in", "/input")),
    ("/scratch/in:/input:ro", VolumeSpec("/scratch/in", "/input", read_only=True)),
    ("/scratch/in:/input:RO", VolumeSpec("/scratch/in", "/input", read_only=True)),
    ("/a//b/./:/c/", VolumeSpec("/a/b", "/c")),
    ("/tmp/x:/var/tmp", VolumeSpec("/tmp/x", "/var/tmp")),
    ("/x:/etcetera", VolumeSpec("/x", "/etcetera")),
    ("/x:/opt/app", VolumeSpec("/x", "/opt/app")),
    ("/x:/variable", VolumeSpec("/x", "/variable")),
    ("/x:/devices", VolumeSpec("/x", "/devices")),
    ("/x:/y:", VolumeSpec("/x", "/y")),
    ('"/x:/y:ro"', VolumeSpec("/x", "/y", read_only=True)),
    ("/x:/cache:perNodeCache=size=10G",
     VolumeSpec("/x", "/cache", per_node_cache=f"size={10 * 1024**3},bs=1048576,fs=auto,method=loop")),
]


@pytest.mark.parametrize(("spec", "expected"), GOOD_USER)
def test_good_user_volume(spec: str, expected: VolumeSpec) -> None:
    assert parse_user_volume(split_specs(spec)[0]) == expected


# (spec, words the error must contain: the offending part)
HOSTILE_USER = [
    ("relative:/x", "source 'relative'"),
    ("/x:relative", "target 'relative'"),
    ("/x/../etc/shadow:/y", "'..'"),
    ("/x:/y/../../etc", "'..'"),
    ("/x:/etc", "/etc"),
    ("/x:/etc/ssh", "/etc"),
    ("/x:/var", "/var"),
    ("/x:/var/lib", "/var"),
    ("/x:/var/tmp/sub", "/var"),
    ("/x:/opt", "/opt"),
    ("/x:/opt/udiImage", "/opt/udiImage"),
    ("/x:/opt/udiImage/bin", "/opt/udiImage"),
    ("/x:/proc", "/proc"),
    ("/x:/proc/1/root", "/proc"),
    ("/x:/sys/kernel", "/sys"),
    ("/x:/dev", "/dev"),
    ("/x:/dev/shm", "/dev"),
    ("/x:/", "target / is reserved"),
    ("/x://etc", "/etc"),
    ("/x:/./etc/", "/etc"),
    ("/x:/y:rw", "flag 'rw'"),
    ("/x:/y:rec", "flag 'rec'"),
    ("/x:/y:slave", "flag 'slave'"),
    ("/x:/y:ro:ro", "given twice"),
    ("/x:/y:ro=1", "takes no value"),
    ("/x", "not source:target"),
    (":/y", "not source:target"),
    ("/x:", "not source:target"),
    ("/x:/y\n", "control character"),
    ("/x:/y:perNodeCache", "needs options"),
    ("/x:/y:perNodeCache=fs=xfs", "needs a size"),
    ("/x:/y:perNodeCache=size=0", "greater than zero"),
    ("/x:/y:perNodeCache=size=lots", "invalid perNodeCache size"),
    ("/x:/y:perNodeCache=size=1G,fs=btrfs", "fs='btrfs'"),
    ("/x:/y:perNodeCache=size=1G,color=red", "unknown perNodeCache option"),
    ("/x:/y:perNodeCache=size=1G:ro", "cannot be read-only"),
]


@pytest.mark.parametrize(("spec", "words"), HOSTILE_USER)
def test_hostile_user_volume_is_refused(spec: str, words: str) -> None:
    with pytest.raises(VolumeError) as info:
        parse_user_volume(spec)
    assert words in info.value.message


def test_error_has_hint() -> None:
    with pytest.raises(VolumeError) as info:
        parse_user_volume("/x:/etc/passwd")
    assert info.value.hint


def test_site_volume_defaults_target_and_allows_site_flags() -> None:
    assert parse_site_volume("/home") == VolumeSpec("/home", "/home", origin="site")
    vol = parse_site_volume("/global/scratch:/scratch:rec:slave:ro", origin="module:x")
    assert vol == VolumeSpec("/global/scratch", "/scratch", read_only=True, origin="module:x", recursive=True,
                             slave=True)
    assert parse_site_volume("/a:/etc/ssh").target == "/etc/ssh"  # sites may mount under /etc


@pytest.mark.parametrize("spec", ["/x:/etc", "/x:/var", "/x:/opt", "/x:/etc/passwd", "/x:/etc/group",
                                  "/x:/etc/nsswitch.conf", "/x:/", "/x:/y:slave:private", "/x:/y:bogus",
                                  "rel", "/x/../y"])
def test_bad_site_volume(spec: str) -> None:
    with pytest.raises(VolumeError):
        parse_site_volume(spec)


def test_split_specs_and_many() -> None:
    assert split_specs(' /a:/b ; ;"/c:/d:ro";') == ["/a:/b", "/c:/d:ro"]
    vols = parse_user_volumes(["/a:/b;/c:/d:ro", "/e:/f"])
    assert [v.target for v in vols] == ["/b", "/d", "/f"]
    assert [v.target for v in parse_site_volumes(["/home;/opt/x:/opt/y"])] == ["/home", "/opt/y"]


@pytest.mark.parametrize(("text", "size"), [
    ("10G", 10 * 1024**3), ("100M", 100 * 1024**2), ("512k", 512 * 1024), ("7", 7),
    ("1.5g", int(1.5 * 1024**3)), ("2T", 2 * 1024**4), ("3b", 3),
])
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "G", "-1G", "1X", "1 G B", "0"])
def test_parse_size_bad(text: str) -> None:
    with pytest.raises(VolumeError):
        parse_size(text)


def test_per_node_cache_round_trip() -> None:
    cache = parse_per_node_cache("size=1G,fs=XFS,bs=4k,method=loop")
    assert (cache.size, cache.block_size, cache.fs, cache.method) == (1024**3, 4096, "xfs", "loop")
    assert parse_per_node_cache(cache.render()) == cache
    assert parse_per_node_cache("size=2g,fs=ext4").fs == "ext4"
    assert parse_per_node_cache("size=2g").fs == "auto"


def test_duplicate_targets_name_both() -> None:
    vols = [parse_site_volume("/home"), parse_user_volume("/scratch/me:/home")]
    with pytest.raises(VolumeError) as info:
        check_duplicate_targets(vols)
    assert "/scratch/me (user)" in info.value.message and "/home (site)" in info.value.message
    check_duplicate_targets([parse_user_volume("/a:/x"), parse_user_volume("/b:/x/y")])


def test_check_user_target_on_a_resolved_path() -> None:
    check_user_target("/data/x")
    with pytest.raises(VolumeError, match="resolves to /etc/ssh"):
        check_user_target("/etc/ssh", "/data/link (resolves to /etc/ssh)")
