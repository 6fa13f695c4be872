"""`dptrain serve`: the coordinator as a long-running gRPC server."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the gRPC coordinator")
    p.add_argument("--host", default=os.environ.get("DPTRAIN_HOST", "127.0.0.1"),
                   help="bind address (default loopback; any other requires a token)")
    p.add_argument("--port", type=int, default=int(os.environ.get("DPTRAIN_PORT", 50051)),
                   help="gRPC port (env DPTRAIN_PORT; 0: a free port)")
    p.add_argument("--state-dir", type=Path, default=None, help="job store, checkpoints, datasets "
                   "(env DPTRAIN_HOME, default ~/.dptrain)")
    p.add_argument("--max-running-jobs", type=int, default=int(os.environ.get("DPTRAIN_MAX_RUNNING_JOBS", 1)),
                   help="jobs trained at once, when the cluster's CPUs allow (env DPTRAIN_MAX_RUNNING_JOBS, default 1)")
    p.add_argument("--token", default=os.environ.get("DPTRAIN_TOKEN") or None, help="bearer token (env DPTRAIN_TOKEN)")
    p.add_argument("--tls-cert", type=Path, default=os.environ.get("DPTRAIN_TLS_CERT") or None,
                   help="PEM certificate: serve TLS (with --tls-key; env DPTRAIN_TLS_CERT)")
    p.add_argument("--tls-key", type=Path, default=os.environ.get("DPTRAIN_TLS_KEY") or None,
                   help="PEM private key of --tls-cert (env DPTRAIN_TLS_KEY)")
    p.add_argument("--metrics-port", type=int, default=_env_int("DPTRAIN_METRICS_PORT"),
                   help="serve Prometheus metrics on this port (env DPTRAIN_METRICS_PORT)")
    p.add_argument("--metrics-host", default=os.environ.get("DPTRAIN_METRICS_HOST", "127.0.0.1"),
                   help="bind address of the metrics port (default loopback, whatever --host is)")
    p.add_argument("--dashboard-port", type=int, default=int(os.environ.get("DPTRAIN_DASHBOARD_PORT", 8070)),
                   help="web dashboard port (env DPTRAIN_DASHBOARD_PORT, default 8070; 0: a free port)")
    p.add_argument("--dashboard-host", default=os.environ.get("DPTRAIN_DASHBOARD_HOST", "127.0.0.1"),
                   help="bind address of the dashboard (default loopback; elsewhere the bearer token guards it)")
    p.add_argument("--no-dashboard", action="store_true", help="do not serve the web dashboard")
    p.add_argument("--ray-address", default=os.environ.get("DPTRAIN_RAY_ADDRESS") or None,
                   help="join this Ray cluster instead of starting an embedded one")
    p.add_argument("--ray-num-cpus", type=float, default=None, help="CPUs of the embedded Ray instance")
    p.set_defaults(func=run)
    d = sub.add_parser("dashboard", help="open the web dashboard of a running `dptrain serve` in a browser")
    d.add_argument("--host", default=os.environ.get("DPTRAIN_DASHBOARD_HOST", "127.0.0.1"),
                   help="the dashboard's host (env DPTRAIN_DASHBOARD_HOST, default 127.0.0.1)")
    d.add_argument("--port", type=int, default=int(os.environ.get("DPTRAIN_DASHBOARD_PORT", 8070)),
                   help="its port (env DPTRAIN_DASHBOARD_PORT, default 8070)")
    d.add_argument("--token", default=os.environ.get("DPTRAIN_TOKEN") or None,
                   help="the server's bearer token, if it has one (env DPTRAIN_TOKEN)")
    d.add_argument("--no-open", action="store_true", help="print the address only")
    d.set_defaults(func=open_dashboard)


def open_dashboard(args: argparse.Namespace) -> int:
    """The URL carries the token in its #fragment, which the browser keeps to itself."""
    import webbrowser

    url = f"http://{args.host}:{args.port}/" + (f"#token={args.token}" if args.token else "")
    print(f"dptrain dashboard: {url}")
    if not args.no_open and not webbrowser.open(url):
        print("(no browser to open here: open the address above in yours)")
    return 0


def _env_int(name: str) -> int | None:
    v = os.environ.get(name)
    return int(v) if v else None


def _stop_ray(timeout: float) -> None:
    """Stop the embedded Ray (its processes would otherwise outlive us), within `timeout`."""
    import threading

    import ray

    t = threading.Thread(target=ray.shutdown, name="ray-shutdown", daemon=True)
    t.start()
    t.join(timeout)


def run(args: argparse.Namespace) -> int:
    import logging

    from dptrain.server import ServerConfig, serve

    logging.getLogger("dptrain").setLevel(logging.INFO)  # jobs accepted, started, failed (with the cause)
    kw = {"state_dir": args.state_dir} if args.state_dir else {}
    cfg = ServerConfig(host=args.host, port=args.port, max_running_jobs=args.max_running_jobs,
                       token=args.token, tls_cert=args.tls_cert, tls_key=args.tls_key,
                       metrics_port=args.metrics_port, metrics_host=args.metrics_host,
                       dashboard_port=None if args.no_dashboard else args.dashboard_port,
                       dashboard_host=args.dashboard_host,
                       ray_address=args.ray_address,
                       ray_num_cpus=args.ray_num_cpus, **kw)
    generated = cfg.ensure_token()
    server = serve(cfg)
    print(f"dptrain listening on {server.address} (state in {cfg.state_dir})"
          + (f", metrics on :{server.metrics_port}" if server.metrics_port else ""), flush=True)
    if generated:
        print(f"bearer token (generated): {cfg.token}", flush=True)
    if server.dashboard_url:
        fragment = f"#token={cfg.token}" if cfg.token else ""
        print(f"dashboard on {server.dashboard_url}{fragment} (or: dptrain dashboard)", flush=True)
    import signal
    import threading

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    print("shutting down: running jobs are checkpointed and will resume", flush=True)
    clean = server.stop()
    _stop_ray(timeout=15.0)
    # Every wait in stop() is bounded; a gRPC thread still stuck in a call must not keep
    # the process alive past it (the interpreter would join its thread pool at exit).
    logging.shutdown()
    sys.stdout.flush()
    os._exit(0 if clean else 1)
