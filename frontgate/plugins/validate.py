"""validate: refuse request bodies that do not match a JSON Schema, before they reach the upstream.

    validate: {json_schema: schemas/payment.json}       # a file (relative to the working directory)
    validate: {json_schema: {type: object, required: [amount]}, body_limit: 64KiB}   # or inline

The route reads the request body whole (up to `body_limit`, 413 beyond), after authentication, then:
- a body that is not declared JSON (`Content-Type: application/json` or `*/*+json`): 415;
- a body that is not valid JSON, or that the schema refuses: 400 `invalid_body`, with the first problem's
  place in the body (`$.items[2].qty`) and what is wrong;
- no body on POST, PUT or PATCH: 400; other methods without a body pass.
The body then goes upstream unchanged. The schema is checked when the config loads (any JSON Schema draft
the `jsonschema` library knows, by its `$schema`; 2020-12 without one).
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
from jsonschema.exceptions import SchemaError, best_match
from pydantic import Field, field_validator

from frontgate.config.schema import Route, Size
from frontgate.errors import HttpError
from frontgate.pipeline.context import Reply, RequestContext
from frontgate.plugins.base import BuildContext, Plugin, PluginConfig
from frontgate.plugins.shared import BodyRefused, is_json, media_type, read_json_file

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_MAX_DETAIL = 200  # characters of the schema's complaint passed on to the client


class InvalidBody(BodyRefused):
    code = "invalid_body"
    message = "The request body is not valid."


class UnsupportedMediaType(HttpError):
    status, code = 415, "unsupported_media_type"
    message = "The request body must be JSON (Content-Type: application/json)."


def load_schema(value: str | dict[str, Any]) -> dict[str, Any]:
    """The schema itself (inline, or read from a file), checked against its draft's meta-schema."""
    schema = read_json_file(value, "json_schema") if isinstance(value, str) else value
    if not isinstance(schema, dict):
        raise ValueError("a JSON Schema is an object")
    try:
        jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator).check_schema(schema)
    except SchemaError as exc:
        raise ValueError(f"not a valid JSON Schema: {exc.message}") from exc
    return schema


class ValidateConfig(PluginConfig):
    json_schema: str | dict[str, Any] = Field(description="A JSON Schema file, or the schema inline.")
    body_limit: Size = Field(1024 * 1024, gt=0, description="Largest body read for checking; 413 beyond.")

    @field_validator("json_schema")
    @classmethod
    def _schema(cls, value: str | dict[str, Any]) -> str | dict[str, Any]:
        load_schema(value)
        return value


def _place(path: Any) -> str:
    return "$" + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path)


class ValidatePlugin(Plugin):
    name = "validate"
    priority = 600  # after auth and limits: an unauthenticated body is never even parsed
    Config = ValidateConfig
    config: ValidateConfig

    def __init__(self, config: ValidateConfig, route: Route | None, build: BuildContext) -> None:
        super().__init__(config, route, build)
        schema = load_schema(config.json_schema)
        validator_class = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        self._validator = validator_class(schema)
        self.body_limit = config.body_limit

    def on_body(self, ctx: RequestContext, body: bytes) -> Reply | None:
        if not body:
            if ctx.method in _BODY_METHODS:
                raise InvalidBody("A JSON body is required.")
            return None
        if not is_json(media_type(ctx.header(b"content-type"))):
            raise UnsupportedMediaType()
        try:
            document = json.loads(body)
            error = best_match(self._validator.iter_errors(document))
        except ValueError:
            raise InvalidBody("The request body is not valid JSON.") from None
        except RecursionError:  # nested deeper than Python's stack: no schema means that
            raise InvalidBody("The request body is nested too deeply.") from None
        if error is not None:
            detail = f"{_place(error.absolute_path)}: {error.message}"
            if len(detail) > _MAX_DETAIL:
                detail = detail[:_MAX_DETAIL - 3] + "..."
            raise InvalidBody(f"The request body does not match the schema: {detail}")
        return None
