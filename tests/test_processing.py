"""Pages of orders waiting on Stripe cost no Stripe call per visit.

A bank debit can stay ``awaiting_payment`` for days while a tab polls its
page; an expired or failed checkout's page may be reloaded any number of
times. Each landing visit used to retrieve the session. Now visits ask Stripe
at most once per ``FULFILL_PAYMENT_CHECK_INTERVAL`` across every visitor and
instance (a conditional write on the database's clock), never for an expired
session, and webhooks still move the status at once.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.conftest import HOOK_METADATA, ServiceFactory, ServiceServer
from tests.servers import Receiver
from tests.test_engine import retrieves, wait_status


def visit_many(services: list[ServiceServer], session_id: str, count: int) -> list[int]:
    """``count`` visits at once, spread over ``services``, half of them the page's JSON poll."""

    def visit(n: int) -> int:
        service = services[n % len(services)]
        accept = "application/json" if n % 2 else "text/html"
        with httpx.Client(base_url=service.url, timeout=60) as client:
            answer = client.get(
                "/checkout/complete", params={"session_id": session_id}, headers={"Accept": accept}
            )
        return answer.status_code

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(visit, range(count)))


def test_visits_to_an_order_awaiting_payment_ask_stripe_once_per_interval_on_all_instances(
    service_factory: ServiceFactory, receiver: Receiver
) -> None:
    first = service_factory(FULFILL_PAYMENT_CHECK_INTERVAL=600)
    second = service_factory(webhooks=False, FULFILL_PAYMENT_CHECK_INTERVAL=600)
    price = first.shop.price(product_metadata=HOOK_METADATA)
    session = first.shop.session([(price, 1)])
    first.shop.complete(session.id, "delayed")
    idle = first.shop.control.get("/_emulator/webhooks/idle", params={"timeout": 60}, timeout=70)
    assert idle.json() == {"idle": True}
    wait_status(first, session.id, "awaiting_payment")
    asked = retrieves(first, session.id)
    assert asked == 1, "the webhook's retrieve; recording it counts as asked"

    assert visit_many([first, second], session.id, 20) == [200] * 20
    assert retrieves(first, session.id) == asked, "20 visits on two instances: no Stripe call"

    # The bank confirms: the webhook is not throttled, the order is delivered at once.
    first.shop.post(f"/_emulator/sessions/{session.id}/settle", {"result": "succeeded"})
    wait_status(first, session.id, "fulfilled")
    assert len(receiver.received) == 1


def test_once_the_interval_passed_one_visit_asks_again(
    service_factory: ServiceFactory, receiver: Receiver
) -> None:
    # No webhooks: only the visits can learn that the payment went through.
    service = service_factory(webhooks=False, FULFILL_PAYMENT_CHECK_INTERVAL=2)
    price = service.shop.price(product_metadata=HOOK_METADATA)
    session = service.shop.session([(price, 1)])
    service.shop.complete(session.id, "delayed")
    assert service.landing(session.id).json()["status"] == "awaiting_payment"
    service.shop.post(f"/_emulator/sessions/{session.id}/settle", {"result": "succeeded"})
    asked = retrieves(service, session.id)
    # Within the interval the visits see the record as it stands.
    time.sleep(3)  # past the interval (2 s): one of the next visits asks
    statuses = visit_many([service], session.id, 10)
    assert statuses == [200] * 10
    assert retrieves(service, session.id) - asked == 1, "ten visits at once, one retrieve"
    wait_status(service, session.id, "fulfilled", timeout=60)
    assert len(receiver.received) == 1


def test_an_expired_or_failed_checkouts_page_costs_no_call_per_visit(
    service_factory: ServiceFactory,
) -> None:
    service = service_factory()
    price = service.shop.price(product_metadata=HOOK_METADATA)
    expired = service.shop.session([(price, 1)])
    service.shop.stripe().v1.checkout.sessions.expire(expired.id)
    failed = service.shop.session([(price, 1)])
    service.shop.complete(failed.id, "delayed")
    wait_status(service, failed.id, "awaiting_payment")
    service.shop.post(f"/_emulator/sessions/{failed.id}/settle", {"result": "failed"})
    wait_status(service, expired.id, "expired")
    wait_status(service, failed.id, "payment_failed")
    before = {s: retrieves(service, s) for s in (expired.id, failed.id)}
    for session_id in (expired.id, failed.id):
        assert visit_many([service], session_id, 10) == [200] * 10
    after = {s: retrieves(service, s) for s in (expired.id, failed.id)}
    assert after[expired.id] == before[expired.id], "an expired session is never asked again"
    assert after[failed.id] - before[failed.id] <= 1, "a failed payment: once per interval"
