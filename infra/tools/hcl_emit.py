"""A small, deterministic HCL writer for the generated ``*.gen.tf`` files (terraform-fmt style)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
INDENT = "  "


@dataclass(frozen=True)
class Raw:
    """An HCL expression written as is (``var.replicas``, ``jetstream_stream.X.id``)."""

    expr: str


@dataclass
class Block:
    type: str
    labels: tuple[str, ...] = ()
    attrs: list[tuple[str, Any]] = field(default_factory=list)
    blocks: list[Block] = field(default_factory=list)
    comment: str = ""


def string(s: str) -> str:
    # JSON string escapes are valid HCL; template sequences must be escaped.
    return json.dumps(s, ensure_ascii=False).replace("${", "$${").replace("%{", "%%{")


def key(k: str) -> str:
    return k if _IDENT.match(k) else string(k)


def value(v: Any, level: int = 0) -> str:
    if isinstance(v, Raw):
        return v.expr
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if v.is_integer():
            return str(int(v))
        # the shortest round-trip form (14.29, not 14.289999999999999), in plain decimal notation:
        # not every HCL parser (e.g. checkov's) reads exponents
        short = repr(v)
        return short if "e" not in short else format(v, ".15f").rstrip("0")
    if isinstance(v, str):
        return string(v)
    if isinstance(v, (list, tuple)):
        items = [value(x, level + 1) for x in v]
        one_line = "[" + ", ".join(items) + "]"
        if all("\n" not in i for i in items) and len(one_line) + level * 2 <= 100:
            return one_line
        pad = INDENT * (level + 1)
        return "[\n" + "".join(f"{pad}{i},\n" for i in items) + INDENT * level + "]"
    if isinstance(v, dict):
        if not v:
            return "{}"
        lines = _attr_lines([(key(k), x) for k, x in v.items()], level + 1)
        return "{\n" + "".join(lines) + INDENT * level + "}"
    raise TypeError(f"cannot write {type(v).__name__} as HCL")


def _attr_lines(pairs: list[tuple[str, Any]], level: int) -> list[str]:
    """``key = value`` lines; consecutive single-line attributes get their ``=`` aligned."""
    rendered = [(k, value(v, level)) for k, v in pairs]
    out: list[str] = []
    pad = INDENT * level
    i = 0
    while i < len(rendered):
        j = i
        while j < len(rendered) and "\n" not in rendered[j][1]:
            j += 1
        if j == i:  # a multi-line value stands alone
            k, v = rendered[i]
            out.append(f"{pad}{k} = {v}\n")
            i += 1
            continue
        width = max(len(k) for k, _ in rendered[i:j])
        for k, v in rendered[i:j]:
            out.append(f"{pad}{k.ljust(width)} = {v}\n")
        i = j
    return out


def block(b: Block, level: int = 0) -> str:
    pad = INDENT * level
    head = " ".join([b.type, *(string(label) for label in b.labels)])
    out = ""
    if b.comment:
        out += "".join(f"{pad}# {line}".rstrip() + "\n" for line in b.comment.splitlines())
    out += f"{pad}{head} {{\n"
    out += "".join(_attr_lines(b.attrs, level + 1))
    for nb in b.blocks:
        if b.attrs or nb is not b.blocks[0]:
            out += "\n"
        out += block(nb, level + 1)
    out += f"{pad}}}\n"
    return out


def document(header: str, blocks: list[Block]) -> str:
    out = "".join(f"# {line}".rstrip() + "\n" for line in header.strip().splitlines())
    for b in blocks:
        out += "\n" + block(b)
    return out
