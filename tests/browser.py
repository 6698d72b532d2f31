"""Headless Chromium driven over the DevTools protocol: load a page, read its DOM, console and a screenshot.

Debian's ``chromium`` package (``.ci/run`` installs it where missing) and ``websocket-client`` (the dev
extra). Import from a test with ``sys.path`` pointing at ``tests/``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def chromium_binary() -> str | None:
    """The Chromium on PATH (``chromium``, ``chromium-browser`` or ``google-chrome``), or ``None``."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@dataclass
class PageLoad:
    """What one page load gave: the value of ``probe`` (a JS expression), the errors, the screenshot file."""

    probe: Any
    errors: list[str] = field(default_factory=list)
    screenshot: Path | None = None


def load_page(path: Path, probe: str, screenshot: Path | None = None, timeout: float = 60.0) -> PageLoad:
    """Open ``path`` (a local file) in headless Chromium, wait for its load event and evaluate ``probe``.

    Errors are every console ``error`` / ``assert``, uncaught exception and browser log entry of level
    ``error`` (failed image loads, blocked requests) seen until the probe ran.
    """
    from websocket import create_connection

    profile = tempfile.mkdtemp(prefix="chromium-")
    command = [
        chromium_binary() or "chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-dev-shm-usage", "--remote-debugging-port=0", "--remote-allow-origins=*",
        f"--user-data-dir={profile}", "--window-size=1280,900", "about:blank",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        port = _devtools_port(process, Path(profile), timeout)
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        page = next(t for t in targets if t.get("type") == "page")
        socket = create_connection(page["webSocketDebuggerUrl"], timeout=timeout)
        session = _Session(socket)
        for domain in ("Page", "Runtime", "Log"):
            session.call(f"{domain}.enable")
        session.call("Page.navigate", url=path.resolve().as_uri())
        session.wait_for("Page.loadEventFired", timeout)
        value = session.call("Runtime.evaluate", expression=probe, returnByValue=True, awaitPromise=True)
        result = PageLoad(value["result"].get("value"), session.errors)
        if screenshot is not None:
            shot = session.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
            result.screenshot = screenshot
        socket.close()
        return result
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(profile, ignore_errors=True)


def _devtools_port(process: subprocess.Popen, profile: Path, timeout: float) -> int:
    # Chromium writes the port it chose into DevToolsActivePort in its profile once it listens.
    deadline = time.monotonic() + timeout
    marker = profile / "DevToolsActivePort"
    while time.monotonic() < deadline:
        if marker.is_file():
            text = marker.read_text().split()
            if text and re.fullmatch(r"\d+", text[0]):
                return int(text[0])
        if process.poll() is not None:
            raise RuntimeError(f"chromium exited with {process.returncode}: {process.stderr.read()[-2000:]}")
        time.sleep(0.1)
    raise TimeoutError(f"chromium did not open its DevTools port within {timeout} s")


class _Session:
    """Request/response over one DevTools websocket; events are recorded as they pass."""

    def __init__(self, socket: Any):
        self.socket = socket
        self.next_id = 0
        self.events: list[str] = []
        self.errors: list[str] = []

    def _record(self, message: dict[str, Any]) -> None:
        method, params = message.get("method", ""), message.get("params", {})
        self.events.append(method)
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            values = (str(a.get("value", a.get("description"))) for a in params["args"])
            self.errors.append("console: " + " ".join(values))
        elif method == "Runtime.exceptionThrown":
            self.errors.append("exception: " + params["exceptionDetails"].get("text", ""))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            self.errors.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self._record(message)

    def wait_for(self, event: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while event not in self.events:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {event} within {timeout} s")
            self._record(json.loads(self.socket.recv()))


def environment_note() -> str:
    """Why the browser test cannot run here (for the skip message)."""
    return f"chromium not on PATH ({os.environ.get('PATH', '')[:80]}…): apt-get install chromium (.ci/run does)"
