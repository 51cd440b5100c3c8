"""Checks the built documentation site in a real headless browser.

Serves `site/` over HTTP on localhost and opens it in Chromium at a window
1280 px wide: the landing page must render (its heading and the navigation
present in the DOM after the scripts ran), every page of the navigation must
open and render, no link, image, stylesheet or script of any page may point at
a missing file or anchor, and nothing may run off the right edge: the page
must not scroll sideways, and no element of a page's text (a code block, a
table, an image) may reach past the text's column unless a box of its own
scrolls or clips it. Links to other sites are counted, not fetched: the check
runs offline. A screenshot of each page, the whole page's height, is written to
the screenshots folder, for a person to look at.

Usage: python .ci/browse_docs.py [SITE_DIR] [--screenshots DIR]
       (exit 0: passed, 1: failed; screenshots default to docs-screenshots/)
"""

from __future__ import annotations

import functools
import html.parser
import http.server
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--virtual-time-budget=5000",
    "--hide-scrollbars",
)
WIDTH = 1280
HEIGHT = 900
# The tallest screenshot taken, in pixels; a longer page is cut there.
MAX_SCREENSHOT_HEIGHT = 12000

# Served at the end of every HTML page: once the page has loaded, it measures
# the layout and writes the result into the DOM, where --dump-dom shows it.
MEASURE = """
<script>
window.addEventListener("load", () => {
  const root = document.documentElement;
  const column = document.querySelector(".md-content") || document.body;
  const limit = column.getBoundingClientRect().right + 1;
  const clips = (element) => {
    const overflow = getComputedStyle(element).overflowX;
    return ["auto", "scroll", "hidden", "clip"].includes(overflow);
  };
  const overflowing = [];
  for (const element of column.querySelectorAll("*")) {
    const box = element.getBoundingClientRect();
    if (!box.width || !box.height || box.right <= limit) continue;
    if (getComputedStyle(element).visibility === "hidden") continue;
    let clipped = false;
    for (let up = element.parentElement; up && up !== column; up = up.parentElement) {
      if (clips(up) && up.getBoundingClientRect().right <= limit) {
        clipped = true;
        break;
      }
    }
    if (clipped) continue;
    const text = (element.textContent || "").trim().replace(/\\s+/g, " ");
    overflowing.push(
      `<${element.tagName.toLowerCase()} class="${element.className}">` +
      ` ends at ${Math.round(box.right)} px past ${Math.round(limit)} px: ` +
      text.slice(0, 60)
    );
  }
  const result = {
    viewport: root.clientWidth,
    scrollWidth: root.scrollWidth,
    height: root.scrollHeight,
    overflowing: overflowing.slice(0, 5),
    overflowingCount: overflowing.length,
  };
  const meta = document.createElement("meta");
  meta.name = "keras-tether-layout";
  meta.content = JSON.stringify(result);
  document.head.appendChild(meta);
});
</script>
"""


class _Page(html.parser.HTMLParser):
    """The references, ids, navigation links and headings of one DOM."""

    def __init__(self):
        super().__init__()
        self.references: list[str] = []
        self.ids: set[str] = set()
        self.nav_links: list[str] = []
        self.headings = 0
        self._in_title = False
        self.title = ""
        self.layout: dict | None = None

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if "id" in attributes:
            self.ids.add(attributes["id"])
        if tag == "h1":
            self.headings += 1
        if tag == "meta" and attributes.get("name") == "keras-tether-layout":
            self.layout = json.loads(attributes.get("content") or "null")
        if tag == "title":
            self._in_title = True
        for name in ("href", "src"):
            value = attributes.get(name)
            if value and tag in ("a", "img", "link", "script"):
                self.references.append(value)
        classes = (attributes.get("class") or "").split()
        if tag == "a" and "md-nav__link" in classes and attributes.get("href"):
            self.nav_links.append(attributes["href"])

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False

    def handle_data(self, data):
        if self._in_title:
            self.title += data


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _chromium(chromium: str, url: str, height: int, *action: str):
    with tempfile.TemporaryDirectory(prefix="keras-tether-chromium-") as profile:
        command = [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={WIDTH},{height}",
        ]
        return subprocess.run(
            [*command, *action, url],
            capture_output=True,
            text=True,
            timeout=120,
        )


def dump_dom(chromium: str, url: str) -> str:
    """The DOM of `url` after its scripts ran, from a fresh browser profile."""
    completed = _chromium(chromium, url, HEIGHT, "--dump-dom")
    if completed.returncode != 0 or "<html" not in completed.stdout:
        tail = completed.stderr.strip().splitlines()[-3:]
        raise RuntimeError(f"chromium could not open {url}: {' | '.join(tail)}")
    return completed.stdout


def screenshot(chromium: str, url: str, height: int, path: str) -> None:
    """A PNG of `url`, `WIDTH` wide and `height` tall."""
    completed = _chromium(chromium, url, height, f"--screenshot={path}")
    if completed.returncode != 0 or not os.path.isfile(path):
        tail = completed.stderr.strip().splitlines()[-3:]
        raise RuntimeError(f"chromium took no screenshot of {url}: {' | '.join(tail)}")


def layout_problems(url: str, page: _Page) -> list[str]:
    """What runs off the right edge of `page`, measured at `WIDTH` px."""
    layout = page.layout
    if layout is None:
        return [f"{url}: the layout was not measured (the page did not load)"]
    problems = []
    if layout["scrollWidth"] > layout["viewport"]:
        problems.append(
            f"{url}: the page scrolls sideways at {WIDTH} px: it is "
            f"{layout['scrollWidth']} px wide in a {layout['viewport']} px window"
        )
    if layout["overflowingCount"]:
        problems.append(
            f"{url}: {layout['overflowingCount']} elements run off the text's "
            f"column at {WIDTH} px, such as: " + " | ".join(layout["overflowing"])
        )
    return problems


def _serve(folder: str) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(_QuietHandler, directory=folder)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the site, with the layout measurement at the end of each page."""

    def log_message(self, format, *args):
        pass

    def send_head(self):
        path = self.translate_path(self.path)
        if os.path.isdir(path):
            path = os.path.join(path, "index.html")
        if not path.endswith(".html") or not os.path.isfile(path):
            return super().send_head()
        with open(path, "rb") as file:
            body = file.read()
        body = body.replace(b"</body>", MEASURE.encode() + b"</body>", 1)
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        return io.BytesIO(body)


def _fetch(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read().decode(errors="replace")
    except urllib.error.URLError:
        return None


def _screenshot_name(root: str, url: str) -> str:
    name = url[len(root) :].strip("/").replace("/", "-")
    return (name or "index") + ".png"


def check(site: str, chromium: str, screenshots: str) -> list[str]:
    """Returns the problems found; an empty list means the site passed."""
    server, root = _serve(site)
    problems: list[str] = []
    try:
        landing = _Page()
        landing.feed(dump_dom(chromium, root))
        if not landing.headings or "keras-tether" not in landing.title:
            problems.append(f"the landing page did not render: title {landing.title!r}")
        nav = [urllib.parse.urljoin(root, href) for href in landing.nav_links]
        nav = list(dict.fromkeys(nav))
        if len(nav) < 5:
            problems.append(f"the navigation has {len(nav)} links, expected them all")
        pages = {root: landing}
        for url in nav:
            page = _Page()
            page.feed(dump_dom(chromium, url.split("#")[0]))
            if not page.headings:
                problems.append(f"navigation to {url} shows no page heading")
            pages[url.split("#")[0]] = page
        os.makedirs(screenshots, exist_ok=True)
        for url, page in pages.items():
            problems.extend(layout_problems(url, page))
            if page.layout is not None:
                height = min(max(page.layout["height"], HEIGHT), MAX_SCREENSHOT_HEIGHT)
                path = os.path.join(screenshots, _screenshot_name(root, url))
                screenshot(chromium, url, height, path)
        external = 0
        html_cache: dict[str, _Page | None] = dict(pages)
        for url, page in pages.items():
            for reference in page.references:
                target = urllib.parse.urljoin(url, reference)
                if not target.startswith(root):
                    external += target.startswith(("http://", "https://"))
                    continue
                address, _, anchor = target.partition("#")
                if address not in html_cache:
                    text = _fetch(address)
                    if text is None:
                        html_cache[address] = None
                    elif address.endswith("/") or address.endswith(".html"):
                        parsed = _Page()
                        parsed.feed(text)
                        html_cache[address] = parsed
                    else:
                        html_cache[address] = _Page()
                found = html_cache[address]
                if found is None:
                    problems.append(f"{url}: broken link {reference}")
                elif anchor and found.ids and anchor not in found.ids:
                    problems.append(f"{url}: missing anchor {reference}")
        print(
            f"browsed {len(pages)} pages in Chromium, checked the links on them "
            f"({external} links to other sites not fetched), measured them at "
            f"{WIDTH} px and wrote their screenshots to {screenshots}/"
        )
    finally:
        server.shutdown()
    return problems


def main(argv: list[str]) -> int:
    arguments = argv[1:]
    screenshots = "docs-screenshots"
    if "--screenshots" in arguments:
        at = arguments.index("--screenshots")
        screenshots = arguments[at + 1]
        del arguments[at : at + 2]
    site = arguments[0] if arguments else "site"
    if not os.path.isfile(os.path.join(site, "index.html")):
        print(f"no built site in {site}/: run `make docs` first", file=sys.stderr)
        return 1
    chromium = find_chromium()
    if chromium is None:
        print("SKIPPED: the docs browser check needs Chromium, which is not installed")
        return 0
    problems = check(site, chromium, screenshots)
    for problem in problems:
        print(f"docs check: {problem}", file=sys.stderr)
    if not problems:
        print(
            "docs check passed: the site renders, navigates, has no broken link "
            f"and nothing runs off the right edge at {WIDTH} px"
        )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
