"""Client addresses behind proxies: ``FULFILL_TRUSTED_PROXIES`` and uvicorn's forwarding headers.

The per-client limits are only as good as the address they count by. These
tests send real ``X-Forwarded-For`` headers to a real ``fulfill serve``
process (its command line is what wires the setting into uvicorn) and to a
service in a thread, from 127.0.0.1: the connection's peer, trusted or not.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from fulfill.config import load_settings
from fulfill.errors import ConfigError
from tests.conftest import EmulatorServer, ServiceFactory
from tests.processes import Instance, start_instance
from tests.servers import Receiver
from tests.test_guard import random_id
from tests.test_processes import service_env

CUSTOMER_A = "203.0.113.10"
CUSTOMER_B = "203.0.113.20"


def lookup(url: str, forwarded_for: str | None = None) -> int:
    """One landing-page visit for a session nobody knows (a Stripe call, so limited)."""
    headers = {"Accept": "application/json"}
    if forwarded_for is not None:
        headers["X-Forwarded-For"] = forwarded_for
    answer = httpx.get(
        f"{url}/checkout/complete",
        params={"session_id": random_id()},
        headers=headers,
        timeout=60,
    )
    assert answer.status_code in (404, 429), answer.text
    return answer.status_code


def serve(
    tmp_path: Path, shop: EmulatorServer, receiver: Receiver, trusted: str, workers: int = 1
) -> Instance:
    env = service_env(
        tmp_path,
        shop,
        receiver,
        FULFILL_TRUSTED_PROXIES=trusted,
        FULFILL_LOOKUPS_PER_CLIENT="2",
        FULFILL_LOOKUPS_PER_SECOND="1000",
    )
    return start_instance(env, tmp_path / "serve.log", workers=workers)


@pytest.mark.slow
def test_through_a_trusted_proxy_each_forwarded_address_has_its_own_allowance(
    tmp_path: Path, emulator_server: EmulatorServer, receiver: Receiver
) -> None:
    instance = serve(tmp_path, emulator_server, receiver, "10.0.0.0/8,127.0.0.1")
    try:
        assert [lookup(instance.url, CUSTOMER_A) for _ in range(3)] == [404, 404, 429]
        # Another customer behind the same proxy is not blocked by A's 429.
        assert [lookup(instance.url, CUSTOMER_B) for _ in range(2)] == [404, 404]
        # A's own forged entry, left of what the proxy appended, is never reached:
        # the rightmost address that is not a trusted proxy is the client's.
        assert lookup(instance.url, f"198.51.100.1, {CUSTOMER_A}") == 429
        # Two trusted hops (a load balancer, then nginx on 127.0.0.1): still A.
        assert lookup(instance.url, f"198.51.100.2, {CUSTOMER_A}, 10.1.2.3") == 429
        # Without the header, the client is the peer, 127.0.0.1, with its own allowance.
        assert lookup(instance.url) == 404
    finally:
        instance.stop()


@pytest.mark.slow
def test_through_an_untrusted_peer_a_forged_forwarded_for_is_ignored(
    tmp_path: Path, emulator_server: EmulatorServer, receiver: Receiver
) -> None:
    # 127.0.0.1 is not among the trusted proxies, though uvicorn alone would trust it.
    instance = serve(tmp_path, emulator_server, receiver, "10.0.0.0/8")
    try:
        statuses = [lookup(instance.url, f"203.0.113.{n}") for n in range(1, 6)]
        # Five invented addresses share the peer's one allowance of two.
        assert statuses == [404, 404, 429, 429, 429]
        assert lookup(instance.url) == 429
    finally:
        instance.stop()


def access_clients(instance: Instance) -> set[str]:
    """The client addresses the access log of ``instance`` recorded (JSON lines)."""
    clients = set()
    for line in instance.output().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("logger") == "fulfill.access" and "/checkout/complete" in entry["message"]:
                clients.add(entry["message"].split(" ", 1)[0])
    return clients


@pytest.mark.slow
@pytest.mark.parametrize(
    ("trusted", "seen"),
    [("127.0.0.1", {CUSTOMER_A, CUSTOMER_B}), ("10.0.0.0/8", {"127.0.0.1"})],
    ids=["trusted", "untrusted"],
)
def test_serve_with_workers_reads_the_forwarded_address_only_from_trusted_proxies(
    tmp_path: Path,
    emulator_server: EmulatorServer,
    receiver: Receiver,
    trusted: str,
    seen: set[str],
) -> None:
    # With several workers each keeps its own allowance, so the address is read
    # from the access log, which shows the client the limits counted by.
    instance = serve(tmp_path, emulator_server, receiver, trusted, workers=2)
    try:
        for customer in (CUSTOMER_A, CUSTOMER_B):
            lookup(instance.url, customer)
    finally:
        instance.stop()
    assert access_clients(instance) == seen


def test_by_default_no_forwarding_header_is_believed(service_factory: ServiceFactory) -> None:
    """Not even from 127.0.0.1, which uvicorn would trust by itself."""
    service = service_factory(FULFILL_LOOKUPS_PER_CLIENT=2)
    assert service.settings.trusted_proxy_list == ()
    statuses = [lookup(service.url, f"203.0.113.{n}") for n in range(1, 5)]
    assert statuses == [404, 404, 429, 429]


def test_a_trusted_service_in_a_thread_limits_per_forwarded_address(
    service_factory: ServiceFactory,
) -> None:
    service = service_factory(FULFILL_LOOKUPS_PER_CLIENT=1, FULFILL_TRUSTED_PROXIES="127.0.0.1")
    assert [lookup(service.url, CUSTOMER_A) for _ in range(2)] == [404, 429]
    assert lookup(service.url, CUSTOMER_B) == 404


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", ()),
        (" 10.0.0.0/8 , 127.0.0.1,", ("10.0.0.0/8", "127.0.0.1")),
        ("::1,fd00::/8", ("::1", "fd00::/8")),
    ],
)
def test_trusted_proxies_are_addresses_and_networks(value: str, expected: tuple[str, ...]) -> None:
    settings = load_settings(env_file=None, FULFILL_TRUSTED_PROXIES=value)
    assert settings.trusted_proxy_list == expected


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("*", "any client choose its address"),
        ("10.0.0.1/8", "'10.0.0.1/8' is not an IP address or network"),
        ("lb.internal", "'lb.internal' is not an IP address or network"),
    ],
)
def test_a_bad_trusted_proxy_stops_the_start(value: str, words: str) -> None:
    with pytest.raises(ConfigError, match="FULFILL_TRUSTED_PROXIES") as refused:
        load_settings(env_file=None, FULFILL_TRUSTED_PROXIES=value)
    assert words in refused.value.message
