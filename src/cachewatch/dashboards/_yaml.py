"""A small, deterministic YAML writer for the generated Prometheus, Grafana and Compose files.

PyYAML is not a runtime dependency, and the files we write only need mappings, lists,
strings, numbers (``.inf``/``-.inf``/``.nan`` for the special floats), booleans and ``None``. Mapping keys are written plain when they are
simple identifiers; every other string is written JSON-quoted (a JSON string literal is
a valid YAML double-quoted scalar) or, when it spans several lines, as a ``|-`` block
literal so that PromQL stays readable. ``promtool check rules`` and ``promtool check
config`` parse the output in the tests.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence

__all__ = ["dump_yaml"]

_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


def _key(key: object) -> str:
    if not isinstance(key, str):
        raise TypeError(f"YAML mapping keys must be strings, not {type(key).__name__}")
    return key if _PLAIN_KEY.match(key) else json.dumps(key)


def _scalar(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return repr(value)
    if isinstance(value, float):
        # YAML spells the special floats .inf, -.inf and .nan (``repr`` gives inf/nan: strings).
        if value != value:
            return ".nan"
        if value in (math.inf, -math.inf):
            return ".inf" if value > 0 else "-.inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    raise TypeError(f"cannot write {type(value).__name__} as a YAML scalar")


def _is_block_string(value: object) -> bool:
    return isinstance(value, str) and "\n" in value.strip("\n") and not value.startswith((" ", "\t"))


def _block(value: str, indent: int) -> list[str]:
    pad = " " * indent
    return [(pad + line).rstrip() for line in value.strip("\n").split("\n")]


def _lines(value: object, indent: int) -> list[str]:
    pad = " " * indent
    out: list[str] = []
    if isinstance(value, Mapping):
        for k, v in value.items():
            if isinstance(v, (Mapping, list, tuple)) and len(v) > 0:
                out.append(f"{pad}{_key(k)}:")
                out.extend(_lines(v, indent + 2))
            elif _is_block_string(v):
                out.append(f"{pad}{_key(k)}: |-")
                out.extend(_block(str(v), indent + 2))
            else:
                out.append(f"{pad}{_key(k)}: {_empty_or_scalar(v)}")
        return out
    if isinstance(value, Sequence) and not isinstance(value, str):
        for item in value:
            if isinstance(item, (Mapping, list, tuple)) and len(item) > 0:
                nested = _lines(item, indent + 2)
                # "- " takes the place of the first nested line's indentation.
                out.append(f"{pad}- {nested[0][indent + 2 :]}")
                out.extend(nested[1:])
            elif _is_block_string(item):
                out.append(f"{pad}- |-")
                out.extend(_block(str(item), indent + 2))
            else:
                out.append(f"{pad}- {_empty_or_scalar(item)}")
        return out
    return [pad + _scalar(value)]


def _empty_or_scalar(value: object) -> str:
    if isinstance(value, Mapping):
        return "{}"
    if isinstance(value, (list, tuple)):
        return "[]"
    return _scalar(value)


def dump_yaml(value: Mapping[str, object], header: str = "") -> str:
    """``value`` as block-style YAML, preceded by ``header`` as ``#`` comment lines."""
    comments = [f"# {line}".rstrip() for line in header.strip("\n").split("\n")] if header else []
    return "\n".join([*comments, *_lines(value, 0)]) + "\n"
