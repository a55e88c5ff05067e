"""Render a self-contained HTML page in a real headless Chromium and measure its layout.

Owns the test-side view of a rendered page: which images decoded and where they sit,
where a chosen element sits, and a screenshot for people to look at. It drives the
system Chromium through its command line only (no Python browser package), so it needs
nothing but the `chromium` binary; tests that use it skip when CHROMIUM is None.

Pages are expected to be self-contained (images as data: URIs): the page is rendered from
a temporary copy, so relative links to files next to the original would not resolve.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

CHROMIUM: str | None = next(
    (p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None
)

# Inspection lays the page out at the same width as a default screenshot, so that the
# measured positions match what a person sees in the picture.
INSPECT_WINDOW = (1200, 3000)

# The machine reaches nothing but package registries and we run as root:
# no sandbox (it refuses to start as root otherwise), no GPU, and no background
# traffic (updates, sync, QUIC probes) that would only wait on the network.
# A fresh profile per call keeps runs independent of each other.
# --disable-dev-shm-usage: containers often have a tiny /dev/shm, where Chromium crashes;
# Debian's launcher is meant to add it then, but its check breaks when findmnt prints
# more than one line, so we do not rely on it.
_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
)

_MARK = "__inspect__"

# Runs on 'load', i.e. after every <img> has either decoded or failed, and writes what it
# saw as JSON into a <pre>, which --dump-dom then prints with the rest of the DOM.
# textContent (not innerHTML) so the page's own text can never break the markup.
_SCRIPT = """<script>
window.addEventListener('load', function () {
  var out;
  try {
    var top = function (r) { return r.top + window.scrollY; };
    var images = Array.prototype.map.call(document.images, function (im) {
      var r = im.getBoundingClientRect();
      return {src: (im.getAttribute('src') || '').slice(0, 40), complete: im.complete,
              naturalWidth: im.naturalWidth, naturalHeight: im.naturalHeight, top: top(r)};
    });
    var el = document.querySelector(%(selector)s);
    var target = {found: !!el, top: null, bottom: null};
    if (el) {
      var r = el.getBoundingClientRect();
      target.top = top(r);
      target.bottom = r.bottom + window.scrollY;
    }
    out = {title: document.title, images: images, target: target};
  } catch (e) {
    out = {error: String(e)};
  }
  var pre = document.createElement('pre');
  pre.id = '%(mark)s';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def _stderr_tail(stderr: str, lines: int = 15) -> str:
    # Without a D-Bus daemon (containers, CI) Chromium logs dozens of harmless
    # "Failed to connect to the bus" errors; drop them so the real cause is visible.
    kept = [ln for ln in stderr.splitlines() if "dbus" not in ln and ln.strip()]
    return "\n".join(kept[-lines:]) or "(no stderr)"


def _run(args: list[str], timeout_s: float) -> subprocess.CompletedProcess:
    """Run Chromium with a fresh profile; on timeout kill its whole process group."""
    if CHROMIUM is None:
        raise RuntimeError("Chromium not installed (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="archbench-chromium-", ignore_cleanup_errors=True) as profile:
        cmd = [CHROMIUM, *_FLAGS, f"--user-data-dir={profile}", *args]
        # Own session: Chromium forks renderer/GPU/zygote helpers, and a timeout must
        # take them all down, not only the launcher script.
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True
        )
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise RuntimeError(
                f"Chromium did not finish within {timeout_s:g} s: {' '.join(cmd)}\n{_stderr_tail(err)}"
            ) from None
        finally:
            # Helpers may outlive the browser process for a moment; none should linger.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def inspect_page(html_path: Path, selector: str, timeout_s: float = 60) -> dict:
    """Load `html_path` in headless Chromium and report what rendered and where.

    Returns {"title": str,
             "images": [{"src": first 40 chars, "complete": bool, "naturalWidth": int,
                         "naturalHeight": int, "top": float}, ...]   (document order),
             "target": {"found": bool, "top": float | None, "bottom": float | None}}
    where tops/bottoms are CSS pixels from the top of the document (not the viewport) and
    `target` is the first element matching the CSS `selector`. An image that failed to
    decode has naturalWidth == 0.
    """
    page = Path(html_path).read_text(encoding="utf-8")
    script = _SCRIPT % {"selector": json.dumps(selector), "mark": _MARK}
    # Before the last </body> so the script is part of the page; pages without one
    # (the parser tolerates that) get it at the end.
    cut = page.lower().rfind("</body>")
    page = page + script if cut < 0 else page[:cut] + script + page[cut:]
    with tempfile.TemporaryDirectory(prefix="archbench-page-") as tmp:
        copy = Path(tmp) / "page.html"
        copy.write_text(page, encoding="utf-8")
        # The virtual-time budget lets the page settle (load, decode, layout) without
        # waiting in real time; --dump-dom then prints the DOM as it stands.
        done = _run(
            ["--dump-dom", "--virtual-time-budget=10000", "--window-size={},{}".format(*INSPECT_WINDOW), copy.as_uri()],
            timeout_s,
        )
    m = re.search(rf'<pre id="{_MARK}">(.*?)</pre>', done.stdout, re.S)
    if done.returncode != 0 or m is None:
        raise RuntimeError(
            f"Chromium returned no inspection result for {html_path} "
            f"(exit status {done.returncode}):\n{_stderr_tail(done.stderr)}"
        )
    result = json.loads(html.unescape(m.group(1)))
    if "error" in result:
        raise RuntimeError(f"inspection script failed on {html_path}: {result['error']}")
    # JSON drops the distinction between 8 and 8.0; hand back floats as documented.
    for im in result["images"]:
        im["top"] = float(im["top"])
    for key in ("top", "bottom"):
        if result["target"][key] is not None:
            result["target"][key] = float(result["target"][key])
    return result


def screenshot(html_path: Path, png_path: Path, width: int = 1200, height: int = 3000, timeout_s: float = 60) -> Path:
    """Render `html_path` into a width x height PNG at `png_path` (for people to look at)."""
    png_path = Path(png_path).resolve()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    done = _run(
        [
            f"--screenshot={png_path}",
            f"--window-size={width},{height}",
            "--virtual-time-budget=10000",
            Path(html_path).resolve().as_uri(),
        ],
        timeout_s,
    )
    if done.returncode != 0 or not png_path.is_file():
        raise RuntimeError(
            f"Chromium wrote no screenshot of {html_path} (exit status {done.returncode}):\n{_stderr_tail(done.stderr)}"
        )
    return png_path
