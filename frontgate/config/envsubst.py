"""`${VAR}` / `${VAR:-default}` substitution on a config file's raw text, before YAML parsing.

Substitution happens on text so a secret can sit anywhere (inside a URL, a quoted string, a flow list),
but error messages must still point at the user's file. Values never add lines (a value with a line
break is refused), so line numbers are untouched; columns after a substitution shift, and
`ColumnMap` maps them back.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

# `$${` is the escape for a literal `${`; it must be tried before `${` so `$${X}` is never substituted.
_TOKEN = re.compile(r"\$\$\{|\$\{(?P<body>[^}\n]*)(?P<close>\})?")
# Line breaks exactly as ruamel counts them, so our line numbers are the parser's line numbers.
_BREAK = re.compile("[\n\r\x85\u2028\u2029]")
_LINE = re.compile("[^\n\r\x85\u2028\u2029]*(?:\r\n|[\n\r\x85\u2028\u2029])|[^\n\r\x85\u2028\u2029]+$")
_BODY = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>.*))?$", re.DOTALL)


@dataclass(frozen=True, slots=True)
class EnvProblem:
    line: int  # 0-based, as the YAML marks are
    column: int  # 0-based, in the original text
    message: str


@dataclass(slots=True)
class ColumnMap:
    """Maps a 0-based column in the substituted text back to the original text, per line."""

    # line -> [(out_start, out_end, src_start, src_end)], in column order
    _edits: dict[int, list[tuple[int, int, int, int]]] = field(default_factory=dict)

    def add(self, line: int, out_start: int, out_end: int, src_start: int, src_end: int) -> None:
        self._edits.setdefault(line, []).append((out_start, out_end, src_start, src_end))

    def source_column(self, line: int, column: int) -> int:
        shift = 0
        for out_start, out_end, src_start, src_end in self._edits.get(line, ()):
            if column < out_start:
                break
            if column < out_end:
                # Inside a substituted value: the `${` is what the user wrote there.
                return src_start
            shift = src_end - out_end
        return column + shift


def substitute(text: str, environ: Mapping[str, str]) -> tuple[str, ColumnMap, list[EnvProblem]]:
    """Return the substituted text, the column map and the problems (unset variables, bad syntax).

    Comments are left alone, so a commented-out `${OLD_VAR}` is not an error. An unset
    variable becomes an empty string so parsing can go on and find the file's other problems.
    """
    columns = ColumnMap()
    problems: list[EnvProblem] = []
    out: list[str] = []
    for number, line in enumerate(_LINE.findall(text)):
        code_end = _comment_start(line)
        out.append(_substitute_line(line[:code_end], number, environ, columns, problems) + line[code_end:])
    return "".join(out), columns, problems


def _comment_start(line: str) -> int:
    """Where a `#` comment starts on this line (its length when there is none).

    A `#` starts a comment at the line start or after a blank, outside quotes. A quote only opens a
    quoted scalar where a value can start, so the apostrophe in `note: don't # ${X}` is not one.
    A quoted scalar spanning lines is not followed: that is rare in a config, and the worst outcome is
    substituting inside a comment.
    """
    quote = ""
    previous = ""  # last non-blank character outside quotes
    index = 0
    while index < len(line):
        char = line[index]
        if quote:
            if char == "\\" and quote == '"':
                index += 1
            elif char == quote:
                if quote == "'" and line[index + 1 : index + 2] == "'":
                    index += 1  # '' is an escaped quote inside '...'
                else:
                    quote = ""
                    previous = char
        elif char == "#" and (index == 0 or line[index - 1] in " \t"):
            return index
        elif char in "'\"" and previous in ("", ":", "-", "[", "{", ",", "?"):
            quote = char
        elif not char.isspace():
            previous = char
        index += 1
    return len(line)


def _substitute_line(
    line: str, number: int, environ: Mapping[str, str], columns: ColumnMap, problems: list[EnvProblem]
) -> str:
    parts: list[str] = []
    src_pos = 0
    out_len = 0
    for match in _TOKEN.finditer(line):
        start, end = match.span()
        parts.append(line[src_pos:start])
        out_len += start - src_pos
        value = _value_of(match, number, environ, problems)
        parts.append(value)
        columns.add(number, out_len, out_len + len(value), start, end)
        out_len += len(value)
        src_pos = end
    parts.append(line[src_pos:])
    return "".join(parts)


def _value_of(match: re.Match[str], line: int, environ: Mapping[str, str], problems: list[EnvProblem]) -> str:
    if match.group(0) == "$${":
        return "${"
    column = match.start()
    body = match.group("body")
    if match.group("close") is None:
        problems.append(EnvProblem(line, column, "unterminated '${': expected ${NAME} or ${NAME:-default}"))
        return ""
    parsed = _BODY.match(body)
    if parsed is None:
        problems.append(
            EnvProblem(
                line,
                column,
                f"invalid substitution '${{{body}}}': expected ${{NAME}} or "
                "${NAME:-default} (write $${ for a literal ${)",
            )
        )
        return ""
    name, default = parsed.group("name"), parsed.group("default")
    if default is not None and "${" in default:
        problems.append(EnvProblem(line, column, "a default cannot contain another substitution"))
        return ""
    value = environ.get(name)
    if not value and default is not None:
        # Shell semantics of `:-`: the default also applies when the variable is set but empty.
        return default
    if value is None:
        problems.append(
            EnvProblem(
                line, column, f"environment variable {name} is not set (use ${{{name}:-default}} to give a default)"
            )
        )
        return ""
    if _BREAK.search(value):
        problems.append(
            EnvProblem(
                line,
                column,
                f"environment variable {name} contains a line break; "
                "put multi-line values in a file and reference its path",
            )
        )
        return ""
    return value
