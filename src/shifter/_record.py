"""Light value classes for the launch path: frozen dataclasses without ``import dataclasses``.

``import dataclasses`` pulls in ``inspect``, ``re`` and more (~6 ms), and every ``@dataclass``
compiles generated code when its class is created (~0.5 ms each); ``shifter`` starts in a few
milliseconds, so the classes it needs subclass :class:`Record` instead::

    class Identity(Record):
        uid: int
        groups: tuple[int, ...] = ()
        metadata: dict[str, object] = field(default_factory=dict)

A record behaves like ``@dataclass(frozen=True)``: keyword or positional construction in field
order, defaults and ``default_factory``, ``==`` and ``hash`` over the fields, the same
``repr``, and assignment raises ``dataclasses.FrozenInstanceError``.  ``dataclasses.replace``,
``fields``, ``asdict`` and ``is_dataclass`` work too: ``__dataclass_fields__`` is built on first
use (importing ``dataclasses`` only then).  Type checkers see the fields through
``dataclass_transform`` (PEP 681).
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs ~2 ms to import; type checkers treat this name as True
if TYPE_CHECKING:
    from typing import Any, ClassVar, dataclass_transform
else:
    def dataclass_transform(**_kwargs: object) -> object:
        return lambda cls: cls

_CLASSVAR_PREFIXES = ("ClassVar", "typing.ClassVar", "t.ClassVar")


class _Factory:
    """What :func:`field` returns for ``default_factory``: called for every new instance."""

    __slots__ = ("factory",)

    def __init__(self, factory: Any) -> None:
        self.factory = factory


def field(*, default_factory: Any) -> Any:
    """Like ``dataclasses.field(default_factory=...)`` (the only form records need)."""
    return _Factory(default_factory)


class _DataclassFields:
    """``__dataclass_fields__``, built on first access from a real (throw-away) dataclass with the
    same fields, so the ``dataclasses`` module functions accept records."""

    def __get__(self, obj: object, owner: type[Record]) -> Any:
        cached = owner.__dict__.get("_dataclass_fields_cache")
        if cached is not None:
            return cached
        if owner is Record:
            raise AttributeError("__dataclass_fields__")  # the base itself is no dataclass
        import dataclasses  # noqa: PLC0415  (only tests and rare tools get here)

        namespace: dict[str, Any] = {"__annotations__": dict(owner._record_annotations)}
        for name, value in owner._record_defaults.items():
            namespace[name] = (dataclasses.field(default_factory=value.factory)
                               if isinstance(value, _Factory) else value)
        shadow: Any = dataclasses.dataclass(frozen=True)(type(owner.__name__, (), namespace))
        cached = shadow.__dataclass_fields__
        type.__setattr__(owner, "_dataclass_fields_cache", cached)
        return cached


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
class Record:
    """Base of frozen value classes (see the module docstring)."""

    _record_fields: ClassVar[tuple[str, ...]] = ()
    _record_annotations: ClassVar[dict[str, str]] = {}
    _record_defaults: ClassVar[dict[str, Any]] = {}
    __dataclass_fields__: ClassVar[Any] = _DataclassFields()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Fields of record base classes first, then this class's own (as dataclasses do).
        annotations = dict(cls._record_annotations)
        defaults = dict(cls._record_defaults)
        own = cls.__dict__.get("__annotations__", {})  # noqa: RUF063  (inspect is what we avoid)
        for name, hint in own.items():
            if isinstance(hint, str) and hint.startswith(_CLASSVAR_PREFIXES):
                continue
            annotations[name] = hint
            if name in cls.__dict__:
                defaults[name] = cls.__dict__[name]
                if isinstance(defaults[name], _Factory):
                    type.__delattr__(cls, name)  # like dataclasses: no class attribute
            else:
                defaults.pop(name, None)
        _check_default_order(cls.__name__, annotations, defaults)
        cls._record_fields = tuple(annotations)
        cls._record_annotations = annotations
        cls._record_defaults = defaults
        type.__setattr__(cls, "__match_args__", cls._record_fields)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        names = self._record_fields
        if len(args) > len(names):
            raise TypeError(f"{type(self).__name__}() takes {len(names)} positional arguments "
                            f"but {len(args)} were given")
        values = dict(zip(names, args, strict=False))
        for name, value in kwargs.items():
            if name not in self._record_annotations:
                raise TypeError(f"{type(self).__name__}() got an unexpected keyword argument '{name}'")
            if name in values:
                raise TypeError(f"{type(self).__name__}() got multiple values for argument '{name}'")
            values[name] = value
        if len(values) < len(names):
            defaults = self._record_defaults
            for name in names:
                if name in values:
                    continue
                if name not in defaults:
                    raise TypeError(f"{type(self).__name__}() missing required argument: '{name}'")
                default = defaults[name]
                values[name] = default.factory() if isinstance(default, _Factory) else default
        self.__dict__.update((name, values[name]) for name in names)
        post_init = getattr(self, "__post_init__", None)
        if post_init is not None:
            post_init()

    def _record_values(self) -> tuple[Any, ...]:
        values = self.__dict__
        return tuple(values[name] for name in self._record_fields)

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={self.__dict__[name]!r}" for name in self._record_fields)
        return f"{type(self).__qualname__}({inner})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is self.__class__:
            return self._record_values() == other._record_values()
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._record_values())

    def __setattr__(self, name: str, value: object) -> None:
        _frozen(name)

    def __delattr__(self, name: str) -> None:
        _frozen(name)


def _check_default_order(name: str, annotations: dict[str, str], defaults: dict[str, Any]) -> None:
    seen_default = False
    for field_name in annotations:
        if field_name in defaults:
            seen_default = True
        elif seen_default:
            raise TypeError(f"non-default argument '{field_name}' follows default argument in {name}")


def _frozen(name: str) -> None:
    from dataclasses import FrozenInstanceError  # noqa: PLC0415  (error path only)

    raise FrozenInstanceError(f"cannot assign to field '{name}'")


__all__ = ["Record", "field"]
