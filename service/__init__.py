"""dptrain: exact data-parallel training as a gRPC service (numpy backprop on Ray workers).

The public API, importable without Ray::

    from dptrain import Client, Trainer, TrainConfig

The package is the project's two source folders (``pyproject.toml`` maps them):

==================  ====================  =====================================================
import              folder                what lives there
==================  ====================  =====================================================
dptrain.engine      workers/engine/       ops, graph, model, losses, gradcheck (numpy only)
dptrain.data        service/data/         data sources: one registry entry per source
dptrain.core        service/core/         the Ray-free step: config, plan, reduction, optimizers,
                                          schedules, ledger, trainer (with an injected Backend)
dptrain.execution   workers/execution/    running plans on Ray: worker group, dispatch,
                                          failure policy, actor, warm actors, transports
dptrain.server      service/server/       the gRPC coordinator
dptrain.store       service/store/        jobs, metrics and checkpoints on disk
dptrain.rpc         service/rpc/          proto <-> Python conversion, field bounds, codegen
dptrain.v1          service/v1/           generated gRPC code (never edited)
dptrain.cli         service/cli/          the ``dptrain`` command
dptrain.cluster     service/cluster.py    the local multi-process cluster
dptrain.client      service/client.py     the Python gRPC client
==================  ====================  =====================================================

Imports go downwards in that table's dependency order: the engine imports nothing of
dptrain but itself; data and core import the engine; only ``dptrain.execution``, the
server and the commands that start them import Ray (tests/test_layout.py checks it).
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {"Client": "dptrain.client", "Trainer": "dptrain.core.trainer", "TrainConfig": "dptrain.core.config"}
__all__ = ["Client", "TrainConfig", "Trainer", "__version__"]


def __getattr__(name: str) -> Any:
    """Import on first use, so `import dptrain` (and `dptrain --help`) stays cheap."""
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dptrain' has no attribute {name!r}")
