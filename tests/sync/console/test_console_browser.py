"""The dashboard in a real headless Chromium (Debian's chromium + chromium-driver, driven by
Selenium) while simulated devices publish: the fleet table shows them, values change without a
reload, a chart has data points, an alert appears and clears; a screenshot is saved."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from synctest_broker import wait_for

from sync import MqttSync

FAST = {"keepalive": 2, "backoff_initial": 0.05, "backoff_cap": 0.5, "telemetry_interval": 0.3}
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--window-size=1280,1100"]
CALM = {"fps": 24.0, "latency_p95_ms": 30.0,
        "drift": {"level": "stable", "brightness_psi": 0.04, "confidence_psi": 0.02}}


@pytest.fixture
def browser(tmp_path, monkeypatch):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver") or (
        "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None)
    if chromium is None or driver_path is None:
        pytest.fail("chromium or chromedriver not installed: run `make system-deps`",
                    pytrace=False)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # never let Selenium Manager download anything
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in [*FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]:
        opts.add_argument(flag)
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def cells(driver, device: str) -> list[str]:
    """The row's texts, read in one script: the table is redrawn on every live update."""
    return driver.execute_script(
        "const r = document.querySelector(`#fleet tr[data-device='${arguments[0]}']`);"
        "return r ? Array.from(r.cells, (c) => c.textContent) : [];", device)


def alert_state(driver, device: str, rule: str) -> str | None:
    return driver.execute_script(
        "const r = document.querySelector("
        "`#alerts tr[data-device='${arguments[0]}'][data-rule='${arguments[1]}']`);"
        "return r ? r.dataset.state : null;", device, rule)


def test_dashboard_live_in_headless_chromium(serve_factory, broker, browser, tmp_path):
    from selenium.webdriver.common.by import By

    serve = serve_factory(str(tmp_path / "console.db"), token="browser-test-token-0123")
    devices = [MqttSync(broker.url, name, tmp_path / f"{name}.db", model=model, **FAST).start()
               for name, model in (("cam-a", "det-int8"), ("cam-b", "cls-fp16"))]
    try:
        for d in devices:
            d.update_telemetry(**CALM)
        browser.get(serve.base + "/")
        wait_for(lambda: cells(browser, "cam-a") and cells(browser, "cam-b"), 30,
                 "both devices in the fleet table")
        row = cells(browser, "cam-a")
        assert row[0] == "cam-a" and row[1] == "online" and row[3] == "det-int8", row
        assert cells(browser, "cam-b")[3] == "cls-fp16"

        # a live update: a new value shows up without reloading the page
        devices[0].update_telemetry(fps=99.5)
        wait_for(lambda: cells(browser, "cam-a")[5] == "99.5", 30, "fps 99.5 pushed live")
        assert browser.execute_script("return performance.getEntriesByType('navigation')"
                                      ".length") == 1  # still the first page load

        # an alert appears, then clears
        devices[0].update_telemetry(drift={"level": "drifted", "brightness_psi": 0.6})
        wait_for(lambda: alert_state(browser, "cam-a", "drift_psi") == "open", 30,
                 "the drift alert on the dashboard")
        assert cells(browser, "cam-a")[10] == "1"  # open alerts column
        browser.save_screenshot(str(tmp_path / "dashboard-alert.png"))
        devices[0].update_telemetry(**CALM)
        wait_for(lambda: alert_state(browser, "cam-a", "drift_psi") == "resolved", 30,
                 "the drift alert resolved")

        # the device page: a chart with data points that grows live
        browser.get(serve.base + "/devices/cam-a")

        def points() -> int:
            return int(browser.execute_script(
                "const c = document.getElementById('chart-fps');"
                "return c ? Number(c.dataset.points || 0) : 0;"))

        wait_for(lambda: points() >= 2, 30, "the fps chart to have data points")
        first = points()
        wait_for(lambda: points() > first, 30, "new points without a reload")
        canvas = browser.find_elements(By.CSS_SELECTOR, "#chart-fps canvas")
        assert canvas and canvas[0].size["width"] > 100
        shot = tmp_path / "device.png"
        browser.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    finally:
        for d in devices:
            d.close()


def test_cameras_down_show_named_and_as_text_then_clear(serve_factory, broker, browser,
                                                        tmp_path):
    """A device reporting sources_down gets a badge naming them (a name that looks like HTML
    stays text), on the fleet table and its page; it goes when the cameras are back."""
    hostile = '<img src=x onerror="document.title=\'owned\'">'
    serve = serve_factory(str(tmp_path / "console.db"))
    device = MqttSync(broker.url, "cam-a", tmp_path / "cam-a.db", **FAST).start()
    try:
        device.update_telemetry(**CALM, sources_down=["lobby", hostile])
        browser.get(serve.base + "/")

        def badge() -> dict | None:
            return browser.execute_script(
                "const r = document.querySelector(`#fleet tr[data-device='cam-a']`);"
                "if (!r) return null; const c = r.cells[r.cells.length - 1];"
                "return {text: c.textContent, down: r.dataset.down,"
                " badges: c.querySelectorAll('span.badge-down').length,"
                " imgs: document.querySelectorAll('#fleet img').length};")

        wait_for(lambda: (badge() or {}).get("down") == "2", 30, "cam-a's cameras down")
        assert badge() == {"text": f"DOWN: lobby, {hostile}", "down": "2", "badges": 1,
                           "imgs": 0}
        header = browser.execute_script(
            "const h = document.querySelectorAll('#fleet thead th');"
            "return h[h.length - 1].textContent;")
        assert header == "Cameras down"
        wait_for(lambda: alert_state(browser, "cam-a", "sources_down") == "open", 30,
                 "the sources_down alert on the dashboard")
        browser.save_screenshot(str(tmp_path / "cameras-down.png"))

        browser.get(serve.base + "/devices/cam-a")

        def summary() -> str | None:
            return browser.execute_script(
                "const r = document.querySelector(`#summary tr[data-key='Cameras down']`);"
                "return r ? r.cells[1].textContent : null;")

        wait_for(lambda: summary() == f"DOWN: lobby, {hostile}", 30, "the device page's row")
        assert browser.title != "owned"

        device.update_telemetry(sources_down=[])
        wait_for(lambda: summary() == "-", 30, "the device page's row cleared")
        browser.get(serve.base + "/")
        wait_for(lambda: (badge() or {}).get("down") == "0", 30, "the fleet row cleared")
        assert badge()["text"] == "-"
        wait_for(lambda: alert_state(browser, "cam-a", "sources_down") == "resolved", 30,
                 "the sources_down alert resolved")
    finally:
        device.close()
