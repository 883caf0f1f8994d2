"""The launch path stays light: ``shifter`` starts a container in a few milliseconds.

Importing what ``shifter`` runs (under ``python -I -S``, as the installed launcher does; see
``shifter.cli.launchers``) loads no heavy library and none of the standard modules that cost
milliseconds to import: no ``dataclasses`` (use ``shifter._record.Record``), ``typing`` (import
it under ``TYPE_CHECKING``), ``re``, ``json`` (use ``shifter._fastjson``), ``pathlib``,
``inspect``, ``enum``, ``collections``, ``functools``...  Import those lazily, on the rare
paths that need them.  Measure with ``python -X importtime``.
"""

from __future__ import annotations

import os
import subprocess
import sys

import shifter

FORBIDDEN = ("httpx", "httpcore", "h11", "anyio", "sqlalchemy", "rich", "click", "pydantic", "zstandard",
             "asyncio", "ssl", "argparse", "typing_extensions")
# Standard modules that each cost a millisecond or more (with what they pull in) per launch.
FORBIDDEN_STDLIB = ("dataclasses", "typing", "inspect", "re", "json", "pathlib", "enum", "collections",
                    "functools", "urllib", "shlex", "subprocess", "signal", "contextlib", "tempfile", "shutil",
                    "ast", "tokenize", "linecache", "copy", "weakref", "fnmatch", "ipaddress", "datetime",
                    "locale", "string", "operator", "itertools", "keyword", "reprlib",
                    "logging", "threading", "random", "hashlib", "socket", "selectors")
ALLOWED_SHIFTER = ("shifter", "shifter._record", "shifter._fastjson", "shifter.errors", "shifter.config",
                   "shifter.config.site", "shifter.store", "shifter.store.layout", "shifter.oci",
                   "shifter.oci.reference", "shifter.cli", "shifter.cli.shifter")

# Everything ``shifter --image=X CMD`` imports before it execs CMD.
LAUNCH_MODULES = ("shifter.cli.shifter", "shifter.config.site", "shifter.runtime.options",
                  "shifter.runtime.request", "shifter.runtime.images", "shifter.runtime.launch",
                  "shifter.runtime.prepared", "shifter.runtime.plan", "shifter.runtime.paths",
                  "shifter.runtime.spec", "shifter.runtime.linux.executor")
PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(shifter.__file__)))


def _modules_after_import(names: tuple[str, ...]) -> list[str]:
    """Modules loaded by importing ``names`` in a fresh ``python -I -S`` (the launcher's mode)."""
    code = (f"import sys\nsys.path.append({PACKAGE_DIR!r})\n" + "".join(f"import {n}\n" for n in names)
            + "sys.stdout.write('\\n'.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_launch_path_imports_nothing_heavy() -> None:
    loaded = _modules_after_import(LAUNCH_MODULES)
    heavy = [m for m in loaded if m.split(".")[0] in FORBIDDEN]
    assert heavy == []


def test_launch_path_imports_no_slow_standard_module() -> None:
    loaded = _modules_after_import(LAUNCH_MODULES)
    slow = [m for m in loaded if m.split(".")[0] in FORBIDDEN_STDLIB]
    assert slow == []


def test_launch_path_stays_inside_its_layer() -> None:
    loaded = _modules_after_import(LAUNCH_MODULES)
    outside = [m for m in loaded if m.startswith("shifter")
               and not m.startswith("shifter.runtime") and m not in ALLOWED_SHIFTER]
    assert outside == []


def test_the_site_configuration_alone_is_light() -> None:
    loaded = _modules_after_import(("shifter.config.site",))
    assert [m for m in loaded if m.split(".")[0] in FORBIDDEN_STDLIB + FORBIDDEN] == []


def test_what_exec_needs_after_chroot_is_loaded_before() -> None:
    """After pivot_root/chroot the host's standard library is out of reach: ``os.execvpe``
    imports ``warnings`` lazily, so the executor must have loaded it already."""
    loaded = _modules_after_import(("shifter.runtime.linux.executor",))
    assert "warnings" in loaded


# Everything a ``shifter`` that enters a prepared container loads (shifter.runtime.linux.fastpath),
# beyond what the interpreter itself loads at start: only built-in modules, the two C extensions
# it needs (``_json`` for the record, ``_ctypes`` for unshare/mount/prctl/capset) and our own
# modules on the way.  No ``os`` (~1 ms), no ``ctypes`` (~2.5 ms), no ``__future__``.
FAST_PATH_ALLOWED = {"shifter", "shifter.cli", "shifter.cli.shifter", "shifter.runtime", "shifter.runtime.linux",
                     "shifter.runtime.linux.fastpath", "_json", "_ctypes", "pwd"}


def test_fast_path_loads_only_builtins_and_its_own_modules() -> None:
    base = set(subprocess.run([sys.executable, "-I", "-S", "-c",
                               "import sys; sys.stdout.write('\\n'.join(sorted(sys.modules)))"],
                              capture_output=True, text=True, check=True).stdout.split())
    # Import what the launcher imports, then run every lazy import of the fast path: the record
    # parser, the libc functions, the home lookup, the exec preparations.
    code = (f"import sys\nsys.path.append({PACKAGE_DIR!r})\nimport shifter.cli.shifter\n"
            "from shifter.runtime.linux import fastpath\n"
            "assert fastpath._json_object(b'{\"a\": [1]}') == {'a': [1]}\nfastpath._libc()\n"
            "fastpath.files_unchanged({'witnesses': [], 'home': '/'}, 0)\nimport _signal\n"
            "sys.stdout.write('\\n'.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True)
    extra = set(out.stdout.split()) - base
    assert extra <= FAST_PATH_ALLOWED, sorted(extra - FAST_PATH_ALLOWED)
    assert {"os", "ctypes", "__future__", "shifter._fastjson"}.isdisjoint(extra)
