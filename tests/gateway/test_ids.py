"""gateway.ids: identifiers cut from bulk random bytes stay unique, also across a fork."""

import os

from gateway import ids


def test_ids_are_unique_well_formed_and_differ_after_a_fork():
    ids.request_id()      # the pool is filled: a forked child must not reuse what is left
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, " ".join(ids.request_id() for _ in range(50)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 1 << 16).decode().split()
    parent = [ids.request_id() for _ in range(50)]
    events = [ids.event_id() for _ in range(1000)]
    assert len(set(child) | set(parent)) == 100
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in parent)
    assert len(set(events)) == 1000 and all(len(e) == 24 for e in events)
