"""Headless Chromium driven over the DevTools protocol, for the status page's tests.

``Browser`` starts one Chromium with a fresh profile in a temporary directory,
reads the DevTools address from the line it prints on stderr, and talks to
it over that one websocket (the ``websockets`` package, synchronous client).
``close()`` kills Chromium's whole process group -- the group it was started
in, of which it is the leader -- and removes the profile.

``Browser.page()`` opens a tab in a browser context of its own (its own
cookies and sessionStorage), attached in flat mode: commands and events for
every tab travel over the browser's websocket, tagged with a session id.
Messages are read only while a command waits for its answer; the events read
on the way are kept, in order, so a round trip is enough to have seen every
event sent before it (``Page.problems()`` relies on that).

Nothing here sleeps to let time pass: every wait polls a condition until a
deadline, and fails with what it was waiting for.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")

FLAGS = (
    "--headless",
    "--no-sandbox",  # we run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",  # screenshots show the page, not a scrollbar's width less of it
    "--remote-debugging-port=0",
)
LISTENING = re.compile(r"DevTools listening on (ws://\S+)")


class DevToolsError(RuntimeError):
    """A DevTools command failed, or the page threw while evaluating an expression."""


class Browser:
    """One headless Chromium; ``page()`` opens tabs, ``close()`` kills it. Usable as a context manager."""

    def __init__(self, executable: str | None = None, start_timeout_s: float = 20.0):
        from websockets.sync.client import connect

        executable = executable or CHROMIUM
        if executable is None:
            raise FileNotFoundError("chromium is not installed")
        self.profile = Path(tempfile.mkdtemp(prefix="simplelb-chromium-"))
        self._stderr = open(self.profile / "stderr.log", "wb")  # a file, not a pipe: nobody must drain it
        self.proc = subprocess.Popen(
            [executable, *FLAGS, f"--user-data-dir={self.profile / 'profile'}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr,
            start_new_session=True,  # its own process group: close() kills the renderers with it
        )
        self._ws = None
        self._exit = ExitStack()  # closes the websocket
        try:
            url = self._devtools_url(start_timeout_s)
            self._ws = self._exit.enter_context(
                connect(url, max_size=None, proxy=None, compression=None, ping_interval=None, open_timeout=10))
        except BaseException:
            self.close()
            raise
        self._next_id = 0
        self.events: list[dict] = []

    def _devtools_url(self, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        log = self.profile / "stderr.log"
        while True:
            text = log.read_text(errors="replace")
            match = LISTENING.search(text)
            if match:
                return match.group(1)
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode} before listening:\n{text[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"chromium printed no DevTools address within {timeout_s}s:\n{text[-3000:]}")
            time.sleep(0.02)

    # --- the protocol -------------------------------------------------------------

    def call(self, method: str, session: str | None = None, timeout_s: float = 10.0, **params) -> dict:
        """Send one command and return its result, keeping the events that arrive meanwhile."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        self._ws.send(json.dumps(message))
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no answer to {method} within {timeout_s}s")
            reply = json.loads(self._ws.recv(timeout=remaining))
            if "method" in reply:
                self.events.append(reply)
            elif reply.get("id") == self._next_id:
                if "error" in reply:
                    raise DevToolsError(f"{method}: {reply['error'].get('message')} {reply['error'].get('data', '')}")
                return reply.get("result", {})

    def wait_event(self, method: str, session: str | None, since: int, timeout_s: float = 10.0) -> dict:
        """The first event ``method`` of ``session`` at or after index ``since`` of ``events``."""
        deadline = time.monotonic() + timeout_s
        while True:
            for event in self.events[since:]:
                if event["method"] == method and event.get("sessionId") == session:
                    return event
            since = len(self.events)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {method} event within {timeout_s}s")
            try:
                message = json.loads(self._ws.recv(timeout=remaining))
            except TimeoutError:
                continue
            if "method" in message:
                self.events.append(message)

    def page(self) -> Page:
        """A new tab in a fresh browser context, with the Runtime, Log and Page domains on."""
        context = self.call("Target.createBrowserContext")["browserContextId"]
        target = self.call("Target.createTarget", url="about:blank", browserContextId=context)["targetId"]
        session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        page = Page(self, session, target, context)
        for domain in ("Runtime", "Log", "Page"):
            page.call(f"{domain}.enable")
        return page

    def close(self) -> None:
        self._exit.close()
        self._ws = None
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(10)
        self._stderr.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Page:
    """One tab: navigate, evaluate, wait for a condition, emulate a screen, take a screenshot."""

    def __init__(self, browser: Browser, session: str, target: str, context: str):
        self.browser = browser
        self.session = session
        self.target = target
        self.context = context

    def call(self, method: str, timeout_s: float = 10.0, **params) -> dict:
        return self.browser.call(method, session=self.session, timeout_s=timeout_s, **params)

    def goto(self, url: str, timeout_s: float = 10.0) -> None:
        """Load ``url`` and wait for its load event."""
        since = len(self.browser.events)
        answer = self.call("Page.navigate", url=url)
        if answer.get("errorText"):
            raise DevToolsError(f"cannot load {url}: {answer['errorText']}")
        self.browser.wait_event("Page.loadEventFired", self.session, since, timeout_s)

    def reload(self, timeout_s: float = 10.0) -> None:
        since = len(self.browser.events)
        self.call("Page.reload")
        self.browser.wait_event("Page.loadEventFired", self.session, since, timeout_s)

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression (promises are awaited); a thrown error raises."""
        answer = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in answer:
            details = answer["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise DevToolsError(f"{expression!r} threw: {text}")
        return answer["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 5.0, what: str | None = None) -> Any:
        """Evaluate ``expression`` until it is truthy; return its value, or fail after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s}s waiting for {what or expression}")
            time.sleep(0.05)  # the page changes once a second: asking 20 times a second is plenty

    def problems(self) -> list[str]:
        """Console errors, uncaught exceptions and browser-logged errors in this tab so far."""
        self.evaluate("0")  # a round trip: every event sent before it has been read
        found = []
        for event in self.browser.events:
            if event.get("sessionId") != self.session:
                continue
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
                found.append(f"console.{params['type']}: {text}")
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                found.append("exception: " + (details.get("exception", {}).get("description") or details.get("text", "")))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]
                found.append(f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}".strip())
        return found

    def emulate(self, width: int, height: int, dark: bool) -> None:
        """A screen ``width`` x ``height`` CSS pixels, in the dark or the light colour scheme."""
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        scheme = "dark" if dark else "light"
        self.call("Emulation.setEmulatedMedia", features=[{"name": "prefers-color-scheme", "value": scheme}])
        self.wait_for(f"matchMedia('(prefers-color-scheme: {scheme})').matches && innerWidth === {width}",
                      what=f"a {width} px {scheme} screen")
        self.next_frame()

    def next_frame(self) -> None:
        """Wait until the page has painted twice (styles and layout applied)."""
        self.evaluate("new Promise(done => requestAnimationFrame(() => requestAnimationFrame(() => done(true))))")

    def screenshot(self, path: Path, width: int, dark: bool) -> Path:
        """The whole page (not only the screen) at ``width`` px, as a PNG at ``path``."""
        self.emulate(width, 800, dark)
        size = self.call("Page.getLayoutMetrics")["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": width, "height": max(200, size["height"]), "scale": 1}
        data = self.call("Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def reset(self) -> None:
        """Back to a blank tab at the default screen, with the events seen so far forgotten.

        Opening a tab costs a renderer's start (most of a second on a busy
        machine); a test that only needs a clean tab reuses one. Storage is per
        origin, and every balancer has a port of its own, so no test sees
        another's sessionStorage.
        """
        self.goto("about:blank")
        self.call("Emulation.clearDeviceMetricsOverride")
        self.call("Emulation.setEmulatedMedia", features=[])
        self.browser.events = [e for e in self.browser.events if e.get("sessionId") != self.session]

    def close(self) -> None:
        self.browser.call("Target.closeTarget", targetId=self.target)
        self.browser.call("Target.disposeBrowserContext", browserContextId=self.context)
