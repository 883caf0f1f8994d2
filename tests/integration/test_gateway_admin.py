"""``shifter-gateway`` maintenance commands against a real store filled by a real pull."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shifter.cli import gateway, shifterimg
from shifter.config.site import load_config
from shifter.errors import AccessDeniedError, ImageNotFoundError
from shifter.gateway.repository import ImageRepository
from shifter.gateway.service import ImageService
from shifter.gateway.stores import Caller, choose_store
from shifter.store import publish
from tests.conftest import PushedImage

pytestmark = pytest.mark.integration


def test_status_recover_prune(site_config: Path, busybox_image: PushedImage,
                              capsys: pytest.CaptureFixture[str]) -> None:
    service = ImageService.embedded(load_config(), Caller.current())
    service.pull(busybox_image.ref, Caller.current())
    assert service.cache.total_size() > 0
    capsys.readouterr()

    assert gateway.run(["status", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["images"] == {"READY": 1} and info["store_kind"] == "site"
    assert info["store"] == str(service.store.root) and info["cache_bytes"] > 0

    assert gateway.run(["recover"]) == 0
    assert "0 interrupted pull(s)" in capsys.readouterr().out

    assert gateway.run(["status"]) == 0
    assert "images           READY 1" in capsys.readouterr().out

    assert gateway.run(["prune", "--max-size", "1G"]) == 0  # sizes take units, like cacheMaxSize
    assert "removed 0 blob(s)" in capsys.readouterr().out
    assert gateway.run(["prune", "--max-size", "0"]) == 0
    assert "cache now 0 bytes" in capsys.readouterr().out
    assert gateway.run(["prune", "--max-size", "lots"]) == 2
    # The image itself does not depend on the blob cache.
    assert service.store.is_ready(service.lookup(busybox_image.ref))


def test_bad_config_is_one_line_and_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "udiRoot.conf"
    conf.write_text("imagePath=/x\nnoSuchKey=1\n")
    monkeypatch.setenv("SHIFTER_CONFIG", str(conf))
    assert gateway.run(["status"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown key 'noSuchKey'" in err[0]


def test_configured_remote_gateway_is_used_not_silently_ignored(site_config: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    with site_config.open("a") as conf:
        conf.write(f"imageGateway=http://127.0.0.1:1\nmungeSocket={tmp_path / 'no-munged'}\n")
    assert shifterimg.run(["images"]) == 7  # the remote gateway is used: here, nothing to reach
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("shifterimg: error: cannot reach munged")


def test_user_removing_a_site_image_is_told_it_is_a_site_image(site_config: Path, busybox_image: PushedImage,
                                                                tmp_path: Path) -> None:
    config = load_config()
    ImageService.embedded(config, Caller.current()).pull(busybox_image.ref, Caller.current())
    user = Caller(uid=4242, gid=4242, username="someone", home=str(tmp_path / "someone"))
    choice = choose_store(config, user, site_writable=False)
    publish.ensure_layout(choice.store)
    service = ImageService(config, choice, ImageRepository.from_url(choice.database_url))
    assert service.lookup(busybox_image.ref)  # the user sees it...
    with pytest.raises(AccessDeniedError, match="site store") as err:
        service.remove(busybox_image.ref, user)  # ...but it is not theirs to remove
    assert "gatewayAdmins" in err.value.hint
    with pytest.raises(ImageNotFoundError):
        service.remove("docker:nothing/here:1", user)
    assert ImageService.embedded(config, Caller.current()).lookup(busybox_image.ref)
