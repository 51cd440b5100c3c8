"""Checks the built documentation site in a real headless browser.

Serves `site/` over HTTP on localhost and opens it in Chromium: the landing
page must render (its heading and the navigation present in the DOM after
the scripts ran), every page of the navigation must open and render, and
no link, image, stylesheet or script of any page may point at a missing file
or anchor. Links to other sites are counted, not fetched: the check runs
offline.

Usage: python .ci/browse_docs.py [SITE_DIR]   (exit 0: passed, 1: failed)
"""

from __future__ import annotations

import functools
import html.parser
import http.server
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
)


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

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if "id" in attributes:
            self.ids.add(attributes["id"])
        if tag == "h1":
            self.headings += 1
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


def dump_dom(chromium: str, url: str) -> str:
    """The DOM of `url` after its scripts ran, from a fresh browser profile."""
    with tempfile.TemporaryDirectory(prefix="keras-tether-chromium-") as profile:
        command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
        completed = subprocess.run(
            [*command, "--dump-dom", url],
            capture_output=True,
            text=True,
            timeout=120,
        )
    if completed.returncode != 0 or "<html" not in completed.stdout:
        tail = completed.stderr.strip().splitlines()[-3:]
        raise RuntimeError(f"chromium could not open {url}: {' | '.join(tail)}")
    return completed.stdout


def _serve(folder: str) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(_QuietHandler, directory=folder)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


def _fetch(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read().decode(errors="replace")
    except urllib.error.URLError:
        return None


def check(site: str, chromium: str) -> list[str]:
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
            f"({external} links to other sites not fetched)"
        )
    finally:
        server.shutdown()
    return problems


def main(argv: list[str]) -> int:
    site = argv[1] if len(argv) > 1 else "site"
    if not os.path.isfile(os.path.join(site, "index.html")):
        print(f"no built site in {site}/: run `make docs` first", file=sys.stderr)
        return 1
    chromium = find_chromium()
    if chromium is None:
        print("SKIPPED: the docs browser check needs Chromium, which is not installed")
        return 0
    problems = check(site, chromium)
    for problem in problems:
        print(f"docs check: {problem}", file=sys.stderr)
    if not problems:
        print("docs check passed: the site renders, navigates and has no broken link")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
