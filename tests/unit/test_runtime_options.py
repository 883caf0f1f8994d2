"""`shifter` option parsing as a table: getopt semantics, stop at the first non-option, env defaults."""

from __future__ import annotations

import pytest

from shifter.errors import UsageError
from shifter.runtime.options import USAGE, ShifterOptions, parse_options

O_ = ShifterOptions

TABLE: list[tuple[list[str], dict[str, str], ShifterOptions]] = [
    (["--image=x", "ls", "-l"], {}, O_(image="x", args=("ls", "-l"))),
    (["--image", "x", "ls", "-l"], {}, O_(image="x", args=("ls", "-l"))),
    (["-i", "x", "ls"], {}, O_(image="x", args=("ls",))),
    (["-ix", "ls"], {}, O_(image="x", args=("ls",))),
    (["-i", "x", "--", "-v"], {}, O_(image="x", args=("-v",))),
    (["-i", "x", "cmd", "--image=y", "-v"], {}, O_(image="x", args=("cmd", "--image=y", "-v"))),
    (["-i", "x", "-"], {}, O_(image="x", args=("-",))),
    (["--ima=x"], {}, O_(image="x")),
    (["-i", "a", "-i", "b"], {}, O_(image="b")),
    (["-i", "x", "-V", "/a:/b", "--volume=/c:/d:ro;/e:/f"], {},
     O_(image="x", volumes=("/a:/b", "/c:/d:ro;/e:/f"))),
    (["-i", "x", "-V/a:/b"], {}, O_(image="x", volumes=("/a:/b",))),
    (["-i", "x", "--entrypoint", "arg"], {}, O_(image="x", entrypoint=True, args=("arg",))),
    (["-i", "x", "--entry", "--", "arg"], {}, O_(image="x", entrypoint=True, args=("arg",))),
    (["-i", "x", "--entrypoint=/bin/run -q"], {},
     O_(image="x", entrypoint=True, entrypoint_cmd="/bin/run -q")),
    (["-i", "x", "--workdir=/app", "pwd"], {},
     O_(image="x", workdir="/app", workdir_given=True, args=("pwd",))),
    (["-i", "x", "--workdir", "pwd"], {}, O_(image="x", workdir=None, workdir_given=True, args=("pwd",))),
    (["-i", "x", "-w", "/app", "pwd"], {}, O_(image="x", workdir="/app", workdir_given=True, args=("pwd",))),
    (["-i", "x", "-w/app"], {}, O_(image="x", workdir="/app", workdir_given=True)),
    (["-i", "x", "-e", "A=1", "--env=B=2", "-eC=3"], {}, O_(image="x", env=("A=1", "B=2", "C=3"))),
    (["-i", "x", "--env-file=a.env", "--env-file", "b.env"], {}, O_(image="x", env_files=("a.env", "b.env"))),
    (["-i", "x", "-E"], {}, O_(image="x", clearenv=True)),
    (["-i", "x", "--clearenv"], {}, O_(image="x", clearenv=True)),
    (["-vEix", "true"], {}, O_(image="x", clearenv=True, verbose=1, args=("true",))),
    (["-vv", "-i", "x"], {}, O_(image="x", verbose=2)),
    (["-i", "x", "-m", "a,b"], {}, O_(image="x", modules="a,b")),
    (["-i", "x", "--module=none"], {}, O_(image="x", modules="none")),
    (["-i", "x", "--user=alice"], {}, O_(image="x", user="alice")),
    (["-h"], {}, O_(help=True)),
    (["--help", "-i", "x"], {}, O_(help=True, image="x")),
    ([], {}, O_()),
    # environment defaults
    ([], {"SHIFTER_IMAGE": "ubuntu:22.04"}, O_(image="ubuntu:22.04")),
    ([], {"SHIFTER_IMAGE": "ubuntu:22.04", "SHIFTER_IMAGETYPE": "docker"},
     O_(image="ubuntu:22.04", image_type="docker")),
    ([], {"SHIFTER": "docker:ubuntu"}, O_(image="docker:ubuntu")),
    (["-i", "cli"], {"SHIFTER_IMAGE": "env", "SHIFTER_IMAGETYPE": "id"}, O_(image="cli")),
    ([], {"SHIFTER_VOLUME": "/a:/b;/c:/d"}, O_(volumes=("/a:/b;/c:/d",))),
    (["-V", "/x:/y"], {"SHIFTER_VOLUME": "/a:/b"}, O_(volumes=("/x:/y",))),
    ([], {"SHIFTER_MODULE": "gpu"}, O_(modules="gpu")),
    (["-m", "none"], {"SHIFTER_MODULE": "gpu"}, O_(modules="none")),
    ([], {"SHIFTER_IMAGE": ""}, O_()),
]


@pytest.mark.parametrize(("argv", "environ", "expected"), TABLE)
def test_option_table(argv: list[str], environ: dict[str, str], expected: ShifterOptions) -> None:
    assert parse_options(argv, environ) == expected


BAD = [
    (["--image"], "needs a value"),
    (["-i"], "needs a value"),
    (["--image="], "needs a value"),
    (["--bogus"], "unknown option --bogus"),
    (["-x"], "unknown option -x"),
    (["--e=1"], "ambiguous"),
    (["--help=yes"], "takes no value"),
    (["--clearenv=1"], "takes no value"),
    (["-i", "x", "--entrypoint="], "empty"),
    (["-i", "x", "--user="], "non-empty"),
    (["-i", "x", "--module="], "non-empty"),
    (["-i", "x", "--env-file="], "file name"),
    (["-w"], "needs a value"),
]


@pytest.mark.parametrize(("argv", "words"), BAD)
def test_bad_options(argv: list[str], words: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_options(argv, {})
    assert words in info.value.message


def test_usage_mentions_every_long_option() -> None:
    for name in ("--image", "--volume", "--entrypoint", "--workdir", "--env", "--env-file", "--clearenv",
                 "--module", "--user", "--verbose", "--help"):
        assert name in USAGE
