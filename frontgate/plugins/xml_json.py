"""xml_json: put a JSON face on an XML service. Request bodies JSON to XML, response bodies XML to JSON.

    xml_json: {request: json_to_xml, response: xml_to_json}        # either direction alone works too

The mapping is xmltodict's, both ways: an element is a key; its attributes are keys `@name`, its text next to
children `#text`; repeated elements become a list (a single one stays an object: XML cannot say which is
meant). A JSON object with one key is the XML document's root element; any other JSON value is wrapped in a
root element named by `root` (a list's values as its `item` elements).

- Requests: a JSON body (`application/json`, `*/*+json`) is sent as XML (`application/xml`), with its own
  Content-Length. Other bodies pass unchanged. A body that is not valid JSON: 400 `invalid_body`.
- Responses: an XML body (`application/xml`, `text/xml`, `*/*+xml`) is sent to the client as JSON. Other
  responses, and compressed ones, pass unchanged. The route asks its upstream for uncompressed responses. An
  XML body that does not parse: 502. Responses are held whole (up to `body_limit`, 502 beyond).
- XML entities are never expanded (no billion laughs, no external entities).
"""

from __future__ import annotations

import json
from typing import Any, Literal
from xml.parsers.expat import ExpatError

import xmltodict
from pydantic import Field

from frontgate.config.schema import Route, Size
from frontgate.errors import BadGateway
from frontgate.pipeline.context import RequestContext, ResponseHead
from frontgate.plugins.base import BuildContext, Plugin, PluginConfig
from frontgate.plugins.shared import BodyRefused, is_json, media_type


class InvalidJsonBody(BodyRefused):
    code = "invalid_body"
    message = "The request body is not valid JSON."


class UpstreamXmlInvalid(BadGateway):
    message = "The upstream service gave a response that is not valid XML."


class XmlJsonConfig(PluginConfig):
    request: Literal["json_to_xml"] | None = Field(None, description="Send JSON request bodies as XML.")
    response: Literal["xml_to_json"] | None = Field(None, description="Send XML response bodies as JSON.")
    root: str = Field("root", pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$",
                      description="The XML root element around JSON that has no single top-level key.")
    body_limit: Size = Field(1024 * 1024, gt=0, description="Largest body transformed, either way.")


def _is_xml(media: bytes) -> bool:
    return media in (b"application/xml", b"text/xml") or media.endswith(b"+xml")


def json_to_xml(value: Any, root: str) -> bytes:
    if isinstance(value, list):
        value = {root: {"item": value}}
    elif not (isinstance(value, dict) and len(value) == 1 and not isinstance(next(iter(value.values())), list)):
        value = {root: value}
    text: str = xmltodict.unparse(value, encoding="utf-8")
    return text.encode("utf-8")


class XmlJsonPlugin(Plugin):
    name = "xml_json"
    priority = 500  # after auth, limits and body checks: they judge what the client sent
    Config = XmlJsonConfig
    config: XmlJsonConfig

    def __init__(self, config: XmlJsonConfig, route: Route | None, build: BuildContext) -> None:
        super().__init__(config, route, build)
        self.body_limit = config.body_limit

    def uses(self, hook: str) -> bool:
        if hook == "on_body":
            return self.config.request is not None
        if hook in ("on_response_body", "on_request"):
            return self.config.response is not None
        return super().uses(hook)

    def on_request(self, ctx: RequestContext) -> None:
        ctx.remove_header(b"accept-encoding")  # the response must come uncompressed to be rewritten

    def on_body(self, ctx: RequestContext, body: bytes) -> bytes | None:
        if not body or not is_json(media_type(ctx.header(b"content-type"))):
            return None
        try:
            value = json.loads(body)
            xml = json_to_xml(value, self.config.root)
        except (ValueError, RecursionError):
            raise InvalidJsonBody() from None
        ctx.set_header(b"content-type", b"application/xml; charset=utf-8")
        return xml

    def on_response_body(self, ctx: RequestContext, head: ResponseHead, body: bytes) -> bytes:
        fields = dict(head.headers)
        if not body or b"content-encoding" in fields or not _is_xml(media_type(fields.get(b"content-type"))):
            return body
        try:
            value = xmltodict.parse(body, disable_entities=True)
            text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        except (ExpatError, ValueError, RecursionError):
            raise UpstreamXmlInvalid() from None
        head.set(b"content-type", b"application/json")
        return text.encode("utf-8")
