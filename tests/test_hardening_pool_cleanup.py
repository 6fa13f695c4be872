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
        from service.warm import WARM
        from workers.actor import RayShardWorker
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
