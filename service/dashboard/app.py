"""HTTP side of the dashboard: the page, and four JSON endpoints over the gRPC handlers.

    GET /                          the page (static/index.html)
    GET /static/...                its script, styles and the vendored uPlot
    GET /api/jobs                  ListJobs (newest first, up to 200)
    GET /api/jobs/{id}             GetJob: state, spec, stats (workers, ledger, failures)
    GET /api/jobs/{id}/metrics     GetMetrics from ?from_step=N, a page at a time
    GET /api/jobs/{id}/log         GetJobLog after ?after=SEQ: the job's events

The JSON is each response message's proto3 JSON mapping, so the page reads what a gRPC
client reads. With a token configured every /api request needs ``Authorization: Bearer
<token>`` (the page takes it from its URL's #token=... fragment, which browsers never send
to the server, and keeps it for the tab); the page itself holds no data.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from aiohttp import web
from dptrain.rpc import pb
from dptrain.server import handlers as h
from dptrain.server.servicer import status_code
from google.protobuf import json_format

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
JOBS_SHOWN = 200
HTTP_OF = {"INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "FAILED_PRECONDITION": 409, "RESOURCE_EXHAUSTED": 429,
           "UNAVAILABLE": 503}


def _json(message: Any) -> web.Response:
    return web.json_response(json_format.MessageToDict(message, preserving_proto_field_name=True))


def make_app(manager: Any, token: str | None) -> web.Application:
    """The aiohttp application; `manager` is the server's JobManager."""

    async def call(handler: Callable[..., Any], request: Any) -> web.Response:
        # the handlers touch SQLite and locks: off the event loop, as the gRPC servicer's threads do
        try:
            return _json(await asyncio.to_thread(handler, manager, request))
        except Exception as e:  # noqa: BLE001 - mapped like the servicer's errors
            code = status_code(e).name
            if code not in HTTP_OF:
                log.exception("dashboard request failed")
            return web.json_response({"error": str(e), "code": code}, status=HTTP_OF.get(code, 500))

    @web.middleware
    async def auth(request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        if token and request.path.startswith("/api/"):
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return web.json_response({"error": "missing or wrong bearer token", "code": "UNAUTHENTICATED"},
                                         status=401)
        response = await handler(request)
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    async def index(_: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    async def jobs(_: web.Request) -> web.Response:
        return await call(h.list_jobs, pb.ListJobsRequest(page_size=JOBS_SHOWN))

    async def job(request: web.Request) -> web.Response:
        return await call(h.get_job, pb.GetJobRequest(job_id=request.match_info["job_id"]))

    async def metrics(request: web.Request) -> web.Response:
        try:
            from_step = int(request.query.get("from_step", "0"))
        except ValueError:
            return web.json_response({"error": "from_step: must be an integer", "code": "INVALID_ARGUMENT"},
                                     status=400)
        req = pb.GetMetricsRequest(job_id=request.match_info["job_id"], from_step=from_step)
        return await call(h.get_metrics, req)

    async def job_log(request: web.Request) -> web.Response:
        try:
            after = int(request.query.get("after", "0"))
        except ValueError:
            return web.json_response({"error": "after: must be an integer", "code": "INVALID_ARGUMENT"}, status=400)
        return await call(h.get_job_log, pb.GetJobLogRequest(job_id=request.match_info["job_id"], after=after))

    app = web.Application(middlewares=[auth], client_max_size=1 << 16)
    app.router.add_get("/", index)
    app.router.add_get("/api/jobs", jobs)
    app.router.add_get("/api/jobs/{job_id}", job)
    app.router.add_get("/api/jobs/{job_id}/metrics", metrics)
    app.router.add_get("/api/jobs/{job_id}/log", job_log)
    app.router.add_static("/static/", STATIC)
    return app


@dataclass
class Dashboard:
    """A running dashboard: its port, and how to stop it."""

    port: int
    _loop: asyncio.AbstractEventLoop
    _runner: web.AppRunner
    _thread: threading.Thread

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


def start_dashboard(manager: Any, host: str, port: int, token: str | None) -> Dashboard:
    """Serve the dashboard on host:port (0: a free port) from a thread with its own event loop."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(make_app(manager, token), access_log=None)
    ready: dict[str, Any] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, host, port)
            loop.run_until_complete(site.start())
            ready["port"] = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        except BaseException as e:  # noqa: BLE001 - reported to the caller
            ready["error"] = e
            return
        finally:
            ready.setdefault("done", True)
            started.set()
        loop.run_forever()

    started = threading.Event()
    thread = threading.Thread(target=run, name="dashboard", daemon=True)
    thread.start()
    started.wait(timeout=30)
    if "error" in ready:
        raise OSError(f"dashboard: cannot serve on {host}:{port}: {ready['error']} (dptrain serve: "
                      f"--dashboard-port to choose another port, --no-dashboard to go without)")
    return Dashboard(ready["port"], loop, runner, thread)
