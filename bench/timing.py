"""What the benches share: a median timer, and one exchange timed as a Ray Compiled Graph."""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable


def median_ms(f: Callable[[], Any], reps: int = 300, warmup: int = 20) -> float:
    """Median wall time of f() in ms, after `warmup` untimed calls."""
    for _ in range(warmup):
        f()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(ts)


def compiled_graph_ms(actors: list, arg: Any, reps: int = 300, **compile_kwargs: Any) -> float | None:
    """`actor.step(arg)` on every actor as one Ray Compiled Graph, timed per execution; None
    (with the reason printed) if this Ray cannot compile or run it: the API is beta."""
    import ray

    try:
        from ray.dag import InputNode, MultiOutputNode

        with InputNode() as inp:
            dag = MultiOutputNode([a.step.bind(inp) for a in actors])
        graph = dag.experimental_compile(**compile_kwargs)
        try:
            return median_ms(lambda: ray.get(graph.execute(arg)), reps)
        finally:
            graph.teardown()
    except Exception as e:  # noqa: BLE001 - report, do not fail the bench
        print(f"(Ray Compiled Graph failed: {type(e).__name__}: {e})")
        return None
