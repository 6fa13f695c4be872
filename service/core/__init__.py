"""The Ray-free core of a training step: what the coordinator computes, wherever workers run.

``config`` (the job spec), ``shard`` (plans: which chunks a worker computes, and the
per-shard sums), ``reduce`` (the fixed reduction tree, one per-step ``Reduction``), ``tail``
(its kernel: the root addition fused with the division and the norm), ``optim`` and
``schedules`` (the update), ``ledger`` (which examples each epoch has used), ``telemetry``
(step metrics) and ``trainer`` (the step loop, taking a ``Backend`` that computes plans: in
this process, or on Ray via ``dptrain.execution``).

May import ``dptrain.engine`` and ``dptrain.data``; never Ray, the server or the store.
"""
