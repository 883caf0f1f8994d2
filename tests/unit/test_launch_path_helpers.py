"""The launch path's hand-written stand-ins give exactly what the slow modules they replace give.

``shifter._record.Record`` for frozen dataclasses, ``shifter._fastjson`` for ``json.loads``, and
small string checks for ``re``, ``pathlib`` and ``urllib.parse`` (see test_runtime_imports.py).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import urllib.parse
from pathlib import Path, PurePosixPath

import pytest

from shifter import _fastjson
from shifter._record import Record, field
from shifter.config import site
from shifter.errors import ConfigError
from shifter.oci import reference
from shifter.store import layout


class Point(Record):
    x: int
    y: int = 0
    tags: tuple[str, ...] = ()
    meta: dict[str, object] = field(default_factory=dict)

    @property
    def norm(self) -> int:
        return abs(self.x) + abs(self.y)


@dataclasses.dataclass(frozen=True)
class DataPoint:
    x: int
    y: int = 0
    tags: tuple[str, ...] = ()
    meta: dict[str, object] = dataclasses.field(default_factory=dict)


# --- Record behaves like @dataclass(frozen=True) ---------------------------------------------------

def test_record_construction_repr_and_equality_match_a_frozen_dataclass() -> None:
    point, data = Point(1, y=2, tags=("a",)), DataPoint(1, y=2, tags=("a",))
    assert repr(point).replace("Point", "DataPoint") == repr(data)
    assert point == Point(1, 2, ("a",), {}) and point != Point(1, 3) and point.norm == 3
    assert Point(1) != DataPoint(1)
    for unhashable in (point, data):  # a dict field: neither hashes
        with pytest.raises(TypeError):
            hash(unhashable)
    assert Point.__match_args__ == ("x", "y", "tags", "meta")


def test_record_default_factory_gives_each_instance_its_own_value() -> None:
    first, second = Point(1), Point(2)
    assert first.meta == {} and first.meta is not second.meta
    with pytest.raises(AttributeError):
        Point.meta  # noqa: B018  (like a dataclass: no class attribute for a factory field)


def test_record_is_frozen() -> None:
    point = Point(1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        point.x = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del point.y  # type: ignore[misc]


@pytest.mark.parametrize(("args", "kwargs"), [((), {}), ((1, 2, (), {}, 5), {}), ((1,), {"x": 2}),
                                              ((1,), {"z": 3})])
def test_record_rejects_the_calls_a_dataclass_rejects(args: tuple[object, ...], kwargs: dict[str, object]) -> None:
    with pytest.raises(TypeError):
        DataPoint(*args, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Point(*args, **kwargs)  # type: ignore[arg-type]


def test_dataclasses_functions_accept_records() -> None:
    point = Point(1, 2)
    assert dataclasses.is_dataclass(point) and not dataclasses.is_dataclass(Record)
    assert [f.name for f in dataclasses.fields(point)] == ["x", "y", "tags", "meta"]
    moved = dataclasses.replace(point, y=5)
    assert isinstance(moved, Point) and (moved.x, moved.y) == (1, 5)
    assert dataclasses.asdict(point) == {"x": 1, "y": 2, "tags": (), "meta": {}}


def test_hashable_records_hash_by_value() -> None:
    class Pair(Record):
        a: int
        b: str = "x"

    assert hash(Pair(1)) == hash(Pair(1, "x")) and len({Pair(1), Pair(1), Pair(2)}) == 2


def test_a_required_field_after_a_default_is_refused() -> None:
    with pytest.raises(TypeError):
        class Bad(Record):
            a: int = 0
            b: int


# --- _fastjson.loads == json.loads ---------------------------------------------------------------

JSON_CASES = ['{"a": [1, 2.5, "x\\u00e9", null, true, false, {"b": {}}]}', "  [1]  ", '\n{"a":1}\n', "1",
              '"s"', "NaN", "[Infinity,-Infinity]", "", " ", "{", '{"a":1} x', "\ufeff{}", "[1,]",
              '{"a":1,"a":2}', "1e400", "12345678901234567890123", '"\\ud800"', "[" * 50 + "]" * 50]


@pytest.mark.parametrize("text", JSON_CASES)
@pytest.mark.parametrize("as_bytes", [False, True])
def test_fastjson_gives_what_json_gives(text: str, as_bytes: bool) -> None:
    doc: str | bytes = text.encode("utf-8", "surrogatepass") if as_bytes else text
    try:
        expected: object = ("ok", json.loads(doc))
    except ValueError as err:
        expected = ("error", type(err), str(err))
    try:
        got: object = ("ok", _fastjson.loads(doc))
    except ValueError as err:
        got = ("error", type(err), str(err))
    assert repr(got) == repr(expected)


# --- the string checks that replace re, pathlib and urllib ---------------------------------------

def _strings(alphabet: list[str], longest: int) -> list[str]:
    return ["".join(parts) for size in range(longest + 1) for parts in itertools.product(alphabet, repeat=size)]


def test_reference_checks_match_the_grammar_regexes() -> None:
    component = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
    domain_part = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
    domain = re.compile(rf"(?:{domain_part}(?:\.{domain_part})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?")
    tag = re.compile(r"[\w][\w.-]{0,127}")
    for text in _strings(["a", "0", "Z", ".", "_", "-", ":", "[", "]", "é", "/"], 5):
        assert reference._is_path_component(text) == bool(component.fullmatch(text)), text
        assert reference._is_domain(text) == bool(domain.fullmatch(text)), text
        assert reference._is_tag(text) == bool(tag.fullmatch(text)), text
    for text in ["a" * 128, "a" * 129, "sha256:" + "a" * 64, "sha512:" + "0" * 128, "sha256:" + "A" * 64]:
        assert reference._is_tag(text) == bool(tag.fullmatch(text))
        assert reference._is_digest(text) == bool(re.fullmatch(r"sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}", text))


def test_store_checks_match_re_pathlib_and_urllib() -> None:
    for text in _strings(["a", "/", ".", "é", " ", "%", "~", ":", "\n", "-"], 4):
        assert layout._quote(text) == urllib.parse.quote(text, safe=""), text
        assert layout.pure_path(text) == str(PurePosixPath(text)), text
        assert layout._join(layout.pure_path(text), "x.json") == str(Path(text) / "x.json"), text
        assert layout._is_type(text) == bool(re.match(r"^[a-z][a-z0-9_-]{0,31}$", text)), text
    for text in ["a" * 64, "a" * 64 + "\n", "a" * 63, "a" * 65, "A" * 64, "g" * 64, "a" * 32 + "\n"]:
        assert layout._is_id(text) == bool(re.match(r"^[0-9a-f]{64}$", text)), text
        assert layout._is_type(text) == bool(re.match(r"^[a-z][a-z0-9_-]{0,31}$", text)), text


def test_store_path_tests_match_pathlib(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    for name in ("file", "dir", "missing", "file/below", "loop", "nul\0byte"):
        path = tmp_path / name
        assert layout.exists(str(path)) == path.exists()
        assert layout.is_file(str(path)) == path.is_file()
        assert layout.is_dir(str(path)) == path.is_dir()


def test_config_checks_match_their_regexes() -> None:
    size = re.compile(r"\s*(\d+)\s*([kKmMgGtT]?)[iI]?[bB]?\s*")
    for text in _strings(["", " ", "1", "0", "k", "K", "i", "b", "x", "\t", "٣", "g", "-"], 4):
        match = size.fullmatch(text)
        if match:
            unit = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}[match.group(2).lower()]
            assert site.parse_size("k", text) == int(match.group(1)) * unit
        else:
            with pytest.raises(ConfigError):
                site.parse_size("k", text)
    module_key = re.compile(r"^module_([A-Za-z0-9][A-Za-z0-9_-]*?)_(siteFs|siteEnv|siteEnvAppend|siteEnvPrepend|"
                            r"siteEnvUnset|conflict|userhook|roothook|copyPath|enabled)$")
    for parts in _strings(["module_", "a", "_", "-", "siteEnv", "Append", "enabled", "é", "x_"], 4):
        match = module_key.match(parts)
        assert site._module_key(parts) == ((match.group(1), match.group(2)) if match else None), parts
    for name in ["", "a", "_", "1a", "a1", "A_b", "é", "aé", "a-b", "a b", "if", "a\n"]:
        assert site._is_env_name(name) == bool(re.match(r"[A-Za-z_][A-Za-z0-9_]*\Z", name)), name
