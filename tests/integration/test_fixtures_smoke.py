"""The shared fixtures themselves work: a real registry serves what skopeo pushed."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from tests.conftest import PushedImage
from tests.fixtures.registry import Registry

pytestmark = pytest.mark.integration


def test_pushed_image_is_served(registry: Registry, busybox_image: PushedImage) -> None:
    repo, tag = busybox_image.ref.split("/", 1)[1].rsplit(":", 1)
    req = urllib.request.Request(f"{registry.url}/v2/{repo}/manifests/{tag}",
                                 headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.headers["Docker-Content-Digest"] == busybox_image.digest
        manifest = json.load(resp)
    assert len(manifest["layers"]) == 2


def test_auth_registry_rejects_anonymous(auth_registry: Registry) -> None:
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{auth_registry.url}/v2/", timeout=5)
    assert err.value.code == 401
