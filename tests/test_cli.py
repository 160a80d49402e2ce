"""The command line: migrate, run, configuration errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from fulfill.cli import main
from tests.conftest import TEST_KEY, WEBHOOK_SECRET, EmulatorServer, hook_catalog, table_rows
from tests.servers import Receiver


def env_for(tmp_path: Path, shop: EmulatorServer, receiver: Receiver) -> dict[str, str]:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(hook_catalog(receiver.url))
    return {
        "STRIPE_SECRET_KEY": TEST_KEY,
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "STRIPE_API_BASE": shop.url,
        "FULFILL_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
        "FULFILL_CATALOG": str(catalog),
        # Commands that fulfill also email: never into the checkout's var/outbox.
        "FULFILL_MAIL_OUTBOX": str(tmp_path / "outbox"),
    }


def test_migrate_creates_the_schema(
    tmp_path: Path, emulator_server: EmulatorServer, receiver: Receiver
) -> None:
    env = env_for(tmp_path, emulator_server, receiver)
    result = CliRunner().invoke(main, ["migrate"], env=env)
    assert result.exit_code == 0, result.output
    assert table_rows(env["FULFILL_DATABASE_URL"], "alembic_version")


def test_run_fulfills_a_session_and_prints_the_record(
    tmp_path: Path, emulator_server: EmulatorServer, receiver: Receiver
) -> None:
    env = env_for(tmp_path, emulator_server, receiver)
    price = emulator_server.price(product_metadata={"fulfill": "hook"})
    session = emulator_server.session([(price, 2)])
    emulator_server.complete(session.id)
    result = CliRunner().invoke(main, ["run", session.id, "--json"], env=env)
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert record["status"] == "fulfilled"
    assert record["triggers"] == ["cli"]
    assert len(receiver.received) == 1
    table = CliRunner().invoke(main, ["run", session.id], env=env)
    assert "fulfilled" in table.output
    assert len(receiver.received) == 1


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("STRIPE_SECRET_KEY", "pk_test_oops", "STRIPE_SECRET_KEY: must look like"),
        ("FULFILL_INLINE_BUDGET", "soon", "FULFILL_INLINE_BUDGET"),
        ("FULFILL_DATABASE_URL", "mysql://x", "FULFILL_DATABASE_URL: must start with"),
    ],
)
def test_bad_configuration_is_one_clear_line(
    tmp_path: Path,
    emulator_server: EmulatorServer,
    receiver: Receiver,
    variable: str,
    value: str,
    message: str,
) -> None:
    env = {**env_for(tmp_path, emulator_server, receiver), variable: value}
    result = CliRunner().invoke(main, ["run", "cs_test_abc"], env=env)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert value not in result.output or variable != "STRIPE_SECRET_KEY"


def test_malformed_session_id_is_refused(
    tmp_path: Path, emulator_server: EmulatorServer, receiver: Receiver
) -> None:
    env = env_for(tmp_path, emulator_server, receiver)
    result = CliRunner().invoke(main, ["run", "cs_test_../../v1/customers"], env=env)
    assert result.exit_code == 2
    assert "not a Checkout Session ID" in result.output
