"""The guide's code: what Stripe's fulfillment guide leads a merchant to write.

https://docs.stripe.com/checkout/fulfillment, in Python: a Flask app whose
``POST /webhook`` verifies the signature with ``stripe.Webhook.construct_event``
and, for ``checkout.session.completed`` and
``checkout.session.async_payment_succeeded``, calls ``fulfill_checkout``; the
landing page (the Checkout Session's ``success_url``) calls it too. The
guide leaves the body of ``fulfill_checkout`` as TODOs, in this order:
make sure fulfillment hasn't already been performed, retrieve the session
with ``line_items`` expanded, check ``payment_status``, perform the line
items, record the fulfillment. Here they are done the plain way: a SELECT
on a SQLite table, the official library's synchronous retrieve, each line
item performed by the bench's action, an INSERT.

Its first TODO, "make this function safe to run multiple times, even
concurrently, with the same session ID", is left as the guide leaves it.
Two deliveries of one event (Stripe retries, and may send an event more
than once) that overlap both find no record and both perform the items:
the bench counts that. No emails, no access log, no leases, no retries of
a failed item, no reconciliation: the peer is the guide, not the service.

Run by the bench under gunicorn, as merchants deploy Flask::

    gunicorn --workers 5 bench.peers.guide:app

with ``STRIPE_SECRET_KEY``, ``STRIPE_WEBHOOK_SECRET``, ``STRIPE_API_BASE``
(the emulator), ``GUIDE_DATABASE`` (the SQLite file) and
``BENCH_ACTION_LOG`` set.
"""

from __future__ import annotations

import os
import sqlite3
import time
from contextlib import closing

import stripe
from flask import Flask, request

from bench.actions import perform

stripe.api_key = os.environ["STRIPE_SECRET_KEY"]
stripe.api_base = os.environ["STRIPE_API_BASE"]
endpoint_secret = os.environ["STRIPE_WEBHOOK_SECRET"]
DATABASE = os.environ["GUIDE_DATABASE"]

app = Flask(__name__)

# bench.database.GUIDE_FULFILLED_SQL reads this table (fulfilled_at: Unix seconds).
with closing(sqlite3.connect(DATABASE)) as db, db:
    db.execute(
        "CREATE TABLE IF NOT EXISTS fulfillments"
        " (session_id TEXT PRIMARY KEY, fulfilled_at REAL NOT NULL)"
    )


def fulfill_checkout(session_id: str) -> None:
    print("Fulfilling Checkout Session", session_id)

    # TODO (the guide's): make this function safe to run multiple times,
    # even concurrently, with the same session ID.
    with closing(sqlite3.connect(DATABASE)) as db:
        # Make sure fulfillment hasn't already been performed for this Checkout Session.
        done = db.execute("SELECT 1 FROM fulfillments WHERE session_id = ?", (session_id,))
        if done.fetchone() is not None:
            return

        # Retrieve the Checkout Session from the API with line_items expanded.
        checkout_session = stripe.checkout.Session.retrieve(session_id, expand=["line_items"])

        # Check the Checkout Session's payment_status property to determine
        # if fulfillment should be performed.
        if checkout_session.payment_status != "unpaid" and checkout_session.line_items:
            # Perform fulfillment of the line items (the expanded list holds
            # the first 10; the library pages through the rest).
            for line_item in checkout_session.line_items.auto_paging_iter():
                perform(f"{session_id}:{line_item.id}")

            # Record/save fulfillment status for this Checkout Session. A
            # concurrent call that got here first makes this INSERT fail:
            # after the items were performed again.
            with db:
                db.execute(
                    "INSERT INTO fulfillments (session_id, fulfilled_at) VALUES (?, ?)",
                    (session_id, time.time()),
                )


@app.post("/webhook")
def webhook() -> tuple[str, int]:
    payload = request.data
    sig_header = request.headers["STRIPE_SIGNATURE"]

    try:
        event = stripe.Webhook.construct_event(payload, sig_header, endpoint_secret)
    except ValueError:
        # Invalid payload
        return "Invalid payload", 400
    except stripe.SignatureVerificationError:
        # Invalid signature
        return "Invalid signature", 400

    if event["type"] in (
        "checkout.session.completed",
        "checkout.session.async_payment_succeeded",
    ):
        fulfill_checkout(event["data"]["object"]["id"])

    return "", 200


@app.get("/success")
def success() -> str:
    # The success_url's {CHECKOUT_SESSION_ID}: fulfill now, in case the
    # customer is here before the webhook.
    session_id = request.args["session_id"]
    fulfill_checkout(session_id)
    return "<!doctype html><html><body><h1>Thanks for your order!</h1></body></html>"
