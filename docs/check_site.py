"""Check a built HTML site: internal links, then every page rendered in headless Chromium.

Usage::

    python docs/check_site.py [docs/_build/html] [--browser /usr/bin/chromium] [--driver /usr/bin/chromedriver]
    python docs/check_site.py docs/_build/html --links-only      # no browser: links and fragments only

Two passes:

1. **Links (static, no browser).** Every ``.html`` file is parsed; every internal ``href``/``src``
   (``<a>``, ``<link>``, ``<img>``, ``<script>``, ``<source>``, ``<iframe>``) must resolve to a file
   of the site and, when it carries a ``#fragment`` and points at an HTML page, to an element with
   that ``id`` (or an ``<a name=...>``) in that page. External URLs are counted, never fetched.
2. **Rendering (headless Chromium through Selenium and Debian's ``chromedriver``).** The site is
   served from a local ``http.server`` thread; each page is loaded, and after MathJax has finished
   typesetting the checker requires: every ``<img>`` loaded (``naturalWidth > 0``); on pages with
   math (``.math`` elements), MathJax present, every math element typeset into an
   ``mjx-container``, no raw ``\\(``/``\\[`` left in it, no MathJax error node (``mjx-merror``) and
   no undefined TeX macro (MathJax shows those as red text);
   no ``SEVERE`` entry in the browser console (JavaScript errors, failed loads). Chromium runs with
   ``--headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking`` (and
   a fresh profile; the browser's own ``/favicon.ico`` request is not counted), and every host
   but localhost resolves to nothing, so a page that needs the network fails the check instead of
   silently fetching.

Exits 0 when everything passes, 1 with a list of failures otherwise (2 on a usage error). The
browser binary is never downloaded: Selenium is given the driver's path, so its manager is not
consulted.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import posixpath
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

LINK_ATTRS = {
    "a": "href",
    "link": "href",
    "img": "src",
    "script": "src",
    "source": "src",
    "iframe": "src",
    "area": "href",
}
SKIP_SCHEMES = ("http:", "https:", "mailto:", "data:", "javascript:", "ftp:", "tel:")


# --------------------------------------------------------------------------------------------
# pass 1: static links
# --------------------------------------------------------------------------------------------
class _PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.links: list[tuple[str, str]] = []  # (tag, url)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "a" and a.get("name"):
            self.ids.add(a["name"])
        key = LINK_ATTRS.get(tag)
        if key and a.get(key) is not None:
            if tag == "link" and a.get("rel") in ("preconnect", "dns-prefetch"):
                return
            self.links.append((tag, a[key].strip()))


@dataclass
class Page:
    ids: set[str] = field(default_factory=set)
    links: list[tuple[str, str]] = field(default_factory=list)


def parse_site(root: Path) -> dict[str, Page]:
    """Parse every HTML file under ``root``: ``{posix path relative to root: Page}``."""
    pages = {}
    for path in sorted(root.rglob("*.html")):
        parser = _PageParser()
        parser.feed(path.read_text(encoding="utf-8", errors="replace"))
        pages[path.relative_to(root).as_posix()] = Page(parser.ids, parser.links)
    return pages


def is_internal(url: str) -> bool:
    return bool(url) and not url.lower().startswith(SKIP_SCHEMES) and not url.startswith("//")


def resolve(page: str, url: str) -> tuple[str, str]:
    """Target file (posix, relative to the root) and fragment of ``url`` found in ``page``."""
    parts = urlsplit(url)
    target = unquote(parts.path)
    if not target:
        target = page
    elif target.startswith("/"):
        target = target.lstrip("/")
    else:
        target = posixpath.join(posixpath.dirname(page), target)
    norm = posixpath.normpath(target) if target else ""
    if target.endswith("/") or norm in ("", "."):
        norm = posixpath.join("" if norm == "." else norm, "index.html")
    return norm, unquote(parts.fragment)


def check_links(root: Path, pages: dict[str, Page] | None = None) -> tuple[list[str], int]:
    """Broken internal links of the site under ``root``: (list of failures, number of external URLs)."""
    root = Path(root)
    pages = parse_site(root) if pages is None else pages
    failures: list[str] = []
    external = 0
    for name, page in pages.items():
        for tag, url in page.links:
            if not is_internal(url):
                external += url.lower().startswith(("http:", "https:", "//"))
                continue
            target, fragment = resolve(name, url)
            if target.startswith("../") or target == "..":
                failures.append(f"{name}: <{tag}> {url!r} points outside the site")
                continue
            path = root / target
            if not path.is_file():
                if path.is_dir() and (path / "index.html").is_file():
                    target = posixpath.join(target, "index.html")
                else:
                    failures.append(f"{name}: <{tag}> {url!r} -> missing file {target}")
                    continue
            if fragment and target.endswith(".html") and fragment not in pages[target].ids:
                failures.append(f"{name}: <{tag}> {url!r} -> no id {fragment!r} in {target}")
    return failures, external


# --------------------------------------------------------------------------------------------
# pass 2: rendering in headless Chromium
# --------------------------------------------------------------------------------------------
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--disable-dev-shm-usage",
    "--disable-extensions",
    "--disable-default-apps",
    "--metrics-recording-only",
    "--mute-audio",
    "--no-default-browser-check",
    "--window-size=1280,1024",
    # offline by construction: nothing but the local server resolves
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
)

# Waits for the page, then for MathJax (startup promise, then the typesetting queue), then reports.
PAGE_REPORT_JS = r"""
const done = arguments[arguments.length - 1];
const finish = () => {
  const imgs = Array.from(document.images);
  const math = Array.from(document.querySelectorAll('.math'));
  const untypeset = math.filter(el => !el.querySelector('mjx-container'))
                        .map(el => el.textContent.trim().slice(0, 80));
  const raw = math.filter(el => /\\\(|\\\[|\$\$/.test(
      Array.from(el.childNodes).filter(n => n.nodeType === 3).map(n => n.textContent).join('')))
                  .map(el => el.textContent.trim().slice(0, 80));
  const merror = Array.from(document.querySelectorAll('mjx-merror'))
                      .map(el => (el.getAttribute('data-mjx-error') || el.textContent).slice(0, 80));
  // TeX's undefined control sequences: MathJax's noundefined package shows them as red text
  const undefinedMacros = Array.from(document.querySelectorAll('mjx-assistive-mml mtext[mathcolor="red"]'))
                               .map(el => el.textContent.slice(0, 80));
  done({
    title: document.title,
    images: imgs.length,
    brokenImages: imgs.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.getAttribute('src')),
    math: math.length,
    mathjax: !!(window.MathJax && window.MathJax.version),
    mathjaxVersion: (window.MathJax && window.MathJax.version) || null,
    containers: document.querySelectorAll('mjx-container').length,
    untypeset: untypeset, raw: raw, merror: merror, undefinedMacros: undefinedMacros,
  });
};
const waitMath = () => {
  const mj = window.MathJax;
  if (mj && mj.startup && mj.startup.promise) {
    mj.startup.promise.then(() => (mj.typesetPromise ? mj.typesetPromise() : null))
      .then(finish, finish);
  } else { finish(); }
};
const start = Date.now();
const poll = () => {
  const hasMath = document.querySelector('.math') !== null;
  const scripts = Array.from(document.scripts).some(s => /mathjax/i.test(s.src || ''));
  if (document.readyState !== 'complete') { setTimeout(poll, 50); return; }
  if (hasMath && scripts && !(window.MathJax && window.MathJax.startup) && Date.now() - start < 10000) {
    setTimeout(poll, 50); return;   // deferred MathJax script not yet running
  }
  waitMath();
};
poll();
"""


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002
        pass


def serve(root: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def make_driver(browser: str, driver: str, profile: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    wd = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    wd.set_page_load_timeout(60)
    wd.set_script_timeout(60)
    return wd


def _browser_noise(message: str) -> bool:
    """Requests the browser makes on its own, not the page: ``/favicon.ico`` (the site has none)."""
    return "/favicon.ico " in message and "404" in message


def check_rendering(
    root: Path, pages: Iterable[str], browser: str, driver: str, verbose: bool = False
) -> tuple[list[str], dict[str, int]]:
    """Open every page in headless Chromium; return (failures, totals)."""
    failures: list[str] = []
    totals = {"pages": 0, "images": 0, "math": 0, "math_pages": 0, "console_messages": 0}
    server, base = serve(root)
    profile = tempfile.mkdtemp(prefix="scoresde-chromium-")
    wd = None
    try:
        wd = make_driver(browser, driver, profile)
        for name in pages:
            wd.get(base + name)
            report = wd.execute_async_script(PAGE_REPORT_JS)
            log = wd.get_log("browser")
            totals["pages"] += 1
            totals["images"] += report["images"]
            totals["math"] += report["math"]
            totals["math_pages"] += report["math"] > 0
            totals["console_messages"] += len(log)
            problems = [f"image not loaded: {src}" for src in report["brokenImages"]]
            if report["math"]:
                if not report["mathjax"]:
                    problems.append(f"{report['math']} math elements but MathJax did not load")
                else:
                    problems += [f"math not typeset: {t!r}" for t in report["untypeset"][:5]]
                    if len(report["untypeset"]) > 5:
                        problems.append(f"... {len(report['untypeset']) - 5} more untypeset math elements")
                    problems += [f"raw TeX delimiters left: {t!r}" for t in report["raw"][:5]]
                    problems += [f"MathJax error: {t!r}" for t in report["merror"][:5]]
                    problems += [f"undefined TeX macro: {t!r}" for t in report["undefinedMacros"][:5]]
            problems += [
                f"console {e['level']}: {e['message'][:300]}"
                for e in log
                if e["level"] == "SEVERE" and not _browser_noise(e["message"])
            ]
            failures += [f"{name}: {p}" for p in problems]
            if verbose:
                status = "ok" if not problems else f"{len(problems)} problem(s)"
                print(
                    f"  {name}: {report['images']} images, {report['math']} math "
                    f"({report['containers']} typeset), {len(log)} console messages: {status}"
                )
    finally:
        if wd is not None:
            wd.quit()
        server.shutdown()
        server.server_close()
        shutil.rmtree(profile, ignore_errors=True)
    return failures, totals


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "root",
        nargs="?",
        default=str(Path(__file__).resolve().parent / "_build" / "html"),
        help="the built site (default docs/_build/html)",
    )
    ap.add_argument("--browser", default=os.environ.get("CHROMIUM", "/usr/bin/chromium"))
    ap.add_argument(
        "--driver", default=os.environ.get("CHROMEDRIVER", shutil.which("chromedriver") or "/usr/bin/chromedriver")
    )
    ap.add_argument("--links-only", action="store_true", help="skip the browser pass")
    ap.add_argument("-v", "--verbose", action="store_true", help="one line per page")
    args = ap.parse_args(argv)
    root = Path(args.root)
    if not (root / "index.html").is_file():
        print(f"check_site: no index.html in {root}; build the site first", file=sys.stderr)
        return 2

    start = time.perf_counter()
    pages = parse_site(root)
    failures, external = check_links(root, pages)
    n_links = sum(len(p.links) for p in pages.values())
    print(
        f"check_site: {len(pages)} pages, {n_links} links/resources ({external} external, not fetched): "
        f"{len(failures)} broken"
    )
    if not args.links_only:
        for exe in (args.browser, args.driver):
            if not exe or not Path(exe).is_file():
                print(f"check_site: {exe!r} not found (apt-get install chromium chromium-driver)", file=sys.stderr)
                return 2
        render_failures, totals = check_rendering(root, list(pages), args.browser, args.driver, args.verbose)
        failures += render_failures
        print(
            f"check_site: Chromium rendered {totals['pages']} pages: {totals['images']} images, "
            f"{totals['math']} math elements on {totals['math_pages']} pages, "
            f"{totals['console_messages']} console messages: {len(render_failures)} problems"
        )
    elapsed = time.perf_counter() - start
    if failures:
        print(f"check_site: FAILED ({len(failures)} problems, {elapsed:.1f} s):")
        for f in failures:
            print(f"  - {f}")
        return 1
    print(f"check_site: OK ({elapsed:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
