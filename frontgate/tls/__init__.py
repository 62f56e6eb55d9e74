"""TLS pieces shared by the listeners, the upstream side and the config checks: certificate and key files,
certificate subjects as RFC 4514 text, and the verified client certificate of a connection.

See docs/tls.md for what users configure and see.
"""
