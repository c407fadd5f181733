"""A finished flow run's page in the Prefect UI, rendered by headless Chromium: its text, and a screenshot.

    KEEP_UI=1 make demo                      # leaves the demo's Prefect server up; prints its UI address
    .venv/bin/python bench/ui_screenshot.py --ui http://127.0.0.1:PORT [--flow-run ID] [--out docs/img/flow-run.png]

Without --flow-run it takes the newest finished run of flow `train`. The browser is Debian's `chromium` (apt-get
install chromium), driven through the DevTools protocol over a websocket (the `websockets` package Prefect already
depends on): `--dump-dom` cannot wait for a single-page app to fetch and render its data, this can (it waits for
given text). tests/browser/test_prefect_ui.py uses the same `Chromium`.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
WINDOW = (1400, 1000)


def find_chromium() -> str | None:
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


class Chromium:
    """A headless Chromium process and one page of it, driven through the DevTools protocol.

    Commands: https://chromedevtools.github.io/devtools-protocol/ (Target.createTarget, Page.navigate,
    Runtime.evaluate, Emulation.setDeviceMetricsOverride, Page.captureScreenshot)."""

    def __init__(self, executable: str | None = None, window: tuple[int, int] = WINDOW, timeout: float = 60):
        executable = executable or find_chromium()
        if executable is None:
            raise FileNotFoundError("chromium is not installed: apt-get install chromium")
        # ignore_cleanup_errors: a child still closing its files as the profile goes must not fail the caller.
        self._profile = tempfile.TemporaryDirectory(prefix="finsent-chromium-", ignore_cleanup_errors=True)
        # --remote-debugging-port=0: Chromium picks a free port and writes it to DevToolsActivePort in the profile.
        self._process = subprocess.Popen(
            [executable, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--no-default-browser-check", "--remote-debugging-port=0",
             f"--user-data-dir={self._profile.name}", f"--window-size={window[0]},{window[1]}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.window, self._next_id = window, 0
        try:
            port = self._devtools_port(timeout)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
                page = next(t for t in json.loads(response.read()) if t["type"] == "page")
            from websockets.sync.client import connect

            self._ws = connect(page["webSocketDebuggerUrl"], max_size=64 * 2**20, open_timeout=timeout)
            self._viewport(window[1])
        except BaseException:
            self.close()
            raise

    def _viewport(self, height: int) -> None:
        self.call("Emulation.setDeviceMetricsOverride", width=self.window[0], height=height, deviceScaleFactor=1,
                  mobile=False)

    def _devtools_port(self, timeout: float) -> int:
        marker = Path(self._profile.name) / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"chromium exited ({self._process.returncode}) before it opened DevTools")
            if marker.exists() and (lines := marker.read_text().splitlines()):
                return int(lines[0])
            time.sleep(0.1)
        raise TimeoutError(f"chromium did not open DevTools within {timeout:.0f}s")

    def call(self, method: str, **params) -> dict:
        """One DevTools command; its result (events in between are dropped)."""
        self._next_id += 1
        self._ws.send(json.dumps({"id": self._next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv(timeout=60))
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str, await_promise: bool = False):
        """The expression's value (a promise's, awaited, with `await_promise`)."""
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                         awaitPromise=await_promise)["result"].get("value")

    def open(self, url: str, wait_for: tuple[str, ...] = (), timeout: float = 60) -> str:
        """Navigate to `url` and wait until the page's text holds every string of `wait_for`; that text.

        Raises AssertionError naming what is missing (and the text seen) after `timeout`."""
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.evaluate("document.body ? document.body.innerText : ''") or ""
            if all(fragment in text for fragment in wait_for):
                return text
            time.sleep(0.25)
        missing = [fragment for fragment in wait_for if fragment not in text]
        raise AssertionError(f"{url}: {missing} not on the page after {timeout:.0f}s; it shows:\n{text[:3000]}")

    def screenshot(self, path: Path, full_page: bool = False) -> Path:
        """A PNG of the viewport, or of the whole page's height at the window's width."""
        height = self.window[1]
        if full_page:  # a viewport as tall as the page; the run graph's canvas is redrawn at that size first
            height = max(height, self.evaluate(
                "Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)") or 0)
            self._viewport(height)
            time.sleep(3)
        try:
            data = self.call("Page.captureScreenshot", format="png")["data"]
        finally:
            self._viewport(self.window[1])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        if getattr(self, "_ws", None) is not None:
            self._ws.close()
        # The whole process group: Chromium's renderer and GPU processes are its children.
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(self._process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self._process.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        self._profile.cleanup()

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def flow_run_url(ui: str, flow_run_id: str, tab: str | None = None) -> str:
    """The UI's flow-run page in Prefect 3's default UI, ui-v2, served under /v2 (the server sends `/` there; a path
    without it is the older UI): route /runs/flow-run/$id, its `tab` search parameter (Logs, Artifacts, ...)."""
    return f"{ui.rstrip('/')}/v2/runs/flow-run/{flow_run_id}" + (f"?tab={tab}" if tab else "")


def shoot_flow_run(browser: Chromium, ui: str, flow_run_id: str, out: Path, tab: str = "Artifacts",
                   wait_for: tuple[str, ...] = ()) -> Path:
    """The flow run page's `tab`, once it shows `wait_for`, as a full-page PNG (what docs/img/flow-run.png is)."""
    browser.open(flow_run_url(ui, flow_run_id, tab), wait_for=wait_for, timeout=90)
    time.sleep(5)  # the run graph is a canvas drawn after its data arrives: nothing in the text says when
    return browser.screenshot(out, full_page=True)


def newest_train_run(ui: str) -> str:
    body = {"flows": {"name": {"any_": ["train"]}}, "flow_runs": {"state": {"type": {"any_": [
        "COMPLETED", "FAILED"]}}}, "sort": "END_TIME_DESC", "limit": 1}
    request = urllib.request.Request(f"{ui.rstrip('/')}/api/flow_runs/filter", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        runs = json.loads(response.read())
    if not runs:
        raise SystemExit(f"finsent: error: {ui} has no finished run of flow train")
    return runs[0]["id"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ui", required=True, help="the Prefect UI's address, e.g. http://127.0.0.1:4200")
    parser.add_argument("--flow-run", help="a flow run id (default: the newest finished run of flow train)")
    parser.add_argument("--out", type=Path, default=Path("docs/img/flow-run.png"))
    parser.add_argument("--tab", default="Artifacts", help="the flow run page's tab to show")
    parser.add_argument("--wait-for", action="append", help="text to wait for before the shot (repeatable)",
                        default=["finsent-metrics", "finsent-summary"])
    args = parser.parse_args(argv)
    flow_run_id = args.flow_run or newest_train_run(args.ui)
    with Chromium() as browser:
        print(shoot_flow_run(browser, args.ui, flow_run_id, args.out, args.tab, tuple(args.wait_for)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
