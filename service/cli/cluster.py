"""`dptrain cluster up|down|status`: a local multi-process Ray cluster with the coordinator."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from dptrain.server.config import default_state_dir


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cluster", help="a local multi-process cluster (Ray nodes + coordinator)")
    cmds = p.add_subparsers(dest="cluster_cmd", required=True)
    up = cmds.add_parser("up", help="start a Ray head, N-1 more nodes and the coordinator")
    up.add_argument("--nodes", type=int, default=3, help="Ray nodes, the head included (default 3)")
    up.add_argument("--cpus-per-node", type=int, default=1, help="CPUs each node offers (default 1)")
    up.add_argument("--port", type=int, default=50051, help="the coordinator's gRPC port")
    up.add_argument("--ray-port", type=int, default=6390, help="the Ray head's GCS port (default 6390)")
    up.set_defaults(func=run_up)
    for name, func, text in (("down", run_down, "stop what `up` started"), ("status", run_status, "show it")):
        c = cmds.add_parser(name, help=text)
        c.set_defaults(func=func)
    for c in cmds.choices.values():
        c.add_argument("--state-dir", type=Path, default=default_state_dir() / "cluster",
                       help="where the cluster keeps its pids, logs and token (default ~/.dptrain/cluster)")


def run_up(args: argparse.Namespace) -> int:
    from dptrain.cluster import ClusterConfig, up

    t0 = time.monotonic()
    state = up(ClusterConfig(state_dir=args.state_dir, nodes=args.nodes, cpus_per_node=args.cpus_per_node,
                             ray_port=args.ray_port, grpc_port=args.port))
    print(f"cluster up in {time.monotonic() - t0:.1f}s: {len(state.nodes)} Ray nodes at {state.ray_address} "
          f"(token auth; the token is in {args.state_dir / 'ray_auth_token'})")
    print(f"coordinator listening on {state.grpc_address}")
    return 0


def run_down(args: argparse.Namespace) -> int:
    from dptrain.cluster import down

    stopped = down(args.state_dir / "cluster.json")
    print(f"stopped {', '.join(stopped)}" if stopped else "no cluster running")
    return 0


def run_status(args: argparse.Namespace) -> int:
    from dptrain.cluster import status

    state = status(args.state_dir / "cluster.json")
    if state is None:
        print("no cluster running")
        return 1
    for p in state.procs():
        print(f"{p.name:12s} pid {p.pid:7d}  {'up' if p.alive() else 'DOWN'}  log {p.log}")
    print(f"ray {state.ray_address} (token auth)  grpc {state.grpc_address}")
    return 0 if all(p.alive() for p in state.procs()) else 1
