"""The download action and ``GET /downloads/{token}``: signed, expiring, bound to one file."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from fulfill.actions.base import ActionError
from fulfill.actions.download import (
    DownloadAction,
    DownloadClaim,
    LinkExpired,
    LinkInvalid,
    make_token,
    read_token,
    signing_key,
)
from fulfill.downloads import content_disposition, content_type
from fulfill.store import Store
from tests.conftest import TEST_KEY, ServiceFactory, ServiceServer
from tests.items import make_item
from tests.test_engine import wait_status

KEY = signing_key("a signing key of at least thirty-two characters")
CLAIM = DownloadClaim("cs_test_a1B2c3", "li_1", "handbook.pdf", 1_800_000_000)
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 40 + b"\n%%EOF\n"
ODD_NAME = 'Lösungen – "Kapitel" 1.txt'  # noqa: RUF001 - a name no ASCII header can carry


# -- tokens: pure ------------------------------------------------------------------------


def test_a_token_reads_back_its_claim_until_it_expires() -> None:
    token = make_token(KEY, CLAIM)
    assert read_token(KEY, token, now=CLAIM.expires - 1) == CLAIM
    with pytest.raises(LinkExpired):
        read_token(KEY, token, now=CLAIM.expires)
    # URL-safe as is: nothing to escape in a path segment.
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")


def test_any_change_to_a_token_makes_it_invalid_not_expired() -> None:
    token = make_token(KEY, CLAIM)
    for position, char in enumerate(token):
        replacement = "A" if char != "A" else "B"
        altered = token[:position] + replacement + token[position + 1 :]
        with pytest.raises(LinkInvalid):
            read_token(KEY, altered, now=CLAIM.expires + 100)


@pytest.mark.parametrize(
    "claim",
    [
        DownloadClaim("cs_test_other", "li_1", "handbook.pdf", CLAIM.expires),
        DownloadClaim(CLAIM.session_id, "li_2", "handbook.pdf", CLAIM.expires),
        DownloadClaim(CLAIM.session_id, "li_1", "other.pdf", CLAIM.expires),
        DownloadClaim(CLAIM.session_id, "li_1", "handbook.pdf", CLAIM.expires + 86400),
    ],
)
def test_a_signature_is_bound_to_the_session_item_file_and_expiry(claim: DownloadClaim) -> None:
    genuine = make_token(KEY, CLAIM)
    other = make_token(KEY, claim)
    spliced = other.split(".")[0] + "." + genuine.split(".")[1]
    with pytest.raises(LinkInvalid):
        read_token(KEY, spliced, now=0)


def test_a_token_of_another_key_is_invalid() -> None:
    token = make_token(signing_key("another key, at least thirty-two characters"), CLAIM)
    with pytest.raises(LinkInvalid):
        read_token(KEY, token, now=0)


@pytest.mark.parametrize(
    "token",
    ["", ".", "abc", "a.b.c", "ab.cd", "é." + "x" * 43, "x" * 3000 + "." + "y" * 43],
)
def test_malformed_tokens_are_invalid(token: str) -> None:
    with pytest.raises(LinkInvalid):
        read_token(KEY, token, now=0)


def test_a_signed_payload_of_the_wrong_shape_is_invalid() -> None:
    import base64
    import hmac

    for body in (b"{}", b'[2,"a","b","c",1]', b'[1,"a","b","c",true]', b"not json"):
        payload = base64.urlsafe_b64encode(body).rstrip(b"=").decode()
        digest = hmac.new(KEY, b"fulfill.download." + payload.encode(), hashlib.sha256).digest()
        signature = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        with pytest.raises(LinkInvalid):
            read_token(KEY, f"{payload}.{signature}", now=0)


def test_the_signing_key_is_derived_not_the_secret_itself() -> None:
    assert signing_key(TEST_KEY) == signing_key(TEST_KEY)
    assert signing_key(TEST_KEY) != signing_key(TEST_KEY + "x")
    assert TEST_KEY.encode() not in signing_key(TEST_KEY)
    assert len(signing_key(TEST_KEY)) == 32


def test_content_disposition_names_the_file_for_old_and_new_clients() -> None:
    assert content_disposition("handbook.pdf") == 'attachment; filename="handbook.pdf"'
    assert content_disposition(ODD_NAME) == (
        "attachment; filename=\"L_sungen _ _Kapitel_ 1.txt\"; filename*=UTF-8''"
        "L%C3%B6sungen%20%E2%80%93%20%22Kapitel%22%201.txt"
    )
    assert content_disposition("a\r\nSet-Cookie: x") == (
        "attachment; filename=\"a__Set-Cookie: x\"; filename*=UTF-8''a%0D%0ASet-Cookie%3A%20x"
    )
    assert content_type("handbook.pdf") == "application/pdf"
    assert content_type("notes.unknownext") == "application/octet-stream"


# -- the action --------------------------------------------------------------------------


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(f"sqlite:///{tmp_path / 'actions.db'}")
    try:
        yield opened
    finally:
        await opened.close()


async def test_the_action_grants_once_and_links_to_the_file(store: Store, tmp_path: Path) -> None:
    book = tmp_path / "handbook.pdf"
    book.write_bytes(PDF)
    moments = iter([datetime(2026, 11, 27, 20, 0, 0, 250_000), datetime(2026, 11, 28, 9, 0, 0)])
    action = DownloadAction(
        {"file": book, "link_ttl": 7 * 86400, "label": "E-book (PDF)"},
        store.deliverables,
        public_url="https://shop.example/",
        key=KEY,
        clock=lambda: next(moments),
    )
    item = make_item()
    result = await action.perform(item)
    assert result["expires_at"] == "2026-12-04T20:00:01Z"  # rounded up, never shorter
    assert result["message"] == "Your download link works until 4 Dec 2026, 20:00 UTC."
    (link,) = result["links"]
    assert link["label"] == "E-book (PDF)"
    assert link["url"].startswith("https://shop.example/downloads/")
    claim = read_token(KEY, link["url"].rsplit("/", 1)[1], now=0)
    assert claim == DownloadClaim(
        item.session_id,
        item.line_item_id,
        "handbook.pdf",
        int(datetime(2026, 12, 4, 20, 0, 1, tzinfo=UTC).timestamp()),
    )
    # Performed again later (a crash before it was recorded): the same link.
    assert await action.perform(item) == result


async def test_without_a_label_the_link_is_named_after_the_file(
    store: Store, tmp_path: Path
) -> None:
    book = tmp_path / "handbook.pdf"
    book.write_bytes(PDF)
    action = DownloadAction(
        {"file": book, "link_ttl": 60, "label": None},
        store.deliverables,
        public_url="https://shop.example",
        key=KEY,
    )
    result = await action.perform(make_item())
    assert result["links"][0]["label"] == "handbook.pdf"


async def test_a_file_gone_since_the_start_fails_the_item(store: Store, tmp_path: Path) -> None:
    action = DownloadAction(
        {"file": tmp_path / "gone.pdf", "link_ttl": 60, "label": None},
        store.deliverables,
        public_url="https://shop.example",
        key=KEY,
    )
    with pytest.raises(ActionError, match=r"download file .*gone\.pdf is missing"):
        await action.perform(make_item())


# -- end to end --------------------------------------------------------------------------

EBOOK = {"fulfill": "ebook"}
NOTES = {"fulfill": "notes"}


def download_catalog(tmp_path: Path, *, ttl: str = "7d") -> str:
    files = tmp_path / "files"
    files.mkdir(exist_ok=True)
    (files / "handbook.pdf").write_bytes(PDF)
    (files / ODD_NAME).write_text("Lösung 1: 42\n", encoding="utf-8")
    return f"""
[[product]]
name = "The Python Handbook (e-book)"
match = {{ metadata = {{ fulfill = "ebook" }} }}
action = "download"
file = "files/handbook.pdf"
label = "E-book (PDF)"
link_ttl = "{ttl}"

[[product]]
name = "Notes"
match = {{ metadata = {{ fulfill = "notes" }} }}
action = "download"
file = 'files/{ODD_NAME}'
"""


def bought(service: ServiceServer, *products: dict[str, str]) -> tuple[str, list[Any]]:
    prices = [(service.shop.price(f"P{n}", product_metadata=m), 1) for n, m in enumerate(products)]
    session_id = service.paid_session(prices)
    record = wait_status(service, session_id, "fulfilled")
    return session_id, record["items"]


def path_of(url: str) -> str:
    return "/downloads/" + url.rsplit("/downloads/", 1)[1]


def test_a_bought_file_downloads_with_its_type_and_name(
    service_factory: ServiceFactory, tmp_path: Path
) -> None:
    service = service_factory(download_catalog(tmp_path))
    before = datetime.now(UTC)
    session_id, items = bought(service, EBOOK, NOTES)
    after = datetime.now(UTC)
    ebook, notes = (item["result"] for item in items)
    assert [i["action"] for i in items] == ["download", "download"]
    assert ebook["links"][0]["label"] == "E-book (PDF)"
    assert ebook["links"][0]["url"].startswith(f"{service.url}/downloads/")
    assert notes["links"][0]["label"] == ODD_NAME
    # Granted while it was bought, for 7 days, rounded up to the second it is
    # kept to. (Compared with now, however long after, it would fall short.)
    expires = datetime.fromisoformat(ebook["expires_at"])
    assert before + timedelta(days=7) <= expires <= after + timedelta(days=7, seconds=1)

    answer = service.client.get(path_of(ebook["links"][0]["url"]))
    assert answer.status_code == 200
    assert answer.content == PDF
    assert answer.headers["content-type"] == "application/pdf"
    assert answer.headers["content-disposition"] == 'attachment; filename="handbook.pdf"'
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["referrer-policy"] == "no-referrer"
    assert answer.headers["x-content-type-options"] == "nosniff"

    answer = service.client.get(path_of(notes["links"][0]["url"]))
    assert answer.status_code == 200
    assert answer.text == "Lösung 1: 42\n"
    assert answer.headers["content-type"] == "text/plain; charset=utf-8"
    assert (
        "filename*=UTF-8''L%C3%B6sungen%20%E2%80%93%20%22Kapitel%22%201.txt"
        in (answer.headers["content-disposition"])
    )

    # The landing page shows each link as a button, and the record keeps them.
    page = service.landing(session_id, as_json=False).text
    assert "E-book (PDF)" in page
    assert f'href="{ebook["links"][0]["url"]}"' in page
    assert "Your download link works until" in page


def test_a_large_file_streams_and_ranges_work(
    service_factory: ServiceFactory, tmp_path: Path
) -> None:
    catalog = download_catalog(tmp_path)
    big = os.urandom(1 << 20) * 12  # 12 MiB
    (tmp_path / "files" / "handbook.pdf").write_bytes(big)
    service = service_factory(catalog)
    _, items = bought(service, EBOOK)
    path = path_of(items[0]["result"]["links"][0]["url"])
    digest = hashlib.sha256()
    size = 0
    with service.client.stream("GET", path) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-length"] == str(len(big))
        for chunk in answer.iter_bytes():
            digest.update(chunk)
            size += len(chunk)
    assert (size, digest.hexdigest()) == (len(big), hashlib.sha256(big).hexdigest())
    part = service.client.get(path, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206
    assert part.content == big[100:200]
    head = service.client.head(path)
    assert head.status_code == 200
    assert head.headers["content-length"] == str(len(big))


def test_altered_and_foreign_links_are_refused_with_a_page(
    service_factory: ServiceFactory, tmp_path: Path
) -> None:
    service = service_factory(download_catalog(tmp_path))
    session_id, items = bought(service, EBOOK)
    token = path_of(items[0]["result"]["links"][0]["url"]).removeprefix("/downloads/")
    payload, signature = token.split(".")

    altered = service.client.get(f"/downloads/{payload[:-2]}AA.{signature}")
    assert altered.status_code == 403
    assert "This download link is not valid" in altered.text
    assert altered.headers["cache-control"] == "no-store"
    assert "Traceback" not in altered.text
    as_json = service.client.get(
        f"/downloads/{payload}.{signature[:-1]}x", headers={"Accept": "application/json"}
    )
    assert as_json.status_code == 403
    assert as_json.json()["error"]["code"] == "invalid_download_link"

    # Another session's (or item's) download, with a genuine link's signature.
    for claim in (
        DownloadClaim("cs_test_someoneelse", items[0]["line_item_id"], "handbook.pdf", 2**40),
        DownloadClaim(session_id, "li_another", "handbook.pdf", 2**40),
    ):
        forged = make_token(signing_key("not the service's key at all, 32+ chars"), claim)
        assert service.client.get(f"/downloads/{forged}").status_code == 403
        spliced = make_token(signing_key(TEST_KEY), claim).split(".")[0] + "." + signature
        assert service.client.get(f"/downloads/{spliced}").status_code == 403
        # Even correctly signed, a link to something never granted is not served.
        genuine = make_token(signing_key(TEST_KEY), claim)
        assert service.client.get(f"/downloads/{genuine}").status_code == 404
    for junk in ("x", "a.b", "%00", "." * 10):
        assert service.client.get(f"/downloads/{junk}").status_code == 403


def test_an_expired_link_is_gone_with_a_page(
    service_factory: ServiceFactory, tmp_path: Path
) -> None:
    # Long enough that the first download below comes before the expiry on a busy machine.
    service = service_factory(download_catalog(tmp_path, ttl="8s"))
    _, items = bought(service, EBOOK)
    result = items[0]["result"]
    path = path_of(result["links"][0]["url"])
    assert service.client.get(path).status_code == 200
    expires = datetime.fromisoformat(result["expires_at"]).timestamp()
    time.sleep(max(0.0, expires - time.time()) + 0.1)
    gone = service.client.get(path)
    assert gone.status_code == 410
    assert "This download link has expired" in gone.text
    assert "contact the shop" in gone.text


def test_a_file_removed_after_the_sale_is_a_clear_404(
    service_factory: ServiceFactory, tmp_path: Path
) -> None:
    service = service_factory(download_catalog(tmp_path))
    _, items = bought(service, EBOOK)
    (tmp_path / "files" / "handbook.pdf").unlink()
    answer = service.client.get(path_of(items[0]["result"]["links"][0]["url"]))
    assert answer.status_code == 404
    assert "no longer available" in answer.text


def test_every_instance_with_the_same_key_honours_a_link(
    service_factory: ServiceFactory, tmp_path: Path
) -> None:
    catalog = download_catalog(tmp_path)
    shared = "one signing key for all instances, 32+ chars"
    first = service_factory(catalog, FULFILL_SIGNING_KEY=shared)
    second = service_factory(catalog, webhooks=False, FULFILL_SIGNING_KEY=shared)
    other = service_factory(
        catalog, webhooks=False, FULFILL_SIGNING_KEY="a different signing key, 32+ chars"
    )
    _, items = bought(first, EBOOK)
    path = path_of(items[0]["result"]["links"][0]["url"])
    assert first.client.get(path).content == PDF
    assert second.client.get(path).content == PDF
    assert other.client.get(path).status_code == 403


def test_a_short_signing_key_stops_the_start() -> None:
    from fulfill.config import load_settings
    from fulfill.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^FULFILL_SIGNING_KEY: must be at least 32 characters"):
        load_settings(env_file=None, FULFILL_SIGNING_KEY="short")
    settings = load_settings(env_file=None, STRIPE_SECRET_KEY=TEST_KEY)
    assert settings.download_key_secret == TEST_KEY
    assert "short" not in repr(load_settings(env_file=None, FULFILL_SIGNING_KEY="s" * 40))


def test_the_access_log_cuts_download_tokens_short(
    service_factory: ServiceFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    service = service_factory(download_catalog(tmp_path))
    _, items = bought(service, EBOOK)
    path = path_of(items[0]["result"]["links"][0]["url"])
    token = path.removeprefix("/downloads/")
    with caplog.at_level(logging.INFO, logger="fulfill.access"):
        assert service.client.get(path).status_code == 200
        assert service.client.get(path + "x").status_code == 403
        # The server logs a request once it has sent the answer, in its own thread.
        deadline = time.monotonic() + 5
        lines: list[str] = []
        while time.monotonic() < deadline:
            lines = [r.getMessage() for r in caplog.records if r.name == "fulfill.access"]
            if sum("/downloads/" in line for line in lines) == 2:
                break
            time.sleep(0.05)
    assert any('"GET /downloads/…" 200' in line for line in lines), lines
    assert any('"GET /downloads/…" 403' in line for line in lines), lines
    assert not any(token[:20] in line for line in lines)
