"""Running a step's plans on Ray workers: the coordinator's side and the worker's side.

The worker group (actors' lifecycle), dispatch with deadlines, the failure policy, the
worker actor itself, warm actors kept between jobs, and the transports (Ray calls, shared
memory, the socket channel), each with both of its ends in one module. ``RayBackend`` is
what ``dptrain.core.trainer.Trainer`` sees of all this.

The one part of dptrain that imports Ray, with the server and the commands that start it.
May import ``dptrain.core`` and ``dptrain.engine``.
"""
