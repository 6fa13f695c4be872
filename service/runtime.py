"""Starting or joining Ray, the same way for the CLI, the server and the tests."""
from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def ensure_ray(address: str | None = None, num_cpus: float | None = None) -> None:
    """Join `address` (or $DPTRAIN_RAY_ADDRESS / $RAY_ADDRESS), else start a local instance."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("DPTRAIN_RAY_ADDRESS") or os.environ.get("RAY_ADDRESS")
    kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    if address:
        log.info("joining Ray cluster at %s", address)
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, **kwargs)
