"""The fast launchers scripts/install.sh writes for shifter, shifter-setup and shifter-teardown."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shifter.cli import launchers


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    path = tmp_path / "bin"
    path.mkdir()
    launchers.write_launchers(str(path), python=sys.executable)
    return path


def test_every_runtime_command_gets_an_executable_launcher(bin_dir: Path) -> None:
    assert sorted(p.name for p in bin_dir.iterdir()) == ["shifter", "shifter-setup", "shifter-teardown"]
    for script in bin_dir.iterdir():
        assert os.access(script, os.X_OK)
        first = script.read_text().splitlines()[0]
        assert first == f"#!{sys.executable} -IS"


def test_launcher_runs_the_command(bin_dir: Path) -> None:
    result = subprocess.run([str(bin_dir / "shifter"), "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and result.stdout.startswith("Usage: shifter")


def test_launcher_ignores_pythonpath_and_site_hooks(bin_dir: Path, tmp_path: Path) -> None:
    """A caller's PYTHONPATH must not replace shifter's code (shifter runs as root for Slurm)."""
    evil = tmp_path / "evil"
    (evil / "shifter").mkdir(parents=True)
    (evil / "shifter" / "__init__.py").write_text("raise SystemExit('hijacked')\n")
    (evil / "sitecustomize.py").write_text("raise SystemExit('hijacked')\n")
    env = {**os.environ, "PYTHONPATH": str(evil), "PYTHONSTARTUP": str(evil / "sitecustomize.py")}
    result = subprocess.run([str(bin_dir / "shifter"), "--help"], capture_output=True, text=True, env=env,
                            check=False)
    assert result.returncode == 0 and "hijacked" not in result.stderr


def test_launcher_text_names_the_package_directory() -> None:
    text = launchers.launcher_text("shifter-setup", "/venv/bin/python3", "/src")
    assert text.startswith("#!/venv/bin/python3 -IS\n")
    assert "sys.path.append('/src')" in text and "from shifter.cli.setup import setup_main" in text
    cli_dir = os.path.dirname(os.path.abspath(launchers.__file__))
    assert launchers.package_dir() == os.path.dirname(os.path.dirname(cli_dir))


def test_an_interpreter_path_with_a_blank_is_refused() -> None:
    with pytest.raises(ValueError, match="#!"):
        launchers.launcher_text("shifter", "/opt/my venv/bin/python3", "/src")
