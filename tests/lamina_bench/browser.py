"""Headless Chromium for tests: open a local HTML file and report what a user's browser would see.

The browser is Debian's `chromium`, driven over the DevTools protocol through `--remote-debugging-pipe`
(JSON messages separated by NUL bytes on file descriptors 3 and 4 of the child), so no websocket client
and no TCP port are needed. Chrome DevTools Protocol reference: https://chromedevtools.github.io/devtools-protocol/

    path, reason = ensure_chromium()        # installs Debian's chromium with apt-get when missing
    with Chromium(path) as browser:
        check = browser.check_report(html_path, screenshot=tmp / "report.png")
    assert not check.problems(), check.problems()

`check_report` knows the report's page contract (lamina_bench/report/page.py): every figure is a
`div.plot`, the figure specs sit in `script#report-figures`, and the loader sets
`window.__laminaReport = {done, drawn, failed, ms}` once every figure has been drawn.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
# Flags: no sandbox (containers run as root), no GPU, and nothing that phones home on its own, so every
# network request seen during a test comes from the page.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-pipe",
)
VIEWPORT = (1400, 1000)  # CSS pixels


def ensure_chromium(path: str = CHROMIUM, timeout_s: float = 900) -> tuple[str | None, str | None]:
    """(path, None) when chromium is installed or could be installed with apt-get, else (None, reason)."""
    if Path(path).is_file():
        return path, None
    if shutil.which("apt-get") is None:
        return None, f"{path} is missing and apt-get is not available to install Debian's chromium"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"`{' '.join(cmd)}` failed: {exc}"
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            return None, f"`{' '.join(cmd)}` exited {done.returncode}: {last}"
    return (
        (path, None) if Path(path).is_file() else (None, f"apt-get installed chromium but {path} is missing")
    )


class CdpError(RuntimeError):
    """The browser answered a command with an error, died, or did not answer in time."""


class _Pipe:
    """NUL-separated JSON messages to and from the browser; events are kept in arrival order."""

    def __init__(self, to_browser: int, from_browser: int) -> None:
        self._out, self._in = to_browser, from_browser
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: Mapping[str, Any] | None = None, session: str | None = None,
             timeout_s: float = 30.0) -> dict[str, Any]:  # fmt: skip
        """Send one command and wait for its answer; events that arrive meanwhile go to `self.events`."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": dict(params or {})}
        if session:
            message["sessionId"] = session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout_s
        while True:
            reply = self._read(deadline, what=method)
            if reply.get("id") != self._next_id:
                self.events.append(reply)
                continue
            if "error" in reply:
                raise CdpError(f"{method}: {reply['error'].get('message')}")
            return reply.get("result", {})

    def pump(self, seconds: float) -> None:
        """Collect events for `seconds`."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                self.events.append(self._read(deadline, what="events"))
            except TimeoutError:
                return

    def _read(self, deadline: float, what: str) -> dict[str, Any]:
        import select

        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._in], [], [], left)[0]:
                raise TimeoutError(f"no answer from chromium to {what}")
            chunk = os.read(self._in, 1 << 20)
            if not chunk:
                raise CdpError(f"chromium closed the DevTools pipe while waiting for {what}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)


@dataclass(frozen=True)
class FigureState:
    """What the browser drew in one `div.plot`."""

    id: str
    has_svg: bool
    traces: int  # plotly trace groups (g.trace) inside the figure's SVG
    marks: int  # drawn SVG paths (lines, markers, bars) inside those trace groups
    width_px: float
    height_px: float

    @property
    def rendered(self) -> bool:
        return (
            self.has_svg and self.traces > 0 and self.marks > 0 and self.width_px > 0 and self.height_px > 0
        )


@dataclass(frozen=True)
class PageCheck:
    """Everything `Chromium.check_report` saw while opening one page."""

    url: str
    load_ms: float | None  # navigation start -> every figure drawn (performance.now() in the page)
    wall_s: float  # Page.navigate -> loader done, measured here
    console_errors: tuple[str, ...]
    requests: tuple[str, ...]  # every URL the page asked for, in order
    figures: tuple[FigureState, ...]
    expected_figures: int  # figure specs embedded in the page
    loader: Mapping[str, Any] | None  # window.__laminaReport
    screenshot: Path | None

    @property
    def network_requests(self) -> list[str]:
        """Requests other than the file itself (data: and blob: URLs never leave the page)."""
        return [u for u in self.requests if u != self.url and not u.startswith(("data:", "blob:"))]

    def problems(self) -> list[str]:
        """One line per thing that is wrong; empty when the page is fine."""
        out = [f"console error: {e}" for e in self.console_errors]
        out += [f"network request: {u}" for u in self.network_requests]
        if self.loader is None or not self.loader.get("done"):
            out.append(f"the figure loader did not finish: {self.loader}")
        elif self.loader.get("failed"):
            out.append(f"figures failed to draw: {self.loader['failed']}")
        if len(self.figures) != self.expected_figures:
            out.append(f"{len(self.figures)} figure divs for {self.expected_figures} embedded figure specs")
        out += [f"figure {f.id} not rendered: {f}" for f in self.figures if not f.rendered]
        return out


_FIGURES_JS = """JSON.stringify({
  figures: Array.from(document.querySelectorAll('div.plot')).map(d => {
    const r = d.getBoundingClientRect();
    return {id: d.id, has_svg: !!d.querySelector('svg.main-svg'),
            traces: d.querySelectorAll('svg.main-svg g.trace').length,
            marks: d.querySelectorAll('svg.main-svg g.trace path').length, width_px: r.width, height_px: r.height};
  }),
  expected: (() => { const s = document.getElementById('report-figures');
                     return s ? Object.keys(JSON.parse(s.textContent)).length : 0; })(),
  loader: window.__laminaReport || null,
})"""


class Chromium:
    """One headless browser process; `check_report` opens each page in a fresh tab."""

    def __init__(self, path: str = CHROMIUM) -> None:
        self.path = path
        self._profile = tempfile.TemporaryDirectory(prefix="lamina-chromium-")
        self._proc: subprocess.Popen | None = None
        self._pipe: _Pipe | None = None

    def __enter__(self) -> Chromium:
        import fcntl

        to_r, to_w = os.pipe()  # we write commands, the browser reads them on its fd 3
        from_r, from_w = os.pipe()  # the browser writes answers on its fd 4
        # The child's ends above fd 10 first, so moving them onto 3 and 4 cannot overwrite one another.
        child_r, child_w = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_r, from_w))
        for fd in (to_r, from_w):
            os.close(fd)

        def child_fds() -> None:  # runs in the child before exec; fds 3 and 4 are kept (pass_fds)
            os.dup2(child_r, 3)
            os.dup2(child_w, 4)

        args = [self.path, *FLAGS, f"--user-data-dir={self._profile.name}",
                f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}", "about:blank"]  # fmt: skip
        self._log = open(Path(self._profile.name) / "chromium-stderr.log", "wb")  # noqa: SIM115
        self._proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
            pass_fds=(3, 4), preexec_fn=child_fds,
        )  # fmt: skip
        os.close(child_r)
        os.close(child_w)
        self._fds = (to_w, from_r)
        self._pipe = _Pipe(to_w, from_r)
        try:
            self._pipe.send("Browser.getVersion", timeout_s=60)  # waits until the browser is up
        except (CdpError, TimeoutError) as exc:
            self.__exit__(None, None, None)
            raise CdpError(f"chromium did not start: {exc}; its log ends: {self._log_tail()}") from None
        return self

    def _log_tail(self) -> str:
        try:
            lines = (
                (Path(self._profile.name) / "chromium-stderr.log").read_text(errors="replace").splitlines()
            )
        except OSError:
            return "(no log)"
        return " | ".join(lines[-5:]) or "(empty)"

    def __exit__(self, *exc: object) -> None:
        if self._pipe is not None:
            with contextlib.suppress(CdpError, TimeoutError, OSError):
                self._pipe.send("Browser.close", timeout_s=10)
        if self._proc is not None:
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        for fd in getattr(self, "_fds", ()):
            os.close(fd)
        self._fds = ()
        self._pipe = None
        if getattr(self, "_log", None) is not None:
            self._log.close()
        self._profile.cleanup()

    def check_report(self, html: str | Path, screenshot: str | Path | None = None,
                     timeout_s: float = 30.0) -> PageCheck:  # fmt: skip
        """Open `html`, wait for the report's figure loader, and collect errors, requests and figures."""
        pipe = self._pipe
        if pipe is None:
            raise CdpError("use Chromium(...) as a context manager")
        url = Path(html).resolve().as_uri()
        target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        try:
            for domain in ("Runtime", "Log", "Network", "Page"):
                pipe.send(f"{domain}.enable", session=session)
            pipe.send("Emulation.setDeviceMetricsOverride", {"width": VIEWPORT[0], "height": VIEWPORT[1],
                      "deviceScaleFactor": 1, "mobile": False}, session=session)  # fmt: skip
            start = len(pipe.events)
            t0 = time.monotonic()
            pipe.send("Page.navigate", {"url": url}, session=session)
            loader = self._wait_loader(session, time.monotonic() + timeout_s)
            wall_s = time.monotonic() - t0
            pipe.pump(0.2)  # late console messages
            state = self._eval(session, _FIGURES_JS)
            shot = self._screenshot(session, Path(screenshot)) if screenshot else None
            events = [e for e in pipe.events[start:] if e.get("sessionId") == session]
        finally:
            pipe.send("Target.closeTarget", {"targetId": target})
        return PageCheck(
            url=url, load_ms=(loader or {}).get("ms"), wall_s=wall_s,
            console_errors=tuple(_console_errors(events)), requests=tuple(_requests(events)),
            figures=tuple(FigureState(**f) for f in state["figures"]), expected_figures=state["expected"],
            loader=state["loader"], screenshot=shot,
        )  # fmt: skip

    def _eval(self, session: str, expression: str) -> Any:
        result = self._pipe.send("Runtime.evaluate", {"expression": expression, "returnByValue": True},
                                 session=session)  # fmt: skip
        if "exceptionDetails" in result:
            raise CdpError(f"evaluating a check in the page failed: {result['exceptionDetails'].get('text')}")
        value = result["result"].get("value")
        return json.loads(value) if isinstance(value, str) else value

    def _wait_loader(self, session: str, deadline: float) -> dict[str, Any] | None:
        """Poll window.__laminaReport until done (or the deadline); None if the page never set it."""
        loader = None
        while time.monotonic() < deadline:
            try:
                loader = self._eval(session, "JSON.stringify(window.__laminaReport || null)")
            except CdpError:  # the page is between documents while navigating
                loader = None
            if loader and loader.get("done"):
                return loader
            self._pipe.pump(0.05)
        return loader

    def _screenshot(self, session: str, path: Path) -> Path:
        """Full-page PNG at 1 CSS px = 1 px."""
        size = self._pipe.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": VIEWPORT[0], "height": min(size["height"], 30000), "scale": 1}
        shot = self._pipe.send("Page.captureScreenshot", {"format": "png", "clip": clip,
                               "captureBeyondViewport": True}, session=session, timeout_s=60)  # fmt: skip
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path


def _console_errors(events: list[dict[str, Any]]) -> list[str]:
    """Console errors, uncaught exceptions and browser log errors (e.g. a failed resource load)."""
    out = []
    for e in events:
        method, p = e.get("method"), e.get("params", {})
        if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            details = p.get("exceptionDetails", {})
            out.append(details.get("exception", {}).get("description") or details.get("text", "exception"))
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            entry = p["entry"]
            out.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".strip())
    return out


def _requests(events: list[dict[str, Any]]) -> list[str]:
    return [e["params"]["request"]["url"] for e in events if e.get("method") == "Network.requestWillBeSent"]
