"""The command boundary (``shifter.cli.boundary``): any exception is one line and a documented code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import shifter.errors as errors_module
from shifter.cli import boundary
from shifter.cli.shifterimg import run as shifterimg_run
from shifter.errors import DiskFullError, ShifterError

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _fail(exc: BaseException) -> int:
    raise exc


def test_unexpected_exception_is_one_line_naming_its_trace_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    code = boundary.guard("shifterimg", lambda: _fail(RuntimeError("boom\nsecond line")))
    err = capsys.readouterr().err
    assert code == boundary.EXIT_INTERNAL == 70
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("shifterimg: error: unexpected RuntimeError: boom second line (hint: this is a bug")
    trace = Path(re.search(r"full trace is in (\S+);", err).group(1))  # type: ignore[union-attr]
    assert trace.parent == tmp_path and "Traceback" in trace.read_text()
    assert trace.stat().st_mode & 0o077 == 0


def test_verbose_shows_the_trace_instead(capsys: pytest.CaptureFixture[str]) -> None:
    assert boundary.guard("shifter", lambda: _fail(KeyError("k")), verbose=True) == 70
    err = capsys.readouterr().err
    assert "Traceback" in err and err.splitlines()[-1].startswith("shifter: error: unexpected KeyError")


def test_shifter_errors_interrupts_and_closed_pipes(capsys: pytest.CaptureFixture[str]) -> None:
    assert boundary.guard("p", lambda: _fail(DiskFullError("full\nreally", hint="free space"))) == 14
    assert capsys.readouterr().err == "p: error: full really (hint: free space)\n"
    assert boundary.guard("p", lambda: _fail(KeyboardInterrupt())) == 130
    assert capsys.readouterr().err == "p: interrupted\n"
    assert boundary.guard("p", lambda: _fail(BrokenPipeError())) == 1
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(("argv", "verbose"), [(["-v", "images"], True), (["-Ev", "x"], True),
                                               (["images", "-v"], False), (["--", "-v"], False), (["-iv", "x"], False),
                                               (["--verbose"], True), (["--version"], False)])
def test_wants_verbose_reads_leading_options_only(argv: list[str], verbose: bool) -> None:
    assert boundary.wants_verbose(argv) is verbose


def test_click_usage_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert shifterimg_run(["pull"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("shifterimg: error: Missing argument")
    assert "(hint: see 'shifterimg pull --help')" in err


def _table(path: Path) -> dict[int, str]:
    """``code -> "raised as" cell`` of the exit-code table of a doc."""
    rows = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^\| (\d+) \| .* \|\s*(.*?)\s*\|$", line)
        if match:
            rows[int(match.group(1))] = match.group(2)
    return rows


def test_cli_doc_exit_code_table_is_true() -> None:
    table = _table(DOCS / "cli.md")
    runtime_only = {"VolumeError", "ContainerError"}  # shifter's own: docs/runtime.md
    classes = {name: obj for name, obj in vars(errors_module).items()
               if isinstance(obj, type) and issubclass(obj, ShifterError) and name not in runtime_only}
    documented = set()
    for code, cell in table.items():
        for name in re.findall(r"`(\w+)`", cell):
            assert classes[name].exit_code == code, f"{name} is documented as exit {code}"
            documented.add(name)
    assert documented == set(classes), f"undocumented: {set(classes) - documented}"
    assert table[boundary.EXIT_INTERNAL] and table[boundary.EXIT_INTERRUPTED] is not None
    assert set(table) == {0, boundary.EXIT_INTERNAL, boundary.EXIT_INTERRUPTED} | \
        {cls.exit_code for cls in classes.values()}


def test_runtime_doc_exit_code_table_is_true() -> None:
    codes = set(_runtime_codes())
    assert {errors_module.VolumeError.exit_code, errors_module.ContainerError.exit_code,
            errors_module.UsageError.exit_code, errors_module.AccessDeniedError.exit_code,
            boundary.EXIT_INTERNAL} <= codes


def _runtime_codes() -> list[int]:
    text = (DOCS / "runtime.md").read_text().split("## Exit status", 1)[1].split("\n## ", 1)[0]
    return [int(c) for c in re.findall(r"^\| (\d+)", text, flags=re.M)]
