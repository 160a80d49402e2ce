"""A real headless Chromium for page tests, through selenium and Debian's ChromeDriver.

Imported only once ``tests.requirements.require_chromium`` has found the
browser, the driver and the library, so a machine without them skips (or, in
CI, fails) with the reason instead of an import error.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

from tests.requirements import Chromium

# No network beyond 127.0.0.1, no first-run or background traffic, a fresh profile.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)
DESKTOP = (1280, 900)
# axe-core from the npm registry, vendored for the tests (tests/vendor/axe-core/README.md).
AXE = Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js"


class Browser:
    """One Chromium, driven by selenium; screenshots go to ``artifacts``."""

    def __init__(self, chromium: Chromium, profile: Path, artifacts: Path) -> None:
        options = webdriver.ChromeOptions()
        options.binary_location = chromium.browser
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={profile}")
        options.add_argument(f"--window-size={DESKTOP[0]},{DESKTOP[1]}")
        self.driver = webdriver.Chrome(
            options=options, service=Service(executable_path=chromium.driver)
        )
        self.driver.set_page_load_timeout(30)
        self.artifacts = artifacts
        artifacts.mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        self.driver.quit()

    @property
    def url(self) -> str:
        return str(self.driver.current_url)

    def get(self, url: str) -> None:
        self.driver.get(url)

    def find(self, css: str, within: WebElement | None = None) -> WebElement:
        return (within or self.driver).find_element(By.CSS_SELECTOR, css)

    def all(self, css: str, within: WebElement | None = None) -> list[WebElement]:
        return list((within or self.driver).find_elements(By.CSS_SELECTOR, css))

    def wait(self, condition: Callable[[], bool], what: str, timeout: float = 15) -> None:
        """Poll ``condition`` (a page may be reloading meanwhile) until it holds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if condition():
                    return
            except StaleElementReferenceException:
                pass  # the page refreshed under us; ask again
            if time.monotonic() > deadline:
                raise AssertionError(f"waited {timeout} s for {what}; at {self.url}")
            time.sleep(0.1)

    def status(self) -> str:
        """The order status the landing page shows (its badge's data-status)."""
        found = self.all("[data-testid=status]")
        return str(found[0].get_attribute("data-status")) if found else ""

    def alert_open(self) -> bool:
        try:
            self.driver.switch_to.alert  # noqa: B018 - raises when there is none
        except NoAlertPresentException:
            return False
        return True

    def accessibility_problems(
        self, impacts: tuple[str, ...] = ("serious", "critical")
    ) -> list[str]:
        """axe-core's violations on the page as it is now, of the given impacts, one line each."""
        self.driver.execute_script(AXE.read_text())
        result = self.driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "axe.run(document).then(r => done(r.violations), e => done([{id: 'axe-error',"
            " impact: 'critical', help: String(e), nodes: []}]));"
        )
        return [
            f"{v['impact']}: {v['id']} - {v['help']} ({len(v['nodes'])} elements)"
            for v in result
            if v.get("impact") in impacts
        ]

    def screenshot(self, name: str, width: int = DESKTOP[0]) -> Path:
        """The whole page on a screen ``width`` CSS pixels wide, as ``artifacts/{name}.png``."""
        metrics = {"width": width, "deviceScaleFactor": 1, "mobile": width < 600}
        self.driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride", {**metrics, "height": DESKTOP[1]}
        )
        height = int(self.driver.execute_script("return document.documentElement.scrollHeight"))
        self.driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride", {**metrics, "height": max(height, 400)}
        )
        path = self.artifacts / f"{name}.png"
        try:
            self.driver.save_screenshot(str(path))
        finally:
            self.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        return path
