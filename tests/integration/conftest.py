from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.helpers import RecordingUpstream


@pytest.fixture
def upstream() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream()
    yield server
    server.close()
