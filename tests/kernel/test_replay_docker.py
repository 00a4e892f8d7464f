"""Replay to a Docker container named as the target (`--to NAME:PORT`, and by id): its address is
read in the container's network namespace. Docker comes from tests/runtimes.py (started for the
test, the host restored after); skipped with one line without docker.io."""
from bpfhook import replay
from tests import runtimes
from tests.pcapfiles import CLIENT, SERVER, conversation, write


def test_docker_container_as_target_by_name(tmp_path):
    same = [(5, "c", b"replay me"), (6, "s", b"ok replay me")]
    changed = [(15, "c", b"and me"), (16, "s", b"ok AND ME")]  # as an older build answered
    path = write(tmp_path / "d.pcapng", conversation(CLIENT, SERVER, same) + conversation(
        (CLIENT[0], CLIENT[1] + 1), SERVER, changed, isn_c=9000, start_ms=10))
    with runtimes.docker_engine() as engine:
        c = engine.run("bh-replay-target")
        reports = [replay.replay(path, f"{spec}:{runtimes.APP_PORT}", opts=replay.Options(speed=None, timeout=30))
                   for spec in (c.name, c.id[:12])]
    for report in reports:
        (target,) = report["targets"]
        assert target.startswith(f"{c.ip}:{runtimes.APP_PORT} (container "), target
        assert [e["outcome"] for e in report["exchanges"]] == ["identical", "different"], report["exchanges"]
