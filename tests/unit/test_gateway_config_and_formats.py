"""The gateway's config file (etc/gateway.toml.example documents every key with its default), the
NERSC image record and ``.meta`` formats, and the pull body's access lists."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from shifter.config.site import SiteConfig
from shifter.errors import ConfigError, UsageError
from shifter.gateway import nersc
from shifter.gateway.engine import normalise, requested_acl
from shifter.gateway.gwconfig import GatewayConfig, SystemConfig, from_site, parse_gateway_config
from shifter.gateway.stores import Caller

EXAMPLE = Path(__file__).resolve().parents[2] / "etc" / "gateway.toml.example"
SITE = SiteConfig(image_path="/var/lib/shifter/images", system="cluster", gateway_admins=("root", "ops"))


def test_example_parses_to_the_defaults() -> None:
    config = parse_gateway_config(SITE, tomllib.loads(EXAMPLE.read_text()), str(EXAMPLE))
    assert dataclasses.replace(config, source="") == from_site(SITE)


def test_example_documents_every_key() -> None:
    text = EXAMPLE.read_text()
    for field in dataclasses.fields(GatewayConfig):
        if field.name not in ("site", "systems", "source"):
            assert re.search(rf"^{field.name} = ", text, re.MULTILINE), field.name
    for field in dataclasses.fields(SystemConfig):
        if field.name != "name":
            assert re.search(rf"^#{field.name} = ", text, re.MULTILINE), field.name
    assert "[registries." in text


def test_defaults_come_from_udiroot_conf() -> None:
    config = from_site(SITE)
    system = config.system("cluster")
    assert system.image_path == "/var/lib/shifter/images" and system.admins == ("root", "ops")
    assert system.database("") == "sqlite:////var/lib/shifter/images/shifter.db"
    assert system.munge_socket == "/run/munge/munge.socket.2" and system.transfer == "local"


def test_systems_and_registries() -> None:
    config = parse_gateway_config(SITE, {
        "workers": 4, "database_url": "postgresql://gw@db/shifter",
        "registries": {"docker.io": {"mirrors": ["https://mirror.example.org"]}, "reg.local:5000": {"insecure": True}},
        "systems": {"a": {"image_path": "/a"}, "b": {"image_path": "/b", "transfer": "rsync", "host": "b-login",
                                                       "remote_image_path": "/global/images", "admins": ["bob"]}}})
    assert config.workers == 4 and sorted(config.systems) == ["a", "b"]
    assert config.system("a").database(config.database_url) == "postgresql://gw@db/shifter"
    assert config.system("b").admins == ("bob",)
    assert config.site.mirrors_for("docker.io") == ["https://mirror.example.org"]
    assert "reg.local:5000" in config.site.insecure_registries


@pytest.mark.parametrize("data", [
    {"workers": 0}, {"workers": "2"}, {"expire_after": -1}, {"nosuchkey": 1}, {"systems": {"a": {}}},
    {"systems": {"a": {"image_path": "relative"}}}, {"systems": {"a": {"image_path": "/a", "transfer": "ftp"}}},
    {"systems": {"a": {"image_path": "/a", "transfer": "rsync"}}}, {"systems": {"a": {"image_path": "/a", "x": 1}}},
    {"import_users": "all"}, {"registries": {"h": {"mirrors": "x"}}},
])
def test_bad_config_is_a_config_error(data: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        parse_gateway_config(SITE, data)


def test_record_has_exactly_nersc_keys_with_missing_and_float_last_pull() -> None:
    record = nersc.record(system="s", itype="docker", tags=["a:1"], status="PENDING")
    assert tuple(record) == nersc.RECORD_KEYS
    assert record["id"] == "MISSING" and record["ENV"] == "MISSING" and record["last_pull"] == "MISSING"
    meta = {"env": ["A=1"], "entrypoint": ["/bin/sh", "-c"], "workdir": "/w", "labels": {"k": "v"},
            "pulled_at": "2026-01-02T03:04:05Z", "acl": {"private": True, "users": [5], "groups": [7]}}
    ready = nersc.record(system="s", itype="docker", tags=["a:1"], status="READY", image_id="ab", metadata=meta)
    assert ready["ENTRY"] == "/bin/sh -c" and ready["userACL"] == [5] and ready["groupACL"] == [7]
    assert isinstance(ready["last_pull"], float) and ready["last_pull"] == 1767323045.0


def test_statuses_map_onto_nersc_ones_the_client_polls_on() -> None:
    assert nersc.nersc_status("CONVERTING") == "CONVERSION" and nersc.nersc_status("FAILED") == "FAILURE"
    assert all(nersc.nersc_status(s) in nersc.BUSY for s in ("PENDING", "PULLING", "CONVERTING"))


def test_meta_file_format() -> None:
    meta = {"entrypoint": ["/e"], "cmd": ["c", "d"], "workdir": "/w", "env": ["A=1", "B=2"], "user": "u",
            "acl": {"private": True, "users": [1001, 500], "groups": [10]}}
    assert nersc.meta_text(meta) == ("FORMAT: squashfs\nENTRY: /e\nCMD: c d\nWORKDIR: /w\nUSERACL: 1001,500\n"
                                     "GROUPACL: 10\nENV: A=1\nENV: B=2\nUSER: u\n")
    assert nersc.meta_text({}) == "FORMAT: squashfs\n"
    # private with nobody listed stays private (root only) for NERSC's runtime too
    assert "USERACL: 0" in nersc.meta_text({"acl": {"private": True, "users": [], "groups": []}})
    assert "ENV: X" not in nersc.meta_text({"env": ["X=1\nUSERACL: 1"]})  # no line injection


def test_tag_normalisation() -> None:
    assert normalise("docker", "alpine") == "docker.io/library/alpine:latest"
    assert nersc.record(system="s", itype="docker", tags=[normalise("docker", "alpine")],
                        status="READY")["tag"] == ["alpine:latest"]
    assert normalise("docker", "127.0.0.1:5000/a/b:1") == "127.0.0.1:5000/a/b:1"
    with pytest.raises(UsageError):
        normalise("rpm", "alpine")


def test_pull_body_acl_adds_the_caller_and_takes_nersc_strings() -> None:
    alice = Caller(2001, 2001, "alice", "/")
    acl = requested_acl({"allowed_uids": "1000, 1001", "allowed_gids": "1002"}, alice)
    assert acl is not None and acl.users == (1000, 1001, 2001) and acl.groups == (1002,)
    assert requested_acl({}, alice) is None
    public = requested_acl({"public": True}, alice)
    assert public is not None and not public.private
    for bad in ({"allowed_uids": 5}, {"allowed_uids": "1", "public": True}, {"allowed_uids": [True]}):
        with pytest.raises(UsageError):
            requested_acl(bad, alice)
