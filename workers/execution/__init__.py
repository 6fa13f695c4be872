"""Running plans on Ray: the coordinator's side and the worker's side.

``backend`` (``RayBackend``: what ``dptrain.core.trainer.Trainer`` sees of all this) over
``pool`` (``WorkerPool``: weights published, plans run), which wires together ``group``
(the worker group: actors started, resized, restored, stopped), ``dispatch`` (plans sent,
results taken, with deadlines), ``failures`` (the failure policy: who recomputes a lost
plan) and ``waiting`` (bounded, cancellable waits). ``actor`` is the worker itself, ``warm``
keeps actors between jobs, ``capacity`` measures the cluster, ``runtime`` starts or joins
Ray. ``transports`` carry a plan and its sums (Ray calls; shared memory and a socket), each
with both of its ends in one module.

The one part of dptrain that imports Ray, with the server and the commands that start it.
May import ``dptrain.core`` and ``dptrain.engine``.
"""
