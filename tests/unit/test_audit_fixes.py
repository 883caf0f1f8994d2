"""Small fixes found by the documentation audit: each checks what the docs now promise."""

from __future__ import annotations

import os

import pytest

from shifter.cli import setup as setup_cli
from shifter.config.site import parse_config
from shifter.convert.archive import _choose
from shifter.errors import ArchiveError, ConfigError


@pytest.mark.parametrize("compression", ["zstd", "lz4", "gzip", "xz", "lzo"])
def test_documented_squashfs_compressors_are_accepted(compression: str) -> None:
    assert parse_config(f"squashfsCompression={compression}\n").squashfs_compression == compression


def test_lzma_squashfs_compression_is_refused() -> None:
    """mksquashfs and tar2sqfs write lzma, but neither the kernel nor squashfuse can mount it."""
    with pytest.raises(ConfigError, match="squashfsCompression"):
        parse_config("squashfsCompression=lzma\n")


def test_shifter_setup_and_teardown_print_their_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert setup_cli.setup_main(["--help"]) == 0
    assert capsys.readouterr().out.startswith("Usage: shifter-setup --image=")
    assert setup_cli.teardown_main(["-h"]) == 0
    assert capsys.readouterr().out.startswith("Usage: shifter-teardown")


def test_shifter_setup_refuses_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    """A command after the options would be silently ignored: refused before anything is read."""
    assert setup_cli.setup_main(["--image=x", "--user=nobody", "ls"]) == 2
    expected = "unexpected arguments: ls" if os.geteuid() == 0 else "must be run by root"
    assert expected in capsys.readouterr().err


def test_import_hint_says_a_bare_oci_ref_name_is_a_tag() -> None:
    with pytest.raises(ArchiveError) as info:
        _choose(["a", "b"], [["plain"], ["t"]], ["docker.io/library/t:latest", "t:latest", "latest"], "index.json")
    assert "plain, t" in info.value.hint and "docker:app:plain" in info.value.hint
