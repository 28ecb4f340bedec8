"""adapters/replica_group.py: persistent replica processes under a deadline, with real child processes."""

import textwrap
from pathlib import Path

import pytest

from bnconf.adapters.replica_group import ReplicaGroup
from bnconf.adapters.replica_protocol import ReplicaCrash, ReplicaTimeout

ENTRY = textwrap.dedent('''
    import os, sys, time
    from pathlib import Path

    def serve(rank, world):
        marker = Path(os.environ["MARKER"])
        if os.environ.get("TAKE_PORT_ONCE") and rank == 0 and not marker.exists():
            marker.write_text("the port was taken once")
            sys.stderr.write("RuntimeError: The server socket has failed to listen on any local network address. "
                             "code: -98, name: EADDRINUSE, message: address already in use\\n")
            sys.stderr.flush()
            os._exit(1)

        def handle(payload):
            if payload == "hang" and rank == 1:
                time.sleep(60)
            if payload == "die" and rank == 0:
                os._exit(3)
            if payload == "raise":
                raise ValueError(f"refused by replica {rank}")
            return rank, world, payload, os.environ["MASTER_PORT"]
        return handle
''')


def _group(tmp_path: Path, **env) -> ReplicaGroup:
    (tmp_path / "entry_module.py").write_text(ENTRY)
    return ReplicaGroup("entry_module:serve", 3, env={"PYTHONPATH": str(tmp_path), "MARKER": str(tmp_path / "m"), **env},
                        timeout=3, startup_timeout=60)


def test_answers_in_order_from_one_persistent_group(tmp_path):
    g = _group(tmp_path)
    try:
        first = g.call(["a", "b", "c"])
        assert [a[:3] for a in first] == [(0, 3, "a"), (1, 3, "b"), (2, 3, "c")]
        assert g.call([1, 2, 3])[0][3] == first[0][3]  # the same processes: the same port
        with pytest.raises(ValueError, match="refused by replica 0"):
            g.call(["raise"] * 3)
        assert g.running  # a handler's exception keeps the group
    finally:
        g.close()


def test_a_hang_or_a_death_stops_the_whole_group_and_the_next_call_starts_afresh(tmp_path):
    g = _group(tmp_path)
    try:
        g.call(["warm"] * 3)
        procs = list(g._procs)
        with pytest.raises(ReplicaTimeout, match=r"\[1\] of 3 did not answer within 3 s"):
            g.call(["hang"] * 3)
        assert not g.running and all(p.poll() is not None for p in procs)  # none survives
        with pytest.raises(ReplicaCrash, match="replica process 0 of 3 died \\(exit code 3\\)"):
            g.call(["die"] * 3)
        assert [a[2] for a in g.call(["x"] * 3)] == ["x"] * 3
    finally:
        g.close()


def test_a_port_taken_while_starting_is_retried_on_another(tmp_path):
    g = _group(tmp_path, TAKE_PORT_ONCE="1")
    try:
        assert [a[2] for a in g.call(["a", "b", "c"])] == ["a", "b", "c"]
        assert (tmp_path / "m").exists()  # the first start did fail
    finally:
        g.close()
