"""The plugin registry: name -> class. Adding a plugin means adding its module here."""

from __future__ import annotations

from pydantic import BaseModel

from frontgate.plugins.allow import AllowPlugin
from frontgate.plugins.api_key import ApiKeyPlugin
from frontgate.plugins.base import Plugin
from frontgate.plugins.body_limit import BodyLimitPlugin
from frontgate.plugins.cache import CachePlugin
from frontgate.plugins.cors import CorsPlugin
from frontgate.plugins.graphql import GraphqlPlugin
from frontgate.plugins.grpc_transcode import GrpcTranscodePlugin
from frontgate.plugins.headers import RequestHeadersPlugin, ResponseHeadersPlugin
from frontgate.plugins.ip_restriction import IpRestrictionPlugin
from frontgate.plugins.jwt import JwtPlugin
from frontgate.plugins.mtls import MtlsPlugin
from frontgate.plugins.oauth2_introspection import IntrospectionPlugin
from frontgate.plugins.rate_limit import RateLimitPlugin
from frontgate.plugins.request_id import RequestIdPlugin
from frontgate.plugins.rewrite import RewritePlugin
from frontgate.plugins.validate import ValidatePlugin
from frontgate.plugins.xml_json import XmlJsonPlugin

REGISTRY: dict[str, type[Plugin]] = {
    cls.name: cls
    for cls in (RequestIdPlugin, RequestHeadersPlugin, ResponseHeadersPlugin, RewritePlugin, BodyLimitPlugin,
                JwtPlugin, MtlsPlugin, ApiKeyPlugin, IntrospectionPlugin, AllowPlugin, IpRestrictionPlugin,
                RateLimitPlugin, CorsPlugin, ValidatePlugin, GraphqlPlugin, XmlJsonPlugin, CachePlugin,
                GrpcTranscodePlugin)
}


def plugin_models() -> dict[str, type[BaseModel]]:
    return {name: cls.Config for name, cls in REGISTRY.items()}
