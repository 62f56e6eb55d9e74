"""Edge authentication and authorization: JWT (inline keys, JWKS files and URLs), API keys, OAuth2 token
introspection, consumers, allow rules, and how several authenticators on one route combine.

The plugin modules (`frontgate/plugins/jwt.py`, `api_key.py`, ...) are thin: the verifiers, key sources and
tables live here and are built once per config generation.
"""
