"""The config as a tree that remembers where every value was written, field paths into it, and pydantic
errors turned into problems at those places.

Field paths are what users see in error messages: `routes[2].match.paths[0]`, `upstreams.orders-v1.pool`.
List items are always named by their index in the merged list (never by a `name` key), so a path works
for every list and for items that have no name or a duplicate one; the `FILE:LINE:COL` printed with
it points at the item in its file. Mapping keys that are not plain words are quoted: `headers["a.b"]`.
"""

from __future__ import annotations

import difflib
import json
import re
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Annotated, Any, TypeAlias, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from frontgate.errors import ConfigProblem

Segment: TypeAlias = str | int
"""A mapping key (always a string: the loader reads every key as text) or a list index."""

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_\-]+")
_SEGMENT = re.compile(r"""\.?(?P<key>[A-Za-z0-9_\-]+)|\[(?P<index>\d+)\]|\[(?P<quoted>"(?:[^"\\]|\\.)*")\]""")


@dataclass(frozen=True, slots=True)
class Loc:
    file: str
    line: int  # 1-based; 0 when unknown
    column: int  # 1-based; 0 when unknown


@dataclass(frozen=True, slots=True)
class Node:
    """A parsed value with its location.

    `value` is `dict[str, Node]`, `list[Node]` or a plain scalar. `key_loc` is where the key naming this
    value was written (None for list items and the root), which is where "unknown field" points.
    """

    value: Any
    loc: Loc
    key_loc: Loc | None = None

    @property
    def mapping(self) -> dict[str, Node] | None:
        return self.value if isinstance(self.value, dict) else None

    @property
    def items(self) -> list[Node] | None:
        return self.value if isinstance(self.value, list) else None


def format_path(segments: Sequence[Segment]) -> str:
    out: list[str] = []
    for segment in segments:
        if isinstance(segment, int):
            out.append(f"[{segment}]")
        elif _PLAIN_KEY.fullmatch(segment):
            out.append(f".{segment}" if out else segment)
        else:
            out.append(f"[{json.dumps(segment)}]")
    return "".join(out)


def parse_path(path: str) -> list[Segment]:
    """The inverse of `format_path`; raises ValueError on a malformed path (a programming error)."""
    segments: list[Segment] = []
    pos = 0
    while pos < len(path):
        match = _SEGMENT.match(path, pos)
        if match is None or (match.group("key") and pos > 0 and not match.group(0).startswith(".")):
            raise ValueError(f"malformed field path {path!r} at {pos}")
        if match.group("key") is not None:
            segments.append(match.group("key"))
        elif match.group("index") is not None:
            segments.append(int(match.group("index")))
        else:
            segments.append(json.loads(match.group("quoted")))
        pos = match.end()
    return segments


def walk(root: Node, segments: Sequence[Segment]) -> Iterator[Node]:
    """Yield the nodes along `segments`, starting with `root`, as far as the tree goes."""
    node = root
    yield node
    for segment in segments:
        child: Node | None = None
        if isinstance(segment, str) and node.mapping is not None:
            child = node.mapping.get(segment)
        elif isinstance(segment, int) and node.items is not None and 0 <= segment < len(node.items):
            child = node.items[segment]
        if child is None:
            return
        node = child
        yield node


def find(root: Node, segments: Sequence[Segment]) -> Node | None:
    nodes = list(walk(root, segments))
    return nodes[-1] if len(nodes) == len(segments) + 1 else None


def to_plain(node: Node) -> Any:
    """Plain dicts, lists and scalars, as pydantic wants them."""
    if node.mapping is not None:
        return {key: to_plain(child) for key, child in node.mapping.items()}
    if node.items is not None:
        return [to_plain(child) for child in node.items]
    return node.value


def merge(base: Node, over: Node) -> Node:
    """`over` (a later file) extends `base`: mappings merge recursively, lists of named mappings merge by
    name, anything else is replaced. Each value keeps the location of the file it came from."""
    base_map, over_map = base.mapping, over.mapping
    if base_map is not None and over_map is not None:
        merged = dict(base_map)
        for key, child in over_map.items():
            merged[key] = merge(merged[key], child) if key in merged else child
        return Node(merged, base.loc, base.key_loc)
    base_items, over_items = base.items, over.items
    if base_items is not None and over_items is not None and _named(base_items) and _named(over_items):
        return Node(_merge_by_name(base_items, over_items), base.loc, base.key_loc)
    return over


def _name_of(node: Node) -> str | None:
    mapping = node.mapping
    if mapping is None or "name" not in mapping:
        return None
    name = mapping["name"].value
    return name if isinstance(name, str) else None


def _named(items: list[Node]) -> bool:
    # An empty list in a later file is a deliberate "clear this list", so it never merges by name.
    return bool(items) and all(_name_of(item) is not None for item in items)


def _merge_by_name(base: list[Node], over: list[Node]) -> list[Node]:
    merged = list(base)
    position: dict[str, int] = {}
    for index, item in enumerate(base):
        position.setdefault(_name_of(item) or "", index)
    for item in over:
        name = _name_of(item) or ""
        # Only names from earlier files merge; a name repeated inside one file stays a duplicate, so
        # the duplicate-name check still sees it.
        if name in position:
            merged[position[name]] = merge(merged[position[name]], item)
        else:
            merged.append(item)
    return merged


# --- pydantic errors -> problems at locations ---------------------------------------------------------

# Errors that only say "wrong kind of value". In a union, a member's specific complaint ("workers must be
# at least 1") says more than the others' "expected 'auto'", so these lose to it.
_KIND_MESSAGES: dict[str, str] = {
    "string_type": "expected a string",
    "int_type": "expected a whole number",
    "int_parsing": "expected a whole number",
    "int_from_float": "expected a whole number",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "list_type": "expected a list",
    "dict_type": "expected a mapping",
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
    "none_required": "expected null",
}
_KIND_ERRORS = {*_KIND_MESSAGES, "literal_error"}
_BOUNDS = {
    "greater_than": ("gt", "greater than"),
    "greater_than_equal": ("ge", "at least"),
    "less_than": ("lt", "less than"),
    "less_than_equal": ("le", "at most"),
}
_PYTHON_LITERAL = re.compile(r"(?<!')\b(True|False|None)\b(?!')")
_YAML_WORDS = {"True": "true", "False": "false", "None": "null"}


@dataclass(frozen=True, slots=True)
class _Error:
    path: list[Segment]  # pydantic's loc without union member names, relative to the validated root
    tags: list[tuple[int, str]]  # union member names still to resolve, with the path depth they sit at
    kind: str
    message: str
    input: Any
    node: Node | None  # the offending value; None for a missing field
    parent: Node  # the mapping (or list) that holds it


def translate(
    exc: ValidationError, root: Node, prefix: Sequence[Segment], model: type[BaseModel]
) -> list[ConfigProblem]:
    """One problem per real mistake in `exc`, raised by validating `root` (found at `prefix`) as `model`."""
    problems: list[ConfigProblem] = []
    for error in _select([_clean(error, root) for error in exc.errors(include_url=False)]):
        problem = _to_problem(error, prefix, model)
        if problem not in problems:
            problems.append(problem)
    return problems


def _child(node: Node, part: str | int) -> Node | None:
    if isinstance(part, str) and node.mapping is not None:
        return node.mapping.get(part)
    if isinstance(part, int) and node.items is not None and 0 <= part < len(node.items):
        return node.items[part]
    return None


def _clean(error: ErrorDetails, root: Node) -> _Error:
    path: list[Segment] = []
    tags: list[tuple[int, str]] = []
    node: Node | None = root
    parent = root
    loc = error["loc"]
    for index, part in enumerate(loc):
        child = _child(node, part) if node is not None else None
        if child is not None and node is not None:
            parent, node = node, child
            path.append(part)
        elif isinstance(part, str) and not (error["type"] == "missing" and index == len(loc) - 1):
            tags.append((len(path), part))  # a union member's name, e.g. 'list[WeightedUpstream]'
        else:
            parent = node or parent
            node = None
            path.append(part)
    return _Error(path, tags, error["type"], _describe(error), error.get("input"), node, parent)


def _select(errors: list[_Error]) -> list[_Error]:
    """Pydantic reports a failed union once per member; keep the member the user evidently meant."""
    chosen = [error for error in errors if not error.tags]
    unions: dict[tuple[Segment, ...], dict[str, list[_Error]]] = {}
    for error in errors:
        if error.tags:
            depth, member = error.tags[0]
            members = unions.setdefault(tuple(error.path[:depth]), {})
            members.setdefault(member, []).append(replace(error, tags=error.tags[1:]))
    for at, alternatives in unions.items():
        chosen += _pick_member(len(at), alternatives)
    return chosen


def _pick_member(depth: int, members: dict[str, list[_Error]]) -> list[_Error]:
    reach = {member: max(len(error.path) for error in errors) for member, errors in members.items()}
    deepest = max(reach.values())
    if deepest > depth:
        # A member that got inside the value matched its shape: `to: [{upstream: a}]` is meant as a list.
        return _select(next(members[m] for m, r in reach.items() if r == deepest))
    specific = [errors for errors in members.values() if any(e.kind not in _KIND_ERRORS for e in errors)]
    if specific:
        return _select(specific[0])
    # Every member rejects the kind of value: say everything that would have been accepted.
    flat = [error for errors in members.values() for error in _select(errors)]
    messages = list(dict.fromkeys(error.message for error in flat))
    if all(m.startswith("expected ") for m in messages):
        message = "expected " + " or ".join(m.removeprefix("expected ") for m in messages)
    else:
        message = "; or ".join(messages)
    return [replace(flat[0], message=message)]


def _describe(error: ErrorDetails) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind in _KIND_MESSAGES:
        return _KIND_MESSAGES[kind]
    if kind == "missing":
        return "field required"
    if kind == "literal_error":
        return "expected " + _PYTHON_LITERAL.sub(lambda m: _YAML_WORDS[m.group(1)], str(ctx["expected"]))
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])  # the schema's own words, without pydantic's "Value error, " prefix
    if kind in _BOUNDS:
        key, words = _BOUNDS[kind]
        return f"must be {words} {ctx[key]}"
    if kind == "too_short":
        count = ctx["min_length"]
        return f"needs at least {count} item{'s' if count != 1 else ''}"
    if kind == "too_long":
        count = ctx["max_length"]
        return f"allows at most {count} item{'s' if count != 1 else ''}"
    if kind == "string_too_short":
        count = ctx["min_length"]
        return "must not be empty" if count == 1 else f"needs at least {count} characters"
    message = error["msg"]
    return message[:1].lower() + message[1:]


def _show(value: Any) -> str:
    """A value as the user wrote it in YAML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:37] + "...")
    return repr(value)


def _to_problem(error: _Error, prefix: Sequence[Segment], model: type[BaseModel]) -> ConfigProblem:
    node = error.node
    message = error.message
    if error.kind == "extra_forbidden" and node is not None:
        loc = node.key_loc or node.loc
        message = _unknown_field(error, model)
    elif error.kind == "missing" or node is None:
        loc = error.parent.loc
    else:
        loc = node.loc
    if error.kind in _KIND_ERRORS and not isinstance(error.input, dict | list):
        message += f" (got {_show(error.input)})"
    return ConfigProblem(loc.file, loc.line, loc.column, format_path([*prefix, *error.path]), message)


def _unknown_field(error: _Error, model: type[BaseModel]) -> str:
    name = str(error.path[-1])
    present = error.parent.mapping or {}
    fields = _field_names(model, error.path[:-1])
    # A field already written is not what a typo meant: `timeout` and `tiemout` side by side.
    close = difflib.get_close_matches(name, [f for f in fields if f not in present], n=1, cutoff=0.6)
    if close:
        return f"unknown field '{name}'; did you mean '{close[0]}'?"
    if fields:
        return f"unknown field '{name}' (expected one of: {', '.join(fields)})"
    return f"unknown field '{name}'"


def _field_names(model: type[BaseModel], path: Sequence[Segment]) -> list[str]:
    """The fields a mapping at `path` may have, found by following the model's annotations."""
    current: list[Any] = [model]
    for segment in path:
        following: list[Any] = []
        for tp in _members(current):
            origin, args = get_origin(tp), get_args(tp)
            if _is_model(tp) and isinstance(segment, str) and segment in tp.model_fields:
                following.append(tp.model_fields[segment].annotation)
            elif origin is dict and isinstance(segment, str) and len(args) == 2:
                following.append(args[1])
            elif origin is list and isinstance(segment, int) and args:
                following.append(args[0])
        current = following
    names = [name for tp in _members(current) if _is_model(tp) for name in tp.model_fields]
    return list(dict.fromkeys(names))


def _members(annotations: list[Any]) -> list[Any]:
    """Flatten `Annotated[...]`, `X | Y` and `Optional[X]` into the plain types they allow."""
    out: list[Any] = []
    for tp in annotations:
        origin = get_origin(tp)
        if origin is Annotated:
            out += _members([get_args(tp)[0]])
        elif origin is Union or origin is types.UnionType:
            out += _members(list(get_args(tp)))
        else:
            out.append(tp)
    return out


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)
