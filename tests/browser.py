"""Open an HTML page in a real headless browser: Debian's Chromium (apt: chromium, chromium-driver),
driven by Selenium through chromedriver. It reports the page's console messages, every image's
natural size once loaded and where the page lays it out, and can save a screenshot of the whole page.

    python -m tests.browser reports/index.html docs/report-screenshot.jpg --height 2400

prints what it found and exits 1 on a console error or an image that did not load.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# Every image in document order: its natural size, and where and how large the page lays it out (CSS px).
IMAGES_JS = """return Array.from(document.images).map(i => {const r = i.getBoundingClientRect(); return {
    src: i.getAttribute('src'), complete: i.complete, width: i.naturalWidth, height: i.naturalHeight,
    left: r.left + window.scrollX, top: r.top + window.scrollY, shown_width: r.width, shown_height: r.height};});"""
# The width the body's content gets: the widest an image can be laid out.
CONTENT_WIDTH_JS = """const s = getComputedStyle(document.body);
    return document.body.clientWidth - parseFloat(s.paddingLeft) - parseFloat(s.paddingRight);"""


def missing() -> list[str]:
    """What a browser check needs and this machine lacks (empty when it can run)."""
    out = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        out.append("the selenium package")
    return out


@dataclass
class Page:
    title: str
    console: list[dict] = field(default_factory=list)  # {"level", "message", ...} from the browser's log
    # {"src", "complete", "width", "height" (natural), "left", "top", "shown_width", "shown_height" (laid out)}
    images: list[dict] = field(default_factory=list)
    content_width: float = 0.0  # CSS px: the body's width less its padding

    @property
    def errors(self) -> list[dict]:
        return [m for m in self.console if m["level"] == "SEVERE"]

    @property
    def broken_images(self) -> list[dict]:
        return [i for i in self.images if not i["complete"] or i["width"] == 0]


def open_page(html: Path, screenshot: Path | None = None, width: int = 1280, timeout: float = 60,
              height: int | None = None) -> Page:
    """Load ``html`` (a file), wait for it and its images, collect the console; optionally screenshot
    it: the whole page, or its top ``height`` pixels; PNG, or JPEG when the file name says so."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
                "--force-device-scale-factor=1", f"--window-size={width},1000", "--no-first-run",
                "--disable-extensions", "--disable-background-networking"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        driver.set_page_load_timeout(timeout)
        driver.get(Path(html).resolve().as_uri())
        WebDriverWait(driver, timeout).until(lambda d: d.execute_script(
            "return document.readyState === 'complete' && Array.from(document.images).every(i => i.complete)"))
        page = Page(title=driver.title, images=driver.execute_script(IMAGES_JS),
                    content_width=driver.execute_script(CONTENT_WIDTH_JS))
        if screenshot is not None:
            size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
            jpeg = Path(screenshot).suffix.lower() in (".jpg", ".jpeg")
            shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
                "format": "jpeg" if jpeg else "png", **({"quality": 85} if jpeg else {}), "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": size["width"], "scale": 1,
                         "height": min(size["height"], height or size["height"])}})
            Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
            Path(screenshot).write_bytes(base64.b64decode(shot["data"]))
        page.console = driver.get_log("browser")
        return page
    finally:
        driver.quit()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("html", type=Path, help="the page, e.g. reports/index.html")
    ap.add_argument("screenshot", type=Path, nargs="?", help="write a screenshot here (.png, or .jpg)")
    ap.add_argument("--height", type=int, default=None, help="only the page's top HEIGHT pixels (default: all)")
    ap.add_argument("--width", type=int, default=1280, help="the window's width in CSS pixels (default 1280)")
    args = ap.parse_args(argv)
    if lacking := missing():
        print(f"cannot open a browser: missing {', '.join(lacking)} (make test-tools installs them)", file=sys.stderr)
        return 2
    page = open_page(args.html, args.screenshot, args.width, height=args.height)
    print(json.dumps({"title": page.title, "images": page.images, "console": page.console}, indent=2))
    bad = page.errors or page.broken_images
    if bad:
        print(f"{len(page.errors)} console error(s), {len(page.broken_images)} image(s) not loaded", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
