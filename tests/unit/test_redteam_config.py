"""Red-team attacks on the site configuration a privileged ``shifter`` loads: ``SHIFTER_CONFIG``
may come from a job's environment, so it may name any file.  Named after the attack."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from shifter.config.site import MAX_CONFIG_BYTES, load_config
from shifter.errors import ConfigError

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the trust check wants a root-owned file")


@needs_root
def test_shifter_config_pointing_at_shadow_does_not_quote_it(tmp_path: Path) -> None:
    shadow = tmp_path / "shadow"
    shadow.write_text("root:$y$j9T$secrethash:19000:0:99999:7:::\n")
    shadow.chmod(0o640)  # root-owned, not group/world-writable: passes the trust check
    with pytest.raises(ConfigError) as info:
        load_config(str(shadow), privileged=True)
    assert "secrethash" not in info.value.render()
    shadow.chmod(0o644)  # a world-readable file may be quoted: nothing to hide
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(str(shadow), privileged=True)


@pytest.mark.parametrize("privileged", [False, True])
def test_shifter_config_that_is_a_fifo_does_not_block(tmp_path: Path, privileged: bool) -> None:
    fifo = tmp_path / "udiRoot.conf"
    os.mkfifo(fifo, 0o600)
    code = f"""
        from shifter.config.site import load_config
        from shifter.errors import ConfigError
        try:
            load_config({str(fifo)!r}, privileged={privileged})
        except ConfigError as err:
            print("refused", err.message)
        """
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("refused") and "not a regular file" in res.stdout


def test_huge_shifter_config_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    huge = tmp_path / "udiRoot.conf"
    with open(huge, "wb") as handle:
        handle.truncate(64 << 30)  # sparse
    with pytest.raises(ConfigError, match=f"larger than {MAX_CONFIG_BYTES}"):
        load_config(str(huge))
