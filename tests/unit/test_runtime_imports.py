"""The launch path stays light: importing the runtime request builder pulls in no heavy library."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = ("httpx", "httpcore", "h11", "anyio", "sqlalchemy", "rich", "click", "pydantic", "zstandard",
             "asyncio", "ssl", "argparse", "typing_extensions")
ALLOWED_SHIFTER = ("shifter", "shifter.errors", "shifter.config", "shifter.config.site", "shifter.store",
                   "shifter.store.layout", "shifter.oci", "shifter.oci.reference")

LAUNCH_MODULES = ("shifter.runtime.request", "shifter.runtime.paths", "shifter.runtime.spec")


def _modules_after_import(names: tuple[str, ...]) -> list[str]:
    code = ("import sys, json\n" + "".join(f"import {n}\n" for n in names)
            + "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True)
    return list(json.loads(out.stdout))


def test_launch_path_imports_nothing_heavy() -> None:
    loaded = _modules_after_import(LAUNCH_MODULES)
    heavy = [m for m in loaded if m.split(".")[0] in FORBIDDEN]
    assert heavy == []


def test_launch_path_stays_inside_its_layer() -> None:
    loaded = _modules_after_import(LAUNCH_MODULES)
    outside = [m for m in loaded if m.startswith("shifter")
               and not m.startswith("shifter.runtime") and m not in ALLOWED_SHIFTER]
    assert outside == []
