"""The web dashboard, served by the coordinator: its JSON API (token, errors) over plain
HTTP, and the page in a real headless Chromium, whose curve grows while a job runs."""
from __future__ import annotations

import json
import os
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from dptrain.server import ServerConfig, serve

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
SCREENSHOTS = Path(os.environ.get("DPTRAIN_SCREENSHOTS", "")) if os.environ.get("DPTRAIN_SCREENSHOTS") else None
JOB = {"model": {"input": 64, "layers": ["linear 64", "relu", "linear 10"], "loss": "cross_entropy"},
       "dataset": {"name": "digits", "val_fraction": 0.2}, "optimizer": {"name": "adam", "lr": 0.003},
       "batch_size": 32, "chunk_size": 16, "workers": 2, "cpus_per_worker": 0.5, "val_every": 50}


@pytest.fixture(scope="module")
def dashboard_server(ray_session, tmp_path_factory):
    srv = serve(ServerConfig(port=0, state_dir=tmp_path_factory.mktemp("dash"), dashboard_port=0, token="s3cret"))
    yield srv
    srv.stop()


def get(srv, path: str, token: str | None = "s3cret") -> tuple[int, dict | str]:
    req = urllib.request.Request(f"{srv.dashboard_url.rstrip('/')}{path}",
                                 headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read().decode()
            return r.status, json.loads(body) if r.headers.get_content_type() == "application/json" else body
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read().decode())


def test_the_api_is_the_grpc_handlers_behind_the_token(dashboard_server):
    from dptrain.client import Client

    with Client(dashboard_server.address, token="s3cret") as c:
        job = c.submit({**JOB, "steps": 20}, name="api")
        for _ in c.watch(job.id):
            pass
    assert get(dashboard_server, "/api/jobs", token=None)[0] == 401
    assert get(dashboard_server, "/api/jobs", token="wrong")[0] == 401
    status, jobs = get(dashboard_server, "/api/jobs")
    assert status == 200 and job.id in [j["id"] for j in jobs["jobs"]]
    status, one = get(dashboard_server, f"/api/jobs/{job.id}")
    assert status == 200 and one["state"] == "JOB_STATE_SUCCEEDED" and one["spec"]["model"]["nodes"]
    status, page = get(dashboard_server, f"/api/jobs/{job.id}/metrics?from_step=5")
    assert status == 200 and [int(m["step"]) for m in page["metrics"]] == list(range(5, 21))
    assert get(dashboard_server, "/api/jobs/0000000000000000000f")[0] == 404
    assert get(dashboard_server, f"/api/jobs/{job.id}/metrics?from_step=x")[0] == 400
    assert get(dashboard_server, "/api/jobs/not-an-id")[1]["code"] == "INVALID_ARGUMENT"
    status, html = get(dashboard_server, "/", token=None)  # the page holds no data: no token needed
    assert status == 200 and "uPlot.iife.min.js" in html
    assert get(dashboard_server, "/static/vendor/LICENSE-uPlot.txt", token=None)[0] == 200


needs_browser = pytest.mark.skipif(
    not (CHROMIUM and DRIVER) and not os.environ.get("DPTRAIN_REQUIRE_BROWSER"),
    reason="Debian's chromium and chromium-driver are not installed (.ci/run installs them)")


@needs_browser
@pytest.mark.timeout(180)
def test_the_page_shows_the_jobs_and_a_running_jobs_curve_grows(dashboard_server, tmp_path):
    from dptrain.client import Client
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    opts = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-quic", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--window-size=1400,1200", f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(flag)
    browser = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        with Client(dashboard_server.address, token="s3cret") as c:
            done = c.submit({**JOB, "steps": 40}, name="finished-first")
            for _ in c.watch(done.id):
                pass
            job = c.submit({**JOB, "steps": 4000}, name="running")
            browser.get(f"{dashboard_server.dashboard_url}#token=s3cret")
            seen, deadline = [], time.monotonic() + 120
            while time.monotonic() < deadline:
                points = browser.execute_script("return window.dptrainDashboard.points(arguments[0])", job.id)
                state = c.get(job.id).state
                seen.append((points, state))
                if state == 3 and points == 4000:  # SUCCEEDED, every step drawn
                    break
                time.sleep(0.5)
            running = [p for p, s in seen if s == 2 and p > 0]  # RUNNING
            assert len(set(running)) >= 2 and running == sorted(running), seen  # it grew while running
            assert seen[-1] == (4000, 3), seen[-1]
            names = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#jobs tbody td:nth-child(3)")]
            assert {"running", "finished-first"} <= set(names)
            for box in browser.find_elements(By.CSS_SELECTOR, "#jobs tbody input[type=checkbox]"):
                box.click()  # overlay both
            time.sleep(2)
            legend = browser.find_element(By.ID, "chart-loss").text
            assert "running train loss" in legend and "finished-first train loss" in legend
            browser.find_element(By.CSS_SELECTOR, f"#jobs tbody tr[data-job='{job.id}']").click()
            time.sleep(1.5)
            assert '"name": "digits"' in browser.find_element(By.ID, "spec").text
            shot = (SCREENSHOTS or tmp_path) / "dashboard.png"
            shot.parent.mkdir(parents=True, exist_ok=True)
            assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
            errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
            assert not errors, errors
    finally:
        browser.quit()


def test_a_busy_port_is_named_with_the_way_out(dashboard_server):
    from dptrain.dashboard import start_dashboard

    with pytest.raises(OSError, match=r"cannot serve on 127.0.0.1:\d+.*--dashboard-port to choose another port"):
        start_dashboard(dashboard_server.manager, "127.0.0.1", dashboard_server.dashboard.port, None)
