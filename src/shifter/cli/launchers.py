"""Fast launchers for the runtime commands (``shifter``, ``shifter-setup``, ``shifter-teardown``).

pip's console scripts start the interpreter with ``site`` (scanning site-packages and running
its ``.pth`` hooks) and honour ``PYTHON*`` variables.  ``shifter`` starts a container in a few
milliseconds, and runs as root for Slurm, so ``scripts/install.sh`` replaces those scripts with
launchers that run under ``python -I -S``:

* ``-I``: isolated mode: no ``PYTHONPATH``/``PYTHONHOME``/``PYTHONSTARTUP``..., no user site, no
  script directory on ``sys.path`` (a caller's environment cannot steer a root process);
* ``-S``: no ``site``: the directory holding the ``shifter`` package is put on ``sys.path``
  explicitly instead (the checkout's ``src`` for an editable install, the venv's
  ``site-packages`` otherwise), after the standard library, as ``site`` would.

Usage: ``python -m shifter.cli.launchers BIN_DIR`` (with the venv's interpreter, which is also
the one the launchers name); it also byte-compiles the package, since ordinary users cannot
write ``__pycache__`` and compiling on every launch costs more than all the rest.  A later
``pip install`` writes pip's scripts back; they work too, only slower.
"""

from __future__ import annotations

import os
import sys

# command -> (module, function)
COMMANDS = {
    "shifter": ("shifter.cli.shifter", "main"),
    "shifter-setup": ("shifter.cli.setup", "setup_main"),
    "shifter-teardown": ("shifter.cli.setup", "teardown_main"),
}

TEMPLATE = """\
#!{python} -IS
# {name}: written by 'python -m shifter.cli.launchers' (scripts/install.sh).  Runs under
# python -I -S for a fast, environment-proof start; see shifter/cli/launchers.py.
import sys
sys.path.append({package_dir!r})
from {module} import {function}
sys.exit({function}())
"""


def package_dir() -> str:
    """The ``sys.path`` entry that holds the installed ``shifter`` package."""
    import shifter  # noqa: PLC0415

    return os.path.dirname(os.path.dirname(os.path.abspath(shifter.__file__)))


def launcher_text(name: str, python: str, pkg_dir: str) -> str:
    """The launcher script for command ``name``."""
    module, function = COMMANDS[name]
    if " " in python or "\n" in python:
        raise ValueError(f"interpreter path {python!r} cannot go on a '#!' line")
    return TEMPLATE.format(name=name, python=python, package_dir=pkg_dir, module=module, function=function)


def write_launchers(bin_dir: str, python: str | None = None, pkg_dir: str | None = None) -> list[str]:
    """Write (atomically replace) every launcher in ``bin_dir``; returns their paths."""
    venv_python = os.path.join(bin_dir, "python3")
    python = python or (venv_python if os.path.exists(venv_python) else sys.executable)
    pkg_dir = pkg_dir or package_dir()
    written = []
    for name in COMMANDS:
        path = os.path.join(bin_dir, name)
        tmp = f"{path}.tmp.{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(launcher_text(name, python, pkg_dir))
        os.chmod(tmp, 0o755)  # noqa: S103  (a command everyone runs)
        os.replace(tmp, path)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    """``python -m shifter.cli.launchers BIN_DIR``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m shifter.cli.launchers BIN_DIR\n")
        return 2
    for path in write_launchers(args[0]):
        sys.stdout.write(f"wrote {path}\n")
    import compileall  # noqa: PLC0415

    compileall.compile_dir(os.path.join(package_dir(), "shifter"), quiet=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
