"""In real Chromium: buy on the storefront, pay on the hosted page, land on the order page.

Screenshots of every state go to test-artifacts/ (gitignored), for a person
to look at the design.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import HOOK_SECRET, EmulatorServer, ServiceFactory, ServiceServer
from tests.requirements import require_chromium
from tests.servers import Receiver

if TYPE_CHECKING:
    from tests.browser import Browser

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
XSS = "<img src=x onerror=alert(1)>"
EBOOK = "Field Notes on Exactly Once (e-book)"


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    chromium = require_chromium()
    from tests.browser import Browser

    started = Browser(chromium, tmp_path_factory.mktemp("chromium-profile"), ARTIFACTS)
    try:
        yield started
    finally:
        started.close()


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """The page is the subject here, not the database: SQLite alone."""
    return f"sqlite:///{tmp_path / 'fulfill.db'}"


@dataclass
class Shop:
    service: ServiceServer
    emulator: EmulatorServer

    def buy(self, browser: Browser, name: str, quantity: int = 1) -> None:
        """On the storefront, set the product's quantity and press its Buy button."""
        browser.get(f"{self.service.url}/shop")
        card = next(
            card
            for card in browser.all("[data-testid=product]")
            if browser.find("h2", card).text == name
        )
        field = browser.find("input[name=quantity]", card)
        field.clear()
        field.send_keys(str(quantity))
        browser.find("[data-testid=buy]", card).click()
        browser.wait(
            lambda: browser.url.startswith(f"{self.emulator.url}/c/pay/cs_test_"),
            "the hosted checkout page",
        )

    def pay(self, browser: Browser, method: str = "paid") -> None:
        """On the hosted page, choose the payment method and pay."""
        browser.find(f"input[name=outcome][value={method}]").click()
        browser.find("#submit").click()
        browser.wait(
            lambda: browser.url.startswith(f"{self.service.url}/checkout/complete?session_id="),
            "the landing page",
        )


@pytest.fixture
def shop(
    service_factory: ServiceFactory, emulator_server: EmulatorServer, receiver: Receiver
) -> Shop:
    entries = []
    for name, amount in ((EBOOK, 1900), (XSS, 990)):
        price = emulator_server.price(name, amount)
        entries.append(
            f'[[product]]\nname = "{name}"\nmatch = {{ price = "{price}" }}\n'
            f'action = "webhook"\nurl = "{receiver.url}"\nsecret = "{HOOK_SECRET}"\n'
        )
    service = service_factory("\n".join(entries), FULFILL_LANDING_WAIT=2)
    return Shop(service, emulator_server)


def test_buy_pay_and_land_on_the_order(browser: Browser, shop: Shop) -> None:
    browser.get(f"{shop.service.url}/shop")
    assert [browser.find("h2", c).text for c in browser.all("[data-testid=product]")] == [
        EBOOK,
        XSS,
    ]
    browser.screenshot("1-shop")
    browser.screenshot("1-shop-phone", width=390)

    shop.buy(browser, EBOOK, quantity=2)
    assert "38.00 EUR" in browser.find("[data-testid=total]").text
    browser.screenshot("2-hosted-checkout")
    shop.pay(browser)

    browser.wait(lambda: browser.status() == "fulfilled", "the order fulfilled")
    assert browser.find("h1").text == "Thank you — your order is ready"
    items = browser.all("[data-testid=item]")
    assert len(items) == 1
    assert browser.find("h3", items[0]).text == EBOOK
    assert "Quantity 2 · 19.00 EUR each" in items[0].text
    assert "38.00 EUR" in items[0].text
    assert browser.find("[data-testid=item-status]", items[0]).text == "Delivered"
    assert "Delivered by the test receiver" in items[0].text
    assert browser.find("[data-testid=total]").text == "38.00 EUR"
    for landmark in ("header", "main", "footer"):
        assert len(browser.all(landmark)) == 1, landmark
    browser.screenshot("3-landing-fulfilled")
    browser.screenshot("3-landing-fulfilled-phone", width=390)


def test_delayed_payment_shows_processing_then_fulfilled_by_itself(
    browser: Browser, shop: Shop
) -> None:
    shop.emulator.emulator.auto_settle = 2.0  # the bank confirms two seconds later
    shop.buy(browser, EBOOK)
    shop.pay(browser, "delayed")

    browser.wait(lambda: browser.status() == "awaiting_payment", "the payment processing")
    assert browser.find("h1").text == "Your payment is processing"
    assert browser.find("[data-testid=item-status]").text == "Awaiting payment"
    # It updates itself by asking for the order's JSON, not by a meta refresh
    # (axe-core: critical), and says so in a polite live region.
    assert browser.all("meta[http-equiv=refresh]") == []
    assert browser.find("[data-testid=checking]").get_attribute("role") == "status"
    assert browser.accessibility_problems() == []
    browser.screenshot("4-landing-processing")

    # Nobody touches the page: it updates itself once the order is ready.
    browser.wait(lambda: browser.status() == "fulfilled", "the order fulfilled", timeout=60)
    assert browser.all("[data-testid=checking]") == []
    assert browser.accessibility_problems() == []
    assert browser.find("[data-testid=item-status]").text == "Delivered"
    browser.screenshot("5-landing-fulfilled-after-settlement")


def test_markup_in_a_product_name_is_shown_as_text(browser: Browser, shop: Shop) -> None:
    browser.get(f"{shop.service.url}/shop")
    assert XSS in [browser.find("h2", c).text for c in browser.all("[data-testid=product]")]
    assert browser.all("img") == []
    assert not browser.alert_open()

    shop.buy(browser, XSS)
    shop.pay(browser)
    browser.wait(lambda: browser.status() == "fulfilled", "the order fulfilled")
    assert browser.find("[data-testid=item] h3").text == XSS
    assert browser.all("img") == []
    assert not browser.alert_open()
    browser.screenshot("6-landing-markup-as-text")


def test_error_pages_are_pages(browser: Browser, shop: Shop) -> None:
    browser.get(f"{shop.service.url}/checkout/complete?session_id=cs_test_nope")
    assert browser.find("h1").text == "We could not find this order"
    browser.screenshot("7-problem-not-found")
    browser.get(f"{shop.service.url}/shop?cancelled=1")
    assert "nothing was charged" in browser.find("[data-testid=cancelled]").text
    browser.screenshot("8-shop-cancelled")


def test_keyboard_users_skip_to_content_and_see_where_they_are(
    browser: Browser, shop: Shop
) -> None:
    from selenium.webdriver.common.keys import Keys

    browser.get(f"{shop.service.url}/shop")
    browser.find("body").send_keys(Keys.TAB)
    skip = browser.driver.switch_to.active_element
    assert skip.text == "Skip to content"
    assert skip.location["x"] >= 0  # on screen once focused
    for _ in range(3):  # the brand link, the first quantity, its Buy button
        browser.driver.switch_to.active_element.send_keys(Keys.TAB)
    buy = browser.driver.switch_to.active_element
    assert buy.get_attribute("data-testid") == "buy"
    assert buy.value_of_css_property("outline-style") == "solid"
    assert buy.value_of_css_property("outline-width") == "3px"
    browser.screenshot("9-shop-keyboard-focus")
