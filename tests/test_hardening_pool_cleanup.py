"""What a job leaves behind: shared-memory files of a coordinator that died, idle warm
actors after Ray shut down (issue 10, item 12), and the cluster's CPUs for admission."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(code: str, timeout: float = 120, **env: str) -> str:
    """`code` in a fresh interpreter (its own Ray, never the tests' shared session)."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                         timeout=timeout, env={**os.environ, "PYTHONPATH": ROOT, **env})
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_the_warm_reaper_never_starts_ray_after_a_shutdown():
    """Library use: ray.shutdown() with idle warm actors; the reaper must forget them
    without calling Ray (ray.kill would start a new local cluster), then stop."""
    out = run_python("""
        import time
        import ray
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
        from dptrain.execution.warm import WARM
        from dptrain.execution.actor import RayShardWorker
        actor = RayShardWorker.options(num_cpus=0.25).remote()
        ray.get(actor.info.remote())
        WARM.give(0.25, [actor])
        reaper = WARM._reaper
        ray.shutdown()
        reaper.join(timeout=10)  # past the reap interval (1 s)
        time.sleep(0.5)
        print(ray.is_initialized(), reaper.is_alive(), len(WARM))
    """, DPTRAIN_WARM_S="1")
    assert out.split() == ["False", "False", "0"]


def _files(directory, prefix: str) -> list[str]:
    return sorted(f for f in os.listdir(directory) if f.startswith(os.path.basename(prefix)))


def test_shared_files_are_removed_exactly_when_their_coordinator_is_dead(tmp_path, monkeypatch):
    """A coordinator's lock, not the PID in its file names, says whether it is alive: after a
    SIGKILL its files go at the next start even when its PID now names a live process (PIDs
    are reused; a restarted container's server often gets the same one), and a live
    coordinator's files stay, whoever looks (its own process included)."""

    import numpy as np
    from dptrain.execution.transports import segments as shm
    from dptrain.execution.transports.shm import ShmHost

    monkeypatch.setenv("DPTRAIN_SHM_DIR", str(tmp_path))
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys
        import numpy as np
        from dptrain.execution.transports.shm import ShmHost
        host = ShmHost("node")
        host.publish(np.zeros(4, np.float32))
        print(host.prefix, flush=True)
        sys.stdin.read()
    """)], cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        theirs = child.stdout.readline().strip()
        ours = ShmHost("node")
        ours.publish(np.ones(4, np.float32))
        before = {p: _files(tmp_path, p) for p in (theirs, ours.prefix)}
        assert all(len(f) >= 2 for f in before.values())  # probe and weights at least
        assert shm.cleanup_stale() == []  # both alive: this process's own check takes no lock from it
        assert shm.cleanup_stale() == []  # ... nor drops it on close
        assert {p: _files(tmp_path, p) for p in before} == before
    finally:
        child.kill()
        child.wait()
    # The dead coordinator's PID is reused by a live process (this one).
    dead_tag = os.path.basename(theirs).split("-")[1]
    for name in _files(tmp_path, theirs):
        os.rename(tmp_path / name, tmp_path / name.replace(dead_tag, shm.owner_tag(), 1))
    removed = shm.cleanup_stale()
    assert len(removed) == len(before[theirs]) and all(str(tmp_path) in p for p in removed)
    assert _files(tmp_path, ours.prefix) == before[ours.prefix]
    ours.close()
    assert os.listdir(tmp_path) == []
