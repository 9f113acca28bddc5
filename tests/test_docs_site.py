"""The built documentation site, opened in a real headless Chromium.

The site is built by `.ci/run` before the tests (the README's command,
`python -m sphinx -W --keep-going -b html docs docs/_build/html`). These tests
open it through `file://` URLs with Debian's `chromium` and `chromium-driver` and
check what a reader sees: the mathematics rendered by MathJax on every generated
page (no raw TeX left, no MathJax error), search returning results, and every page,
image, script and stylesheet link resolving inside the site (nothing fetched from
the network). Skipped, with the reason, where Chromium, its driver, selenium or the
built site is missing — except in CI (`CI=true`), where a missing piece fails.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "docs" / "_build" / "html"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
BUILD = ".venv/bin/python -m sphinx -W --keep-going -b html docs docs/_build/html"
IN_CI = os.environ.get("CI") == "true"


def _missing() -> str | None:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        return ("Chromium is not installed (apt-get install -y chromium chromium-driver; "
                ".ci/run installs it)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[docs]')"
    if not (SITE / "index.html").exists():
        return f"the docs are not built (run: {BUILD})"
    return None


def _require() -> None:
    reason = _missing()
    if reason is not None:
        if IN_CI:
            pytest.fail(f"CI must run the browser test: {reason}")
        pytest.skip(reason)


# --------------------------------------------------------------------------- #
# The crawl: every link in the built HTML, checked on disk
# --------------------------------------------------------------------------- #


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []  # (tag.attr, url)
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        for attr in ("href", "src"):
            if a.get(attr) and not (tag == "link" and a.get("rel") in ("canonical",)):
                self.links.append((f"{tag}.{attr}", a[attr]))


def _parse(path: Path) -> _Links:
    p = _Links()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def _pages() -> list[Path]:
    return sorted(SITE.rglob("*.html"))


def test_every_link_and_image_resolves_inside_the_site():
    _require()
    pages = _pages()
    parsed = {p: _parse(p) for p in pages}
    broken, external_assets, checked = [], [], 0
    for page, links in parsed.items():
        for where, url in links.links:
            scheme = urlparse(url).scheme
            if scheme in ("http", "https", "mailto", "data"):
                if where != "a.href" and scheme in ("http", "https"):
                    external_assets.append(f"{page.relative_to(SITE)}: {where} {url}")
                continue
            parts = urlparse(url)
            target, fragment = parts.path, parts.fragment
            path = (page.parent / unquote(target)).resolve() if target else page
            checked += 1
            if not path.exists():
                broken.append(f"{page.relative_to(SITE)}: {where} {url}")
            elif fragment and path.suffix == ".html":
                ids = parsed[path].ids if path in parsed else _parse(path).ids
                if fragment not in ids:
                    broken.append(f"{page.relative_to(SITE)}: {where} {url} (no id {fragment!r})")
    assert broken == [], f"{len(broken)} broken links, e.g. {broken[:10]}"
    assert external_assets == [], f"assets fetched from the network: {external_assets[:10]}"
    assert checked > 1000  # the crawl saw the site: every page links its siblings


def test_every_primitive_and_optimizer_has_a_generated_page():
    _require()
    import fdl

    missing = [n for n in fdl.registry() if not (SITE / "primitives" / f"{n}.html").exists()]
    missing += [n for n in fdl.optim.OPTIMIZERS
                if not (SITE / "optimizers" / f"{n}.html").exists()]
    assert missing == []
    for name in fdl.optim.OPTIMIZERS:  # each with its trajectory plot
        page = SITE / "optimizers" / f"{name}.html"
        images = [u for w, u in _parse(page).links if w == "img.src" and name in u]
        assert len(images) == 1, (name, images)
        assert (page.parent / images[0]).stat().st_size > 5000


# --------------------------------------------------------------------------- #
# The browser
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def browser():
    _require()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="fdl-docs-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 "--allow-file-access-from-files", f"--user-data-dir={profile}",
                 "--window-size=1280,1600"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _open(driver, relative: str) -> None:
    driver.get((SITE / relative).as_uri())


def _typeset(driver) -> dict:
    """Wait for MathJax to finish the page; return what it made."""
    from selenium.webdriver.support.ui import WebDriverWait

    if driver.execute_script("return !document.querySelector('script[src*=\"mathjax\"]')"):
        return {"containers": 0, "errors": [], "unprocessed": [],  # a page without maths
                "text": driver.execute_script("return document.body.innerText")}
    WebDriverWait(driver, 60).until(lambda d: d.execute_script(
        "return !!(window.MathJax && MathJax.startup && MathJax.startup.promise)"))
    driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "MathJax.startup.promise.then(() => done(true), () => done(false));")
    return driver.execute_script("""
        const main = (document.querySelector('article') || document.body).cloneNode(true);
        main.querySelectorAll('pre, code, .highlight').forEach(e => e.remove());  // code shows $
        document.body.appendChild(main);  // innerText needs a rendered node
        main.style.position = 'absolute'; main.style.left = '-99999px';
        const text = main.innerText;
        main.remove();
        return {
          containers: document.querySelectorAll('mjx-container').length,
          errors: Array.from(document.querySelectorAll('mjx-merror'))
                       .map(e => e.getAttribute('data-mjx-error') || e.textContent).slice(0, 5),
          unprocessed: Array.from(document.querySelectorAll('.math'))
                       .filter(e => !e.querySelector('mjx-container'))
                       .map(e => e.textContent.slice(0, 80)).slice(0, 5),
          text: text,
        };""")


RAW_TEX = re.compile(r"\\\(|\\\[|\\(partial|frac|mathbb|operatorname|sum|top|begin)\b|\$")


def test_primitive_page_shows_rendered_maths(browser):
    _open(browser, "primitives/linear.html")
    page = _typeset(browser)
    assert page["errors"] == [] and page["unprocessed"] == []
    assert page["containers"] >= 15  # the derivation, shapes, tangent rule, check prose
    assert RAW_TEX.search(page["text"]) is None, RAW_TEX.search(page["text"])
    text = page["text"]
    for heading in ("What it computes", "Shapes", "Derivation of the backward",
                    "Tangent rule (forward mode)", "Residuals", "Examples", "Check"):
        assert heading in text
    assert "Check passed" in text and "FAIL" not in text
    shot = SITE.parent / "screenshot-primitive.png"
    browser.set_window_size(1200, 1500)
    browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_maths_error_on_any_generated_page(browser):
    pages = sorted(p.relative_to(SITE).as_posix() for d in ("primitives", "optimizers", "guides")
                   for p in (SITE / d).glob("*.html"))
    assert len(pages) > 50
    problems = {}
    for rel in pages:
        _open(browser, rel)
        page = _typeset(browser)
        bad = page["errors"] + page["unprocessed"]
        raw = RAW_TEX.search(page["text"])
        if bad or raw:
            problems[rel] = bad + ([raw.group(0)] if raw else [])
    assert problems == {}


def test_search_finds_a_primitive(browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    _open(browser, "search.html")
    box = WebDriverWait(browser, 30).until(
        lambda d: d.find_element(By.CSS_SELECTOR, "input[name='q']"))
    box.send_keys("softmax", Keys.ENTER)
    WebDriverWait(browser, 60).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#search-results ul.search li")) > 0)
    hrefs = [a.get_attribute("href") for a in
             browser.find_elements(By.CSS_SELECTOR, "#search-results ul.search li a")]
    assert any(h.split("?")[0].endswith("primitives/softmax.html") for h in hrefs), hrefs


def test_gallery_and_plots_load_in_the_browser(browser):
    for rel, least in (("guides/gallery.html", 9), ("optimizers/adam.html", 1)):
        _open(browser, rel)
        sizes = browser.execute_script(
            "return Array.from(document.images).filter(i => !i.closest('.sidebar-brand'))"
            ".map(i => [i.complete, i.naturalWidth]);")
        assert len(sizes) >= least
        assert all(done and width > 100 for done, width in sizes), (rel, sizes)
