"""grpc_transcode: REST and JSON in front of a gRPC service, from its descriptor set.

    grpc_transcode: {descriptor: protos/payments.pb, service: payments.v1.Payments}
    # the rules come from the methods' google.api.http options, and/or a `methods:` map:
    grpc_transcode: {descriptor: ..., service: ..., methods: {"GET /v1/payments/{id}": Get,
                                                              "POST /v1/payments": Create}}

`descriptor` is a FileDescriptorSet (`protoc --include_imports --descriptor_set_out=payments.pb ...`), read when
the config loads. Each rule maps an HTTP method and path template to a unary method of `service`:
- path variables (`{id}`, `{book.name}`, `{name=shelves/*/books/*}`) fill the fields they name;
- the body fills the request (`body: "*"`, the default of the `methods:` map for POST, PUT and PATCH), one
  field of it (`body: "book"`), or nothing (then the query string fills the remaining fields, repeated
  parameters a repeated field);
- the gRPC request goes to the route's upstream (`protocol: grpc`), and the answer comes back as JSON
  (proto3's JSON mapping, lowerCamelCase names).

A gRPC error becomes its HTTP status (NOT_FOUND 404, INVALID_ARGUMENT 400, UNAUTHENTICATED 401,
PERMISSION_DENIED 403, ALREADY_EXISTS 409, RESOURCE_EXHAUSTED 429, UNIMPLEMENTED 501, UNAVAILABLE 503,
DEADLINE_EXCEEDED 504, others 500) with the gateway's JSON error, the code's name as `error`. No rule
matching the request: 404. A body or parameter that does not fit the request message: 400.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message
from pydantic import Field, model_validator

from frontgate.config.schema import Route, Size
from frontgate.errors import BadGateway, NotFound
from frontgate.pipeline.context import RequestContext, ResponseHead
from frontgate.plugins.base import BuildContext, Plugin, PluginConfig
from frontgate.plugins.shared import BodyRefused, read_bytes_file
from frontgate.protocol.grpc_status import status_name

_HTTP_RULE = 72295728  # google.api.http, an extension of MethodOptions
_RULE_VERBS = {2: "GET", 3: "PUT", 4: "POST", 5: "DELETE", 6: "PATCH"}
_BODY, _ADDITIONAL = 7, 11
_HTTP_STATUS = {0: 200, 1: 499, 3: 400, 4: 504, 5: 404, 6: 409, 7: 403, 8: 429, 9: 400, 10: 409, 11: 400,
                12: 501, 14: 503, 16: 401}
_STATE = "grpc_transcode"  # ctx.state: the method's response class, for the answer


class TranscodeRefused(BodyRefused):
    code = "invalid_request"
    message = "The request does not fit the service's request message."


# --- reading the descriptor set ------------------------------------------------------------------------


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


def _fields(data: bytes) -> list[tuple[int, bytes | int]]:
    """A protobuf message's fields as (number, value) in wire order: enough to read an HttpRule."""
    out: list[tuple[int, bytes | int]] = []
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _varint(data, at)
            out.append((number, value))
        elif wire == 2:
            length, at = _varint(data, at)
            out.append((number, data[at:at + length]))
            at += length
        elif wire == 1:
            at += 8
        elif wire == 5:
            at += 4
        else:
            raise ValueError("unsupported protobuf wire type in a method's options")
    return out


def http_rules(options: bytes) -> list[tuple[str, str, str]]:
    """(verb, path template, body) of a method's google.api.http option and its additional bindings."""
    rules: list[tuple[str, str, str]] = []

    def read(rule: bytes) -> None:
        verb = path = body = ""
        for number, value in _fields(rule):
            if number in _RULE_VERBS and isinstance(value, bytes):
                verb, path = _RULE_VERBS[number], value.decode()
            elif number == _BODY and isinstance(value, bytes):
                body = value.decode()
            elif number == _ADDITIONAL and isinstance(value, bytes):
                read(value)
        if verb:
            rules.insert(0, (verb, path, body))

    for number, value in _fields(options):
        if number == _HTTP_RULE and isinstance(value, bytes):
            read(value)
    return rules


def _template(path: str) -> tuple[re.Pattern[str], list[str]]:
    """A path template as a regex, and the field paths its variables fill."""
    names: list[str] = []
    pattern = ""
    for literal, variable in re.findall(r"([^{]*)(?:\{([^}]*)\})?", path):
        pattern += re.escape(literal)
        if variable:
            name, _, segments = variable.partition("=")
            names.append(name.strip())
            if not segments or segments == "*":
                pattern += "([^/]+)"
            else:  # `a/*/b/**`: `*` one segment, `**` the rest
                pattern += "(" + "/".join("[^/]+" if s == "*" else ".+" if s == "**" else re.escape(s)
                                          for s in segments.split("/")) + ")"
    return re.compile(pattern + "$"), names


@dataclass(frozen=True)
class _Rule:
    verb: str
    pattern: re.Pattern[str]
    variables: list[str]
    body: str  # "*", a field name, or "" (no body: the query string fills the rest)
    grpc_path: str  # /package.Service/Method
    request: type[Message]
    response: type[Message]


def load_rules(descriptor_file: str, service_name: str, methods: dict[str, str]) -> list[_Rule]:
    data = read_bytes_file(descriptor_file, "descriptor")
    try:
        files = descriptor_pb2.FileDescriptorSet.FromString(data)
    except DecodeError as exc:
        raise ValueError(f"descriptor {descriptor_file!r} is not a FileDescriptorSet: {exc}") from exc
    pool = descriptor_pool.DescriptorPool()
    service_proto = None
    for file in files.file:
        pool.Add(file)
        for service in file.service:
            full = f"{file.package}.{service.name}" if file.package else service.name
            if full == service_name:
                service_proto = service
    if service_proto is None:
        raise ValueError(f"no service {service_name!r} in {descriptor_file!r}")
    service = pool.FindServiceByName(service_name)
    found: list[tuple[str, str, str, str]] = []  # verb, template, body, method name
    for method in service_proto.method:
        for verb, path, body in http_rules(method.options.SerializeToString()):
            found.append((verb, path, body, method.name))
    for rule, name in methods.items():
        verb, _, path = rule.strip().partition(" ")
        if verb.upper() not in ("GET", "PUT", "POST", "DELETE", "PATCH") or not path.strip().startswith("/"):
            raise ValueError(f"methods: {rule!r} is not 'VERB /path/{{field}}'")
        found.append((verb.upper(), path.strip(), "*" if verb.upper() in ("POST", "PUT", "PATCH") else "", name))
    rules = []
    for verb, path, body, name in found:
        method = service.methods_by_name.get(name)
        if method is None:
            raise ValueError(f"{service_name} has no method {name!r}")
        if method.client_streaming or method.server_streaming:
            raise ValueError(f"{service_name}.{name} streams: only unary methods are transcoded")
        pattern, variables = _template(path)
        rules.append(_Rule(verb, pattern, variables, body, f"/{service_name}/{name}",
                           message_factory.GetMessageClass(method.input_type),
                           message_factory.GetMessageClass(method.output_type)))
    if not rules:
        raise ValueError(f"{service_name} has no google.api.http rule, and `methods` maps none")
    return rules


class GrpcTranscodeConfig(PluginConfig):
    descriptor: str = Field(description="A FileDescriptorSet (protoc --include_imports --descriptor_set_out).")
    service: str = Field(description="The full name of the service: package.Service.")
    methods: dict[str, str] = Field(default_factory=dict, description="'VERB /path/{field}' -> method name, "
                                    "beside (or instead of) the methods' google.api.http options.")
    body_limit: Size = Field(1024 * 1024, gt=0, description="Largest JSON body, and largest answer, transcoded.")

    @model_validator(mode="after")
    def _rules(self) -> GrpcTranscodeConfig:
        load_rules(self.descriptor, self.service, self.methods)  # every problem at config time
        return self


# --- the request and the answer -------------------------------------------------------------------------


def _set_path(target: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        target = target.setdefault(part, {})
    target[last] = value


def _query_fields(query: bytes, descriptor: Descriptor) -> dict[str, Any]:
    """The query string as request fields: `a.b=1`, repeated parameters for a repeated field."""
    fields: dict[str, Any] = {}
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        field = _field(descriptor, name)
        if field is not None and _repeated(field):
            *parents, last = name.split(".")
            holder = fields
            for part in parents:
                holder = holder.setdefault(part, {})
            holder.setdefault(last, []).append(value)
        else:
            _set_path(fields, name, value)
    return fields


def _repeated(field: FieldDescriptor) -> bool:
    if hasattr(field, "is_repeated"):  # protobuf 6.30+ (7 dropped `label`)
        return bool(field.is_repeated)
    return bool(field.label == FieldDescriptor.LABEL_REPEATED)


def _field(descriptor: Descriptor, path: str) -> FieldDescriptor | None:
    field = None
    for part in path.split("."):
        field = descriptor.fields_by_name.get(part) or next(
            (f for f in descriptor.fields if f.json_name == part), None)
        if field is None:
            return None
        if field.message_type is not None:
            descriptor = field.message_type
    return field


class GrpcTranscodePlugin(Plugin):
    name = "grpc_transcode"
    priority = 450  # after auth, limits and body checks; before the cache
    Config = GrpcTranscodeConfig
    config: GrpcTranscodeConfig

    def __init__(self, config: GrpcTranscodeConfig, route: Route | None, build: BuildContext) -> None:
        super().__init__(config, route, build)
        self._rules = load_rules(config.descriptor, config.service, config.methods)
        self.body_limit = config.body_limit

    def on_body(self, ctx: RequestContext, body: bytes) -> bytes:
        path = unquote(ctx.upstream_path)
        rule = match = None
        for candidate in self._rules:
            if candidate.verb == ctx.method:
                match = candidate.pattern.match(path)
                if match is not None:
                    rule = candidate
                    break
        if rule is None or match is None:
            raise NotFound("No method of this service answers this request.")
        fields: dict[str, Any] = {}
        try:
            if rule.body == "*":
                fields = json.loads(body) if body else {}
            elif rule.body:
                _set_path(fields, rule.body, json.loads(body) if body else {})
            else:
                fields = _query_fields(ctx.query, rule.request.DESCRIPTOR)
            if not isinstance(fields, dict):
                raise TranscodeRefused("The body must be a JSON object.")
            for name, value in zip(rule.variables, match.groups(), strict=True):
                _set_path(fields, name, value)
            message = json_format.ParseDict(fields, rule.request())
        except (ValueError, json_format.ParseError) as error:
            raise TranscodeRefused(f"The request does not fit {rule.request.DESCRIPTOR.name}: {error}") from None
        except RecursionError:
            raise TranscodeRefused("The request body is nested too deeply.") from None
        data: bytes = message.SerializeToString()
        ctx.upstream_method = "POST"  # the client's method stays in the logs and metrics
        ctx.upstream_path, ctx.query = rule.grpc_path, b""
        ctx.remove_header(b"accept-encoding")
        ctx.set_header(b"content-type", b"application/grpc")
        ctx.set_header(b"te", b"trailers")
        if ctx.state is None:
            ctx.state = {}
        ctx.state[_STATE] = rule.response
        return b"\x00" + len(data).to_bytes(4, "big") + data

    def on_response_body(self, ctx: RequestContext, head: ResponseHead, body: bytes) -> bytes:
        response_class = ctx.state.get(_STATE) if ctx.state is not None else None
        if response_class is None:
            return body
        fields = dict(head.headers)
        status_field = fields.get(b"grpc-status")
        # grpc-status is a trailer, or a header in a trailers-only answer: a held response has both as fields
        code = int(status_field) if status_field is not None and status_field.isdigit() else (
            0 if head.status == 200 and body else 2)
        for name in (b"grpc-status", b"grpc-message", b"grpc-encoding", b"grpc-accept-encoding"):
            head.remove(name)
        head.set(b"content-type", b"application/json")
        if code != 0:
            head.status = _HTTP_STATUS.get(code, 500)
            message = unquote(fields.get(b"grpc-message", b"").decode("latin-1")) or status_name(code)
            return json.dumps({"error": status_name(code).lower(), "message": message,
                               "request_id": ctx.request_id}, separators=(",", ":")).encode()
        if len(body) < 5 or body[0] != 0 or int.from_bytes(body[1:5], "big") != len(body) - 5:
            raise BadGateway("The gRPC service gave an answer that is not one uncompressed message.")
        try:
            answer = response_class.FromString(body[5:])
        except DecodeError:
            raise BadGateway("The gRPC service gave an answer that does not decode.") from None
        head.status = 200
        return json.dumps(json_format.MessageToDict(answer), separators=(",", ":")).encode()
