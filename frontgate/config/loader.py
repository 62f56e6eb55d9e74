"""Read, substitute, parse, merge and validate the config files (SPEC §2); report every problem at once.

The steps, each collecting problems rather than stopping at the first:

1. read each file; `${VAR}` / `${VAR:-default}` substitution on the raw text (envsubst.py);
2. parse as YAML 1.2 into a tree that keeps every value's file, line and column (locations.py);
3. merge the files in order (later files extend earlier ones);
4. validate plugin sections against the plugin models and the whole file against `GatewayConfig`,
   turning each pydantic error into a `ConfigProblem` at the offending value;
5. cross-reference checks that need the whole validated config (upstream names, duplicates).

Field paths name list items by index: `routes[2].match.paths[0]` (see locations.py for why).
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, ScalarNode, SequenceNode
from ruamel.yaml.reader import ReaderError

from frontgate.auth.checks import auth_problems
from frontgate.config.envsubst import ColumnMap, substitute
from frontgate.config.locations import (
    Loc,
    Node,
    Segment,
    find,
    format_path,
    merge,
    parse_path,
    to_plain,
    translate,
    walk,
)
from frontgate.config.schema import GatewayConfig
from frontgate.config.tls_checks import tls_problems
from frontgate.errors import ConfigError, ConfigProblem

_TAG = "tag:yaml.org,2002:"
_MERGE_TAG = _TAG + "merge"
_OTHER_YAML_VERSION = re.compile(r"^%YAML[ \t]+(?!1\.2\b)(\S+)", re.MULTILINE)


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config, the validated plugin configs, and where each value was written."""

    config: GatewayConfig
    global_plugins: dict[str, BaseModel]
    # One dict per route, in `config.routes` order; None means the route disables that global plugin.
    route_plugins: list[dict[str, BaseModel | None]]
    sources: list[str]
    tree: Node = field(repr=False, compare=False)

    def locate(self, field_path: str) -> tuple[str, int, int]:
        """(file, line, column) of a field path such as `routes[2].match.regex[0]`; for a path that is
        not in the file (a default value), the location of its nearest written parent."""
        loc = _locate(self.tree, parse_path(field_path))
        return loc.file, loc.line, loc.column

    def problem(self, field_path: str, message: str) -> ConfigProblem:
        """A problem found by a later semantic check, placed like the loader's own."""
        file, line, column = self.locate(field_path)
        return ConfigProblem(file, line, column, field_path, message)


def load_config(
    paths: list[str],
    environ: Mapping[str, str] | None = None,
    plugin_models: Mapping[str, type[BaseModel]] | None = None,
) -> LoadedConfig:
    """Load `paths` (later files extend earlier ones) and validate them; raise `ConfigError` listing
    every problem. `environ` defaults to `os.environ`. Without `plugin_models`, plugin sections are only
    checked to be mappings and the returned plugin dicts are empty."""
    if not paths:
        raise ConfigError([ConfigProblem("<config>", 0, 0, "", "no configuration file given")])
    env = os.environ if environ is None else environ
    files = [_load_file(path, env) for path in paths]
    problems = [problem for parsed in files for problem in parsed.problems]
    trees = [parsed.tree for parsed in files if parsed.tree is not None]
    if len(trees) < len(files):
        # A file we could not parse leaves the merged shape unknown: checking it would only add noise.
        raise ConfigError(_in_file_order(problems, paths))

    root = trees[0]
    for tree in trees[1:]:
        root = merge(root, tree)
    data: dict[str, Any] = to_plain(root)
    # Top-level `x-*` keys are the user's own (docker-compose style): a place for anchors to reuse.
    data = {key: value for key, value in data.items() if not key.startswith("x-")}
    later: list[ConfigProblem] = []
    global_plugins, route_plugins = _check_plugins(root, data, plugin_models, later)
    config = _validate_schema(root, data, later)
    later += _upstream_references(data, root)
    if config is not None:
        later += _cross_references(config, root)
    # An unset variable was replaced by nothing; whatever that breaks on the same line is the same problem.
    substituted = {line for parsed in files for line in parsed.env_lines}
    problems += [p for p in later if (p.file, p.line) not in substituted]
    if problems or config is None:
        raise ConfigError(_in_file_order(_distinct(problems), paths))
    return LoadedConfig(config, global_plugins, route_plugins, list(paths), root)


# --- one file -----------------------------------------------------------------------------------------


@dataclass(slots=True)
class _ParsedFile:
    tree: Node | None
    problems: list[ConfigProblem]
    env_lines: set[tuple[str, int]] = field(default_factory=set)


def _load_file(path: str, environ: Mapping[str, str]) -> _ParsedFile:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        return _ParsedFile(None, [ConfigProblem(path, 0, 0, "", f"cannot read file: {exc.strerror or exc}")])
    raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte order mark, as some Windows editors write
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        return _ParsedFile(None, [ConfigProblem(path, line, column, "", "the file is not valid UTF-8")])

    text, columns, env_problems = substitute(text, environ)
    problems = [ConfigProblem(path, p.line + 1, p.column + 1, "", p.message) for p in env_problems]
    parsed = _parse_yaml(path, text, columns)
    parsed.problems[:0] = problems
    parsed.env_lines = {(path, p.line) for p in problems}
    return parsed


def _parse_yaml(path: str, text: str, columns: ColumnMap) -> _ParsedFile:
    yaml = YAML(typ="rt")  # round-trip: YAML 1.2 resolution, so `on`/`off`/`yes`/`no` stay strings
    builder = _TreeBuilder(path, columns, yaml.constructor)
    directive = _OTHER_YAML_VERSION.search(text)
    if directive is not None:
        # ruamel would honour `%YAML 1.1` and read `on` as true; the config format is YAML 1.2 only.
        line = text.count("\n", 0, directive.start()) + 1
        message = f"frontgate reads YAML 1.2 only; remove the '%YAML {directive.group(1)}' directive"
        return _ParsedFile(None, [ConfigProblem(path, line, 1, "", message)])
    try:
        document = yaml.compose(StringIO(text))
    except MarkedYAMLError as exc:
        return _ParsedFile(None, [_syntax_problem(exc, builder)])
    except ReaderError as exc:  # a control character, e.g. a NUL pasted with a secret
        line = text.count("\n", 0, exc.position)
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1)
        loc = builder.loc(_Mark(line, column))
        char = f"U+{exc.character:04X}" if isinstance(exc.character, int) else repr(exc.character)
        message = f"invalid YAML: {exc.reason} ({char})"
        return _ParsedFile(None, [ConfigProblem(path, loc.line, loc.column, "", message)])
    except YAMLError as exc:
        return _ParsedFile(None, [ConfigProblem(path, 0, 0, "", f"invalid YAML: {exc}")])
    if document is None:  # an empty file (or only comments) adds nothing
        return _ParsedFile(Node({}, Loc(path, 1, 1)), [])
    tree = builder.build(document)
    if tree.mapping is None:
        where = tree.loc
        message = "the top level must be a mapping of settings (version:, server:, routes:, ...)"
        top = ConfigProblem(path, where.line, where.column, "", message)
        return _ParsedFile(None, [*builder.problems, top])
    return _ParsedFile(tree, builder.problems)


def _syntax_problem(exc: MarkedYAMLError, builder: _TreeBuilder) -> ConfigProblem:
    mark = exc.problem_mark or exc.context_mark
    loc = builder.loc(mark) if mark is not None else Loc(builder.file, 0, 0)
    message = f"invalid YAML: {exc.problem or exc.context or 'syntax error'}"
    if exc.problem and exc.context:
        context_mark = exc.context_mark
        started = f" started at line {context_mark.line + 1}" if context_mark is not None else ""
        message += f" ({exc.context}{started})"
    return ConfigProblem(loc.file, loc.line, loc.column, "", message)


@dataclass(frozen=True, slots=True)
class _Mark:
    line: int  # 0-based, like ruamel's marks
    column: int


class _TreeBuilder:
    """Turns ruamel's composed nodes into located `Node`s.

    Working on composed nodes rather than loaded CommentedMaps lets us report every duplicate key (the
    loader stops at the first) and keep the location of each key as well as of each value.
    """

    def __init__(self, file: str, columns: ColumnMap, constructor: Any) -> None:
        self.file = file
        self.problems: list[ConfigProblem] = []
        self._columns = columns
        self._constructor = constructor
        self._open: set[int] = set()  # collections being built, to catch an alias to its own ancestor

    def loc(self, mark: Any) -> Loc:
        return Loc(self.file, mark.line + 1, self._columns.source_column(mark.line, mark.column) + 1)

    def build(self, node: Any, key_loc: Loc | None = None) -> Node:
        loc = self.loc(node.start_mark)
        if isinstance(node, ScalarNode):
            return Node(self._scalar(node), loc, key_loc)
        if id(node) in self._open:
            self._problem(loc, "this alias refers to a block that contains it")
            return Node(None, loc, key_loc)
        self._open.add(id(node))
        try:
            self._check_tag(node, loc, (_TAG + "seq",) if isinstance(node, SequenceNode) else (_TAG + "map",))
            value = [self.build(item) for item in node.value] if isinstance(node, SequenceNode) else None
            return Node(self._mapping(node) if value is None else value, loc, key_loc)
        finally:
            self._open.discard(id(node))

    def _problem(self, loc: Loc, message: str) -> None:
        self.problems.append(ConfigProblem(loc.file, loc.line, loc.column, "", message))

    def _check_tag(self, node: Any, loc: Loc, allowed: tuple[str, ...]) -> None:
        if str(node.tag) not in allowed:
            self._problem(loc, f"unsupported YAML tag '{node.tag}'")

    def _mapping(self, node: MappingNode) -> dict[str, Node]:
        explicit: dict[str, Node] = {}
        merged: dict[str, Node] = {}
        for key_node, value_node in node.value:
            key_loc = self.loc(key_node.start_mark)
            if str(key_node.tag) == _MERGE_TAG:
                self._merge_into(merged, value_node)
            elif not isinstance(key_node, ScalarNode):
                self._problem(key_loc, "a key must be a plain name, not a list or a mapping")
            elif key_node.value in explicit:
                first = explicit[key_node.value].key_loc or key_loc
                self._problem(key_loc, f"duplicate key '{key_node.value}' (first at line {first.line})")
            else:
                # Keys are always text: `on:`, `200:` or `true:` name things here, they are not values.
                explicit[str(key_node.value)] = self.build(value_node, key_loc)
        # `<<: *base` supplies defaults; keys written in the mapping itself win.
        return {**{k: v for k, v in merged.items() if k not in explicit}, **explicit}

    def _merge_into(self, merged: dict[str, Node], value_node: Any) -> None:
        sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
        for source in sources:
            built = self.build(source)
            if built.mapping is None:
                self._problem(built.loc, "'<<' can only merge mappings (or a list of mappings)")
                continue
            for key, child in built.mapping.items():
                merged.setdefault(key, child)  # the earlier of several merged mappings wins

    def _scalar(self, node: ScalarNode) -> Any:
        tag = str(node.tag)
        if tag in (_TAG + "str", _TAG + "timestamp"):
            return str(node.value)  # no field takes a date, and `2024-01-01` as text is what users meant
        if tag == _TAG + "null":
            return None
        if tag == _TAG + "bool":
            return str(node.value).lower() == "true"
        if tag in (_TAG + "int", _TAG + "float"):
            return self._number(node, tag == _TAG + "int")
        self._problem(self.loc(node.start_mark), f"unsupported YAML tag '{tag}'")
        return str(node.value)

    def _number(self, node: ScalarNode, integer: bool) -> Any:
        # The constructor knows YAML's number spellings (0x1F, 1_000, .inf); we want plain types.
        try:
            number = self._constructor.construct_object(node, deep=True)
            return int(number) if integer else float(number)
        except (ValueError, YAMLError):  # only reachable through an explicit `!!int abc`
            self._problem(self.loc(node.start_mark), f"'{node.value}' is not a valid number")
            return str(node.value)


# --- validation ---------------------------------------------------------------------------------------


def _validate_schema(root: Node, data: dict[str, Any], problems: list[ConfigProblem]) -> GatewayConfig | None:
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        problems += translate(exc, root, [], GatewayConfig)
        return None


def _check_plugins(
    root: Node,
    data: dict[str, Any],
    models: Mapping[str, type[BaseModel]] | None,
    problems: list[ConfigProblem],
) -> tuple[dict[str, BaseModel], list[dict[str, BaseModel | None]]]:
    """Validate every plugin section; rewrite `data`'s sections in place into the mappings the schema
    expects (a bare scalar becomes `{"value": scalar}`, an empty entry `{}`)."""
    global_plugins: dict[str, BaseModel] = {}
    if isinstance(data.get("plugins"), dict):
        for name, config in _plugin_section(root, data["plugins"], ["plugins"], models, problems).items():
            if config is not None:
                global_plugins[name] = config
    route_plugins: list[dict[str, BaseModel | None]] = []
    routes = data.get("routes")
    for index, route in enumerate(routes if isinstance(routes, list) else []):
        section = route.get("plugins") if isinstance(route, dict) else None
        if not isinstance(section, dict):
            route_plugins.append({})
            continue
        path: list[Segment] = ["routes", index, "plugins"]
        route_plugins.append(_plugin_section(root, section, path, models, problems, on_route=True))
    return global_plugins, route_plugins


def _plugin_section(
    root: Node,
    section: dict[str, Any],
    path: list[Segment],
    models: Mapping[str, type[BaseModel]] | None,
    problems: list[ConfigProblem],
    *,
    on_route: bool = False,
) -> dict[str, BaseModel | None]:
    validated: dict[str, BaseModel | None] = {}
    for name, value in list(section.items()):
        segments = [*path, name]
        node = find(root, segments) or root
        if value is None:  # `request_id:` with nothing after it: on, with its defaults
            section[name] = value = {}
        if models is None:
            continue
        model = models.get(name)
        if model is None:
            problems.append(_at(node.key_loc or node.loc, segments, _unknown("plugin", name, list(models))))
        elif on_route and _disables(value):
            validated[name] = None  # turns a global plugin off for this route
        elif not isinstance(value, dict) and (isinstance(value, list) or "value" not in model.model_fields):
            problems.append(_at(node.loc, segments, f"plugin '{name}' expects a mapping of settings"))
            section[name] = {}  # reported here; keep the schema from reporting it again
        else:
            if not isinstance(value, dict):
                section[name] = value = {"value": value}  # `body_limit: 256KiB` is short for {value: 256KiB}
            try:
                validated[name] = model.model_validate(value)
            except ValidationError as exc:
                problems += translate(exc, node, segments, model)
    return validated


def _disables(value: Any) -> bool:
    # `is False`, not `== False`: `{enabled: 0}` is a mistake for the plugin's model to report.
    return isinstance(value, dict) and value.keys() == {"enabled"} and value["enabled"] is False


def _unknown(kind: str, name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f"unknown {kind} '{name}'" + (f"; did you mean '{close[0]}'?" if close else "")


# --- cross-references ---------------------------------------------------------------------------------


def _cross_references(config: GatewayConfig, root: Node) -> list[ConfigProblem]:
    return [
        *_duplicate_routes(config, root),
        *_listener_clashes(config, root),
        *(_problem_at(root, segments, message) for segments, message in auth_problems(config)),
        *(_problem_at(root, segments, message) for segments, message in tls_problems(config)),
    ]


def _upstream_references(data: dict[str, Any], root: Node) -> list[ConfigProblem]:
    """Routes naming undeclared upstreams. Works on the plain data, so it is reported even when the schema
    found other problems: a user fixes everything in one round."""
    upstreams = data.get("upstreams") or {}
    routes = data.get("routes")
    if not isinstance(upstreams, dict) or not isinstance(routes, list):
        return []
    declared = ", ".join(upstreams) or "none"
    problems: list[ConfigProblem] = []
    for index, route in enumerate(routes):
        to = route.get("to") if isinstance(route, dict) else None
        references: list[tuple[list[Segment], Any]]
        if isinstance(to, str):
            references = [(["routes", index, "to"], to)]
        elif isinstance(to, list):
            references = [(["routes", index, "to", i, "upstream"], split.get("upstream"))
                          for i, split in enumerate(to) if isinstance(split, dict)]
        else:
            references = []
        legs = route.get("aggregate") if isinstance(route, dict) else None
        if isinstance(legs, dict):
            references += [(["routes", index, "aggregate", key, "upstream"], leg.get("upstream"))
                           for key, leg in legs.items() if isinstance(leg, dict)]
        for segments, name in references:
            if isinstance(name, str) and name not in upstreams:
                message = f"unknown upstream '{name}' (declared: {declared})"
                problems.append(_problem_at(root, segments, message))
    return problems


def _duplicate_routes(config: GatewayConfig, root: Node) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    first: dict[str, int] = {}
    for index, route in enumerate(config.routes):
        if route.name not in first:
            first[route.name] = index
            continue
        where = _locate(root, ["routes", first[route.name], "name"])
        message = f"duplicate route name '{route.name}' (first used at {where.file}:{where.line})"
        problems.append(_problem_at(root, ["routes", index, "name"], message))
    return problems


@dataclass(frozen=True, slots=True)
class _Socket:
    host: str
    port: int
    family: int | None  # 4 or 6 for IP addresses, None for host names
    wildcard: bool

    @classmethod
    def of(cls, address: str) -> _Socket:
        host, _, port = address.rpartition(":")
        host = host.strip("[]").lower()
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return cls(host, int(port), None, False)
        return cls(ip.compressed, int(port), ip.version, ip.is_unspecified)

    def clashes(self, other: _Socket) -> bool:
        # Binding 0.0.0.0:8080 takes port 8080 on every IPv4 address, so 127.0.0.1:8080 clashes with it.
        same_family_wildcard = (
            self.family is not None and self.family == other.family and (self.wildcard or other.wildcard)
        )
        return self.port == other.port and (self.host == other.host or same_family_wildcard)


def _listener_clashes(config: GatewayConfig, root: Node) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    seen: list[tuple[_Socket, str, str]] = []  # socket, field path, address
    for index, listener in enumerate(config.server.listen):
        socket = _Socket.of(listener.address)
        clash = next((s for s in seen if s[0].clashes(socket)), None)
        if clash is not None and clash[0] == socket:
            message = f"duplicate listener address '{listener.address}' (also {clash[1]})"
        elif clash is not None:
            message = f"listener address '{listener.address}' clashes with {clash[1]} ('{clash[2]}')"
        if clash is not None:
            problems.append(_problem_at(root, ["server", "listen", index, "address"], message))
        seen.append((socket, f"server.listen[{index}]", listener.address))
    if config.admin is not None:
        admin = _Socket.of(config.admin.listen)
        clash = next((s for s in seen if s[0].clashes(admin)), None)
        if clash is not None:
            message = (
                f"the admin address '{config.admin.listen}' clashes with public listener {clash[1]} "
                f"('{clash[2]}'); the admin API must not share a public port"
            )
            problems.append(_problem_at(root, ["admin", "listen"], message))
    return problems


# --- locations ----------------------------------------------------------------------------------------


def _locate(root: Node, segments: Sequence[Segment]) -> Loc:
    *_, deepest = walk(root, segments)
    return deepest.loc


def _at(loc: Loc, segments: Sequence[Segment], message: str) -> ConfigProblem:
    return ConfigProblem(loc.file, loc.line, loc.column, format_path(segments), message)


def _problem_at(root: Node, segments: Sequence[Segment], message: str) -> ConfigProblem:
    return _at(_locate(root, segments), segments, message)


def _distinct(problems: list[ConfigProblem]) -> list[ConfigProblem]:
    # A mistake inside an anchored block fails at every alias too; one report at the anchor is enough.
    seen: set[tuple[str, int, int, str]] = set()
    out: list[ConfigProblem] = []
    for problem in problems:
        key = (problem.file, problem.line, problem.column, problem.message)
        if key not in seen:
            seen.add(key)
            out.append(problem)
    return out


def _in_file_order(problems: list[ConfigProblem], paths: Sequence[str]) -> list[ConfigProblem]:
    order = {path: index for index, path in reversed(list(enumerate(paths)))}
    return sorted(problems, key=lambda p: (order.get(p.file, len(paths)), p.line, p.column))
