"""The validation library every spec is declared with: pydantic v2 models, one error format.

A spec is a :class:`Spec` (a frozen pydantic model that refuses unknown fields) whose numbers
are :func:`Int` or :func:`Num` (bounds stated once: they validate and appear in the JSON
Schema). :func:`parse` validates a mapping and raises one :class:`SpecError` listing every
error, each ``(full.field.path, message)``::

    parse(OptimizerSpec, {"name": "adam", "lr": -1, "bta1": 0.5}, "optimizer")
    # SpecError: optimizer.bta1: unknown field (did you mean 'beta1'?); allowed: ...
    #            optimizer.lr: must be > 0, got -1

Validators raise :func:`fail` (an optional ``field`` places the error below the model the
validator belongs to), or an error carrying several ``(path suffix, message)`` pairs
(:func:`several`), which is how a nested spec with its own parser (the model) reports.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, get_args

from pydantic import BaseModel, ConfigDict, Strict, ValidationError, ValidationInfo
from pydantic_core import PydanticCustomError, core_schema

from .errors import SpecError, show, unknown_field

__all__ = ["Flag", "Int", "Num", "Spec", "fail", "parse", "refuse_unused", "several", "translate"]

Errors = list[tuple[str, str]]
"""``(path suffix, message)`` pairs; a suffix is ``""``, ``".field"``, ``"[2]"``, ... ."""


def fail(message: str, field: str | None = None) -> PydanticCustomError:
    """A validator's error; `field` names a field of the model the validator belongs to."""
    return PydanticCustomError("spec_value", "{msg}", {"msg": message, **({"field": field} if field else {})})


def several(errors: Errors) -> PydanticCustomError:
    """Several errors at once, each with its path suffix below the validated value."""
    return PydanticCustomError("spec_errors", "{n} errors", {"n": len(errors), "errors": errors})


# --------------------------------------------------------------------------- numbers


@dataclass(frozen=True)
class _Range:
    """A number's type and bounds: validated here, stated in the JSON Schema."""

    integer: bool
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def phrase(self) -> str:
        lo, hi = self.lo, self.hi
        if self.integer:
            if hi is None:
                return {1: "a positive integer", 0: "a non-negative integer"}.get(lo, f"an integer >= {lo}")
            return f"an integer in [{lo}, {hi}]"
        if lo is not None and hi is not None:
            return f"in {'(' if self.lo_open else '['}{lo:g}, {hi:g}{')' if self.hi_open else ']'}"
        if lo is not None:
            return f"{'>' if self.lo_open else '>='} {lo:g}"
        return f"{'<' if self.hi_open else '<='} {hi:g}" if hi is not None else "a number"

    def check(self, v: Any) -> int | float:
        x = self._integer(v) if self.integer else self._number(v)
        below = self.lo is not None and (x <= self.lo if self.lo_open else x < self.lo)
        above = self.hi is not None and (x >= self.hi if self.hi_open else x > self.hi)
        if below or above:
            raise fail(f"must be {self.phrase()}, got {show(v)}")
        return x

    def _integer(self, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise fail(f"must be {self.phrase()}, got {show(v)}")
        return int(v)

    @staticmethod
    def _number(v: Any) -> float:
        """A finite real; a numeric string too (YAML 1.1 reads ``3e-3`` as one), never a bool."""
        if isinstance(v, str):
            try:
                x = float(v.strip())
            except ValueError:
                raise fail(f"must be a number, got str {show(v)}") from None
        elif isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise fail(f"must be a number, got {type(v).__name__} {show(v)}")
        else:
            try:
                x = float(v)
            except OverflowError:
                x = math.inf
        if not math.isfinite(x):
            raise fail(f"must be a finite number, got {show(v)}")
        return x

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(self.check)

    def __get_pydantic_json_schema__(self, schema: Any, handler: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "integer" if self.integer else "number"}
        if self.lo is not None:
            out["exclusiveMinimum" if self.lo_open else "minimum"] = self.lo
        if self.hi is not None:
            out["exclusiveMaximum" if self.hi_open else "maximum"] = self.hi
        return out


def Int(lo: int | None = None, hi: int | None = None) -> Any:  # noqa: N802 (a type, used as one)
    """An integer in ``[lo, hi]`` (bools and floats refused)."""
    return Annotated[int, _Range(True, lo, hi)]


def Num(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False) -> Any:  # noqa: N802
    """A finite number within the bounds (open ends exclusive)."""
    return Annotated[float, _Range(False, lo, hi, lo_open, hi_open)]


Flag = Annotated[bool, Strict()]
"""true or false, nothing else (pydantic would read "yes", 1 and "on" as true)."""


# --------------------------------------------------------------------------- specs


class _Positional(type(BaseModel)):
    """Calling a spec class takes positional arguments in field order (as the dataclasses these
    replaced did) and raises SpecError. Pydantic never calls this when it validates a nested
    spec, so its context (a client's spec or not) reaches every level."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        names = list(cls.model_fields)
        if len(args) > len(names):
            raise TypeError(f"{cls.__name__} takes at most {len(names)} positional arguments")
        for name, value in zip(names, args):
            if name in kwargs:
                raise TypeError(f"{cls.__name__} got multiple values for {name!r}")
            kwargs[name] = value
        try:
            return super().__call__(**kwargs)
        except ValidationError as e:
            raise cls.spec_error.of([(_join(cls.spec_path, s), m) for s, m in translate(e, cls)]) from None


class Spec(BaseModel, metaclass=_Positional):
    """A frozen spec refusing unknown fields; constructing one directly validates it too,
    raising `spec_error` with fields under `spec_path`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    spec_path: ClassVar[str] = ""
    spec_error: ClassVar[type[SpecError]] = SpecError


def parse(cls: type[BaseModel], data: Any, path: str, roots: Collection[str] = ()) -> Any:
    """``cls`` validated from `data` (a client's mapping), or one SpecError with every error.

    Errors are named ``path.field...``, except those under a field in `roots`, which are
    named from that field (``model.input``, not ``job.model.input``).
    """
    try:
        return cls.model_validate(data, context={"user": True})
    except ValidationError as e:
        error = getattr(cls, "spec_error", SpecError)
        raise error.of([(_rooted(path, s, roots), m) for s, m in translate(e, cls)]) from None


def _rooted(path: str, suffix: str, roots: Collection[str]) -> str:
    head = suffix[1:].split(".", 1)[0].split("[", 1)[0]
    return suffix[1:] if suffix.startswith(".") and head in roots else _join(path, suffix)


def _join(path: str, suffix: str) -> str:
    if not path:
        return suffix[1:] if suffix.startswith(".") else suffix
    return path + suffix


def translate(exc: ValidationError, root: type[BaseModel] | None, where: str = "") -> Errors:
    """pydantic's errors as ``(path suffix, message)`` pairs in this project's wording.

    `root` is the validated model (unknown-field errors list what it allows); `where` says
    whose fields they are (``for 'blobs'``).
    """
    out: Errors = []
    for e in exc.errors(include_url=False):
        loc, ctx = e["loc"], e.get("ctx") or {}
        suffix = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)
        if e["type"] == "spec_errors":
            out += [(suffix + s, m) for s, m in ctx["errors"]]
            continue
        if ctx.get("field"):
            suffix += f".{ctx['field']}"
        out.append((suffix, _message(e, root, where)))
    return out


def _message(e: Mapping[str, Any], root: type[BaseModel] | None, where: str) -> str:
    kind, value, ctx = e["type"], e.get("input"), e.get("ctx") or {}
    if kind == "spec_value":
        return ctx["msg"]
    if kind == "missing":
        return f"is required{' ' + where if where else ''}"
    if kind == "extra_forbidden":
        model = _model_at(root, e["loc"][:-1])
        return unknown_field(e["loc"][-1], model.model_fields if model else (), where)
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"must be a mapping, got {type(value).__name__}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}, got {show(value)}"
    if kind in ("bool_type", "bool_parsing"):
        return f"must be true or false, got {show(value)}"
    if kind in ("string_type", "list_type"):
        return f"must be a {kind.removesuffix('_type')}, got {type(value).__name__} {show(value)}"
    return f"{e['msg']}, got {show(value)}"


def _model_at(cls: type[BaseModel] | None, loc: Sequence[Any]) -> type[BaseModel] | None:
    """The model class at `loc` below `cls` (for the fields an unknown key could have meant)."""
    for part in loc:
        field = cls.model_fields.get(part) if cls is not None and isinstance(part, str) else None
        if field is None:
            return None
        kinds = (field.annotation, *get_args(field.annotation))
        cls = next((k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)), None)
    return cls


def refuse_unused(cls: type[BaseModel], data: Any, handler: Callable[[Any], Any], info: ValidationInfo,
                  uses: Mapping[str, tuple[str, ...]], kind: str, hints: Mapping[tuple[str, str], str] = {}) -> Any:
    """A model wrap-validator's body: in a client's spec (``parse``), a field that
    ``data["name"]`` does not read is an error (a setting is never silently ignored).

    `uses` maps each name to the fields only it reads; ``None`` counts as unset. A client
    must give ``name``. Reported together with the model's other errors.
    """
    if not (info.context or {}).get("user") or not isinstance(data, Mapping):
        return handler(data)
    name = data.get("name")
    errors: Errors = [] if "name" in data else [(".name", "is required")]  # a client names its choice
    for key, value in data.items() if isinstance(name, str) and name in uses else ():
        users = [n for n, fields in uses.items() if key in fields]
        if users and value is not None and key not in uses[name]:
            hint = hints.get((name, key)) or (f"is not used by the {name!r} {kind} (only by "
                                              f"{', '.join(repr(u) for u in users)}); remove it")
            errors.append((f".{key}", hint))
    if not errors:
        return handler(data)
    try:
        handler(data)
    except ValidationError as e:
        errors += [err for err in translate(e, cls) if err[0] not in {s for s, _ in errors}]
    raise several(errors)
