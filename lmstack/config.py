"""Typed configs: dataclasses filled from TOML tables, with errors that name the bad key.

Every stage declares a ``@dataclass Config``. A recipe is a TOML file with a ``[run]`` table
and one table per stage. ``config_from_dict`` checks every key and every value's type against
the dataclass annotations, so a typo fails at once with the list of valid keys instead of
being silently ignored. Fields with a fixed set of choices are ``Literal``; a table of overrides
for another dataclass (``[pretrain.model]``: a preset plus ModelConfig fields) is typed with
``Annotated[dict, OverridesOf(ModelConfig, ...)]`` and checked key by key the same way.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints


class ConfigError(ValueError):
    """A recipe, config table or ``--set`` override is invalid."""


@dataclass(frozen=True)
class OverridesOf:
    """``Annotated[dict[str, Any], OverridesOf(SomeConfig, extra={...})]``: a table that overrides some
    fields of dataclass ``target`` (plus the ``extra`` keys, name -> type), kept as a dict so that the
    code using it can tell which fields were given. Every key and value is checked at load."""
    target: type
    extra: dict = field(default_factory=dict)

    def check(self, value: Any, where: str, table: str) -> dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        hints = {f.name: get_type_hints(self.target)[f.name] for f in dataclasses.fields(self.target) if f.init}
        hints.update(self.extra)
        unknown = sorted(set(value) - set(hints))
        if unknown:
            raise ConfigError(f"[{table}]: unknown key {unknown[0]!r}; valid keys are: {', '.join(sorted(hints))}")
        return {k: _coerce(v, hints[k], f"[{table}] {k}", f"{table}.{k}") for k, v in value.items()}


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str, table: str) -> Any:
    """Return ``value`` checked (and, for dataclasses, built) against annotation ``tp``.
    ``where`` names the value in messages; ``table`` is the dotted name a nested table gets."""
    if tp is Any:
        return value
    origin = get_origin(tp)
    if origin is Annotated:
        base, *marks = get_args(tp)
        overrides = next((m for m in marks if isinstance(m, OverridesOf)), None)
        return overrides.check(value, where, table) if overrides else _coerce(value, base, where, table)
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where, table)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return config_from_dict(tp, value, table)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = get_args(tp)
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{where}[{i}]", f"{table}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        args = get_args(tp)
        val_tp = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(v, val_tp, f"{where}.{k}", f"{table}.{k}") for k, v in value.items()}
    if tp is float:
        # TOML writes 1 for 1.0; accept ints for float fields, but never bools.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")


def config_from_dict(cls: type, data: dict, where: str = "config") -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"[{where}]: expected a table, got {data!r}")
    hints = get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"[{where}]: unknown key {unknown[0]!r}; valid keys are: {', '.join(sorted(fields))}"
        )
    data = {k: _over_factory_default(fields[k], v) for k, v in data.items()}
    kwargs = {k: _coerce(v, hints[k], f"[{where}] {k}", f"{where}.{k}") for k, v in data.items()}
    try:
        obj = cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"[{where}]: {e}") from None
    return obj


def _over_factory_default(f: dataclasses.Field, value: Any) -> Any:
    """A partial table for a nested config whose default comes from a factory overrides that default's
    values, not the nested class's own defaults: ``[ppo] optim = { lr = 2e-5 }`` keeps the fine-tuning
    weight decay of 0.0 that ppo's factory sets, instead of OptimConfig's 0.1. The same holds for a
    dict-valued default (r2s9: ``--set pretrain.model.n_layers=6`` built the preset's own 5.5M-parameter
    model instead of the default's 1.3M one with six layers)."""
    if not isinstance(value, dict) or f.default_factory is dataclasses.MISSING:
        return value
    default = f.default_factory()
    if isinstance(default, dict):
        # a table such as [pretrain.model] (a preset and the fields that differ from it): `--set
        # pretrain.model.n_layers=6` changes one field of the default table; naming another preset starts afresh
        if value.get("preset", default.get("preset")) != default.get("preset"):
            return value
        return _deep_merge(default, value)
    if not dataclasses.is_dataclass(default):
        return value
    init_values = {k: v for k, v in dataclasses.asdict(default).items()
                   if k in {g.name for g in dataclasses.fields(default) if g.init}}
    return _deep_merge(init_values, value)


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def config_to_dict(obj: Any) -> dict:
    """A JSON/TOML-friendly dict of a config dataclass (nested ones included)."""
    return dataclasses.asdict(obj)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``--set a.b.c=value``. The value is read as a TOML literal when it is one
    (``3``, ``1e-3``, ``true``, ``[1, 2]``, ``"x"``), otherwise kept as a bare string."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set pretrain.steps=100")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".")]
    if not path or any(not p for p in path):
        raise ConfigError(f"--set {text!r}: bad key {key!r}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return path, value


def apply_override(tree: dict, path: list[str], value: Any) -> None:
    """Set ``tree[path[0]][path[1]]... = value``, creating tables as needed."""
    node = tree
    for part in path[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {'.'.join(path)}: {part!r} is a value, not a table")
        node = nxt
    node[path[-1]] = value


def load_toml(path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: recipe file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None

