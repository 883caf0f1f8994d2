"""Image references: Docker normalisation and Shifter's type:tag syntax."""

from __future__ import annotations

import subprocess
import sys

import pytest

from shifter.errors import ImageReferenceError
from shifter.oci.reference import ImageRef, parse_image_arg, parse_reference

HEX = "a" * 64
DIGEST = f"sha256:{HEX}"


@pytest.mark.parametrize(("text", "normalised"), [
    ("ubuntu", "docker.io/library/ubuntu:latest"),
    ("ubuntu:22.04", "docker.io/library/ubuntu:22.04"),
    ("library/ubuntu", "docker.io/library/ubuntu:latest"),
    ("docker.io/ubuntu", "docker.io/library/ubuntu:latest"),
    ("index.docker.io/ubuntu:1", "docker.io/library/ubuntu:1"),
    ("registry-1.docker.io/team/app", "docker.io/team/app:latest"),
    ("nersc/shifter:v1", "docker.io/nersc/shifter:v1"),
    ("localhost/x", "localhost/x:latest"),
    ("localhost:5000/x:1", "localhost:5000/x:1"),
    ("host:5000/a/b", "host:5000/a/b:latest"),
    (f"host:5000/a/b@{DIGEST}", f"host:5000/a/b@{DIGEST}"),
    (f"ubuntu:22.04@{DIGEST}", f"docker.io/library/ubuntu:22.04@{DIGEST}"),
    ("myregistry.org/team/sub/app:v1.2_3-rc", "myregistry.org/team/sub/app:v1.2_3-rc"),
    ("127.0.0.1:5000/test/busybox:1", "127.0.0.1:5000/test/busybox:1"),
    ("[::1]:5000/x", "[::1]:5000/x:latest"),
    ("a__b/c-d.e", "docker.io/a__b/c-d.e:latest"),
    ("Registry.Example.ORG/app", "registry.example.org/app:latest"),
    (f"x@sha512:{'b' * 128}", f"docker.io/library/x@sha512:{'b' * 128}"),
])
def test_normalisation(text: str, normalised: str) -> None:
    assert str(parse_reference(text)) == normalised


def test_fields_and_api_host() -> None:
    ref = parse_reference("ubuntu:22.04")
    assert ref == ImageRef("docker.io", "library/ubuntu", "22.04", None)
    assert ref.api_host == "registry-1.docker.io"
    assert ref.reference == "22.04"
    pinned = parse_reference(f"host:5000/a/b@{DIGEST}")
    assert (pinned.registry, pinned.repository) == ("host:5000", "a/b")
    assert (pinned.tag, pinned.digest) == (None, DIGEST)
    assert pinned.api_host == "host:5000"
    assert pinned.reference == DIGEST
    assert ImageRef.parse("ubuntu").with_digest(DIGEST).reference == DIGEST


@pytest.mark.parametrize(("text", "needle"), [
    ("", "empty"),
    ("Ubuntu", "lowercase"),
    ("host:5000/Team/app", "lowercase"),
    ("ubuntu:", "not a valid tag"),
    ("ubuntu:-x", "not a valid tag"),
    ("ubuntu:" + "t" * 129, "not a valid tag"),
    ("ubuntu@sha256:abc", "not a valid digest"),
    (f"ubuntu@md5:{HEX}", "not a valid digest"),
    ("a//b", "not a valid name component"),
    ("a/b_", "not a valid name component"),
    ("-host.example/a", "not a valid registry host"),
    ("host:port/a", "not a valid registry host"),
    (HEX, "image id"),
    (" ubuntu", "whitespace"),
    ("a/" + "b" * 260, "longer than"),
])
def test_invalid_references(text: str, needle: str) -> None:
    with pytest.raises(ImageReferenceError) as err:
        parse_reference(text)
    assert needle in err.value.message
    assert err.value.hint


@pytest.mark.parametrize(("text", "expected"), [
    ("docker:ubuntu:22.04", ("docker", "docker.io/library/ubuntu:22.04")),
    ("ubuntu:22.04", ("docker", "docker.io/library/ubuntu:22.04")),
    ("ubuntu", ("docker", "docker.io/library/ubuntu:latest")),
    (f"docker:myregistry.org:5000/team/app@{DIGEST}", ("docker", f"myregistry.org:5000/team/app@{DIGEST}")),
    ("localhost:5000/x", ("docker", "localhost:5000/x:latest")),
    (f"id:{HEX}", ("id", HEX)),
    (f"id:sha256:{HEX.upper()}", ("id", HEX)),
    ("id:0123456789ab", ("id", "0123456789ab")),
    ("local:/srv/root", ("local", "/srv/root")),
])
def test_parse_image_arg(text: str, expected: tuple[str, str]) -> None:
    image_type, value = parse_image_arg(text)
    assert (image_type, str(value)) == expected


def test_parse_image_arg_default_type() -> None:
    assert parse_image_arg(HEX, default_type="id") == ("id", HEX)


@pytest.mark.parametrize("text", ["id:xyz", "id:abc", "local:relative/path", "docker:", "", "docker:UPPER"])
def test_parse_image_arg_invalid(text: str) -> None:
    with pytest.raises(ImageReferenceError):
        parse_image_arg(text)


def test_reference_module_is_light() -> None:
    """The runtime imports shifter.oci.reference on its launch path: it must not pull in httpx."""
    code = "import sys, shifter.oci.reference; print('httpx' in sys.modules, 'hashlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.split()[0] == "False"


@pytest.mark.parametrize("text", ["dokcer:ubuntu:22.04", "foo:bar/baz", "foo:bar:1"])
def test_unknown_image_type_is_named(text: str) -> None:
    with pytest.raises(ImageReferenceError, match=r"unknown image type '(dokcer|foo)' \(docker, id, local\)"):
        parse_image_arg(text)


def test_host_port_is_not_an_image_type() -> None:
    assert parse_image_arg("localhost:5000/x:1")[0] == "docker"
