"""Request ids made by the gateway are unique across forked workers, not only within one process."""

from __future__ import annotations

import os

from frontgate.pipeline.context import new_request_id


def test_a_forked_worker_makes_ids_of_its_own() -> None:
    read_end, write_end = os.pipe()
    parent_first = new_request_id()
    pid = os.fork()
    if pid == 0:  # the worker: report its first id, then leave without running pytest's teardown
        os.write(write_end, new_request_id().encode())
        os._exit(0)
    os.close(write_end)
    child_first = os.read(read_end, 64).decode()
    os.close(read_end)
    os.waitpid(pid, 0)
    parent_next = new_request_id()
    assert len(child_first) == len(parent_first) == 22
    assert child_first[:12] != parent_first[:12]  # another prefix: the counters may overlap, the ids cannot
    assert child_first != parent_next
