"""``fulfill demo``: the headless script passes, and the interactive demo serves a shop."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from fulfill.actions import FACTORIES
from fulfill.demo.samples import SAMPLES
from tests.servers import free_port

DEMO = [sys.executable, "-m", "fulfill", "demo"]


def test_headless_demo_buys_everything_and_exits_0(tmp_path: Path) -> None:
    done = subprocess.run(
        [*DEMO, "--headless"],
        cwd=tmp_path,  # a fresh folder: nothing but the package is needed
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "performed exactly once" in done.stdout
    assert "The emails customers got" in done.stdout
    assert done.stdout.count("Your order from Fulfill demo shop is ready") == 7
    for scenario in ("bank debit", "free", "25 line items", "webhook", "python"):
        assert scenario in done.stdout
    assert "✗" not in done.stdout


def test_interactive_demo_serves_the_shop_until_interrupted(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [*DEMO, "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 60
        while not any("Press Ctrl+C" in line for line in lines):
            assert time.monotonic() < deadline, "".join(lines)
            line = process.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        output = "".join(lines)
        assert f"http://127.0.0.1:{port}/shop" in output
        shop = httpx.get(f"http://127.0.0.1:{port}/shop", timeout=30)
        assert shop.status_code == 200
        for_sale = [s for s in SAMPLES if s.action in FACTORIES]
        assert shop.text.count('data-testid="product"') == len(for_sale)
        folder = re.search(r"Data \(removed on exit\):\s+(\S+)", output)
        assert folder is not None
        assert Path(folder.group(1), "fulfill.db").exists()
        check_outbox(f"http://127.0.0.1:{port}", shop.text)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
        assert not Path(folder.group(1)).exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def check_outbox(shop_url: str, shop_page: str) -> None:
    """The demo's shop links its outbox; a purchase's email shows up there, and only there."""
    assert 'href="/outbox"' in shop_page
    price = re.search(r'name="price" value="(price_[A-Za-z0-9]+)"', shop_page)
    assert price is not None
    with httpx.Client(timeout=30) as client:
        hosted = client.post(f"{shop_url}/checkout/sessions", data={"price": price.group(1)})
        assert hosted.status_code == 303
        paid = client.post(
            hosted.headers["location"],
            data={
                "email": "jenny.rosen@example.com",
                "name": "Jenny Rosen",
                "line1": "Friedrichstraße 123",
                "city": "Berlin",
                "postal_code": "10117",
                "country": "DE",
                "outcome": "paid",
            },
        )
        assert paid.status_code == 303
        landing = client.get(paid.headers["location"], headers={"Accept": "application/json"})
        assert landing.json()["status"] == "fulfilled"
        deadline = time.monotonic() + 20
        while True:
            outbox = client.get(f"{shop_url}/outbox")
            if 'data-testid="letter"' in outbox.text or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert outbox.status_code == 200
        assert outbox.headers["cache-control"] == "no-store"
        name = re.search(r'href="/outbox/(cs_test_[A-Za-z0-9]+\.fulfilled\.eml)"', outbox.text)
        assert name is not None, outbox.text
        letter = client.get(f"{shop_url}/outbox/{name.group(1)}")
        assert letter.status_code == 200
        assert "sandbox" in letter.headers["content-security-policy"]
        assert "Your order is ready" in letter.text
        raw = client.get(f"{shop_url}/outbox/{name.group(1)}?raw=1")
        assert raw.text.startswith(("Subject:", "From:", "Content-Type:", "MIME-Version:"))
        for bad in ("..%2Ffulfill.db", "%2E%2E%2Fcatalog.toml", "fulfill.db"):
            assert client.get(f"{shop_url}/outbox/{bad}").status_code == 404
