"""The consumer table: who is calling. Built once per config generation from `consumers:` and shared by every
auth plugin of that generation (through `BuildContext.shared`)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from frontgate.config.schema import Consumer


def hash_key(key: str) -> str:
    """The stored form of an API key, as `frontgate hash-key` prints it."""
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class ConsumerInfo:
    name: str
    groups: frozenset[str]


class ConsumerTable:
    __slots__ = ("_by_digest", "_by_name", "_by_subject")

    def __init__(self, consumers: Sequence[Consumer]) -> None:
        self._by_name = {c.name: ConsumerInfo(c.name, frozenset(c.groups)) for c in consumers}
        # Keyed by the raw 32-byte SHA-256 digest: a presented key is hashed, then looked up.
        self._by_digest = {
            bytes.fromhex(h.partition(":")[2]): c.name for c in consumers for h in c.api_keys
        }
        self._by_subject = {s: c.name for c in consumers for s in c.mtls_subjects}

    def __len__(self) -> int:
        return len(self._by_name)

    def get(self, name: str) -> ConsumerInfo | None:
        return self._by_name.get(name)

    def by_key_digest(self, digest: bytes) -> str | None:
        return self._by_digest.get(digest)

    def by_mtls_subject(self, subject: str) -> str | None:
        return self._by_subject.get(subject)

    @property
    def has_keys(self) -> bool:
        return bool(self._by_digest)


def consumer_table(shared: dict[str, Any], consumers: Sequence[Consumer]) -> ConsumerTable:
    table = shared.get("auth.consumers")
    if not isinstance(table, ConsumerTable):
        table = shared["auth.consumers"] = ConsumerTable(consumers)
    return table
