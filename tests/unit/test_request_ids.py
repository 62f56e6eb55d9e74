"""Request ids the gateway makes: unique across forked workers, and when the access log makes them in bulk."""

from __future__ import annotations

import os

from frontgate.pipeline.context import new_request_id, new_request_ids


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


def test_ids_made_in_bulk_are_distinct_and_shaped_like_the_others() -> None:
    # Across the point where the counter's high digits change (every 4,096 ids), and across calls.
    made = new_request_ids(5000) + new_request_ids(3) + new_request_ids(0) + [new_request_id()]
    assert len(set(made)) == len(made) == 5004
    assert all(len(made_id) == 22 and int(made_id, 16) >= 0 for made_id in made)
    assert [int(made_id[12:], 16) for made_id in made[:5003]] == sorted(int(m[12:], 16) for m in made[:5003])
