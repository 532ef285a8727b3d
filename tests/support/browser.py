"""What a person sees in a web UI, through headless Chromium: the rendered DOM or a screenshot.

MLflow and JupyterLab are JavaScript apps: the HTML the server sends is an empty shell, so tests that
want to check the page itself (not the REST API) need a real browser to run the app first. Only the
standard library is used; the browser is the system's Chromium, never downloaded.
"""

import os
import shutil
import signal
import subprocess
from html.parser import HTMLParser
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# Virtual time fast-forwards the app's timers, and stands still while requests are in flight, so a
# generous budget costs little wall time. MLflow renders within 1 s of virtual time, JupyterLab needs
# about 3 s to show a notebook's cells; 10 s leaves room on a slow machine.
DEFAULT_BUDGET_MS = 10_000
# MLflow's runs table (ag-grid) only renders the columns that fit: the width decides which headers
# are in the DOM at all.
DEFAULT_WINDOW = (1400, 900)


def chromium_path():
    """The Chromium (or Chrome) binary on PATH, or None so that browser tests can skip."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def dump_dom(url, profile_dir, budget_ms=DEFAULT_BUDGET_MS, window=DEFAULT_WINDOW, timeout=120):
    """The DOM of url once its JavaScript has run, as HTML text.

    profile_dir holds the browser profile; give each check a new, empty one: apps keep state in
    localStorage (MLflow its GenAI / Model training mode and whether its assistant panel was opened),
    and two Chromiums cannot share a profile at the same time.
    """
    return _run(["--dump-dom", url], profile_dir, budget_ms, window, timeout)


def screenshot(url, path, profile_dir, budget_ms=DEFAULT_BUDGET_MS, window=DEFAULT_WINDOW, timeout=120):
    """Save a PNG of url as it looks after budget_ms of virtual time; return its Path."""
    path = Path(path).resolve()
    path.unlink(missing_ok=True)
    _run([f"--screenshot={path}", url], profile_dir, budget_ms, window, timeout)
    if not path.is_file():
        raise AssertionError(f"Chromium wrote no screenshot of {url}")
    return path


def visible_text(html):
    """The text a person can read in html, without scripts, styles, SVG or attribute values.

    Assert on this rather than on the raw DOM: the raw DOM also holds placeholders and tooltips
    (MLflow's search box reads 'metrics.rmse < 1' whatever the table shows).
    """
    parser = _TextParser()
    parser.feed(html)
    return " | ".join(parser.chunks)


def _run(action, profile_dir, budget_ms, window, timeout):
    binary = chromium_path()
    if binary is None:
        raise RuntimeError("no Chromium on PATH")
    command = [
        binary,
        "--headless",  # no display in CI or in containers
        "--no-sandbox",  # the sandbox cannot start as root or without user namespaces (containers)
        "--disable-gpu",  # no GPU there either; software rendering gives the same pixels everywhere
        "--disable-dev-shm-usage",  # Docker's 64 MB /dev/shm makes renderers crash on big pages
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={Path(profile_dir).resolve()}",
        f"--window-size={window[0]},{window[1]}",
        # Without it Chromium dumps the page as soon as the HTML is parsed, before the app has run.
        f"--virtual-time-budget={budget_ms}",
        *action,
    ]
    Path(profile_dir).mkdir(parents=True, exist_ok=True)
    # A session of its own, so a timeout can kill the renderer and GPU helpers along with the browser.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise AssertionError(f"Chromium did not finish {action[-1]} within {timeout}s") from None
    # A page that cannot load still exits 0, with an empty dump and this line on stderr.
    failed = [line for line in err.splitlines() if "Page load failed" in line]
    if process.returncode != 0 or failed:
        raise AssertionError(f"Chromium failed on {action[-1]} (exit {process.returncode}):\n"
                             + "\n".join(failed or err.splitlines()[-10:]))
    return out


class _TextParser(HTMLParser):
    HIDDEN = {"script", "style", "svg", "noscript"}

    def __init__(self):
        super().__init__()
        self.hidden_depth = 0
        self.chunks = []

    def handle_starttag(self, tag, attrs):
        if tag in self.HIDDEN:
            self.hidden_depth += 1

    def handle_endtag(self, tag):
        if tag in self.HIDDEN and self.hidden_depth:
            self.hidden_depth -= 1

    def handle_data(self, data):
        if not self.hidden_depth and data.strip():
            self.chunks.append(data.strip())
