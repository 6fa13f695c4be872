"""The web dashboard: jobs, their live curves and details, served by the coordinator on its
own port (`dptrain serve --dashboard-port`), behind the server's bearer token when it has one.

`app` is a thin aiohttp layer over the same handler functions as the gRPC servicer (the
JSON is their messages' JSON mapping); `static/` is the page, plain HTML and JavaScript
with uPlot (vendored, MIT) for the charts.
"""
from .app import Dashboard, start_dashboard

__all__ = ["Dashboard", "start_dashboard"]
