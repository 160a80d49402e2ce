"""The SMTP transport and mail settings: TLS as the URL says, never a downgrade or a leak."""

from __future__ import annotations

import asyncio
import json
import re
import ssl
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
import trustme
from click.testing import CliRunner

from fulfill.cli import main
from fulfill.config import load_settings
from fulfill.errors import ConfigError
from fulfill.mail.transport import IMPLICIT, PLAIN, STARTTLS, SmtpTarget, SmtpTransport
from tests.conftest import hook_catalog
from tests.smtp import smtp_server

PASSWORD = "s3cret:p@ss"
URL_PASSWORD = "s3cret%3Ap%40ss"


@pytest.fixture(scope="module")
def certificates() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(the server's context, a client context that trusts only the test CA)."""
    authority = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost", "127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    authority.configure_trust(client)
    return server, client


def letter() -> bytes:
    message = EmailMessage()
    message["From"] = "orders@lantern.example"
    message["To"] = "jenny@example.com"
    message["Subject"] = "Your order"
    message.set_content("Thank you.")
    return message.as_bytes()


SENDER = "orders@lantern.example"


def test_starttls_with_a_password(certificates: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server, client = certificates
    with smtp_server(starttls=server, auth=True) as sink:
        target = SmtpTarget.parse(f"smtp://shop:{URL_PASSWORD}@localhost:{sink.port}")
        assert (target.tls, target.username, target.password) == (STARTTLS, "shop", PASSWORD)
        transport = SmtpTransport(target, tls_context=client)
        asyncio.run(transport.send(letter(), SENDER, "jenny@example.com", "x"))
        [received] = sink.wait_for(1)
        assert received.recipients == ["jenny@example.com"]
        assert PASSWORD not in repr(target)
        assert "STARTTLS" in transport.description


# aiosmtpd counts only its own STARTTLS as TLS: on implicit TLS it warns of AUTH without it.
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_implicit_tls_with_a_password(certificates: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server, client = certificates
    with smtp_server(implicit=server, auth=True) as sink:
        target = SmtpTarget.parse(f"smtps://shop:{URL_PASSWORD}@localhost:{sink.port}")
        assert target.tls == IMPLICIT
        asyncio.run(
            SmtpTransport(target, tls_context=client).send(
                letter(), SENDER, "jenny@example.com", "x"
            )
        )
        assert len(sink.wait_for(1)) == 1


def test_a_certificate_nobody_vouches_for_is_refused(
    certificates: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server, _ = certificates
    with smtp_server(starttls=server, auth=True) as sink:
        target = SmtpTarget.parse(f"smtp://shop:{URL_PASSWORD}@localhost:{sink.port}")
        # The system's trust store: the test CA is not in it.
        with pytest.raises((aiosmtplib.SMTPException, ssl.SSLError)):
            asyncio.run(SmtpTransport(target).send(letter(), SENDER, "jenny@example.com", "x"))
        assert sink.received == []


def test_starttls_is_required_when_asked_for_never_skipped() -> None:
    with smtp_server() as sink:  # a server that offers no STARTTLS
        target = SmtpTarget.parse(f"smtp://localhost:{sink.port}")
        with pytest.raises(aiosmtplib.SMTPException, match=r"(?i)starttls"):
            asyncio.run(SmtpTransport(target).send(letter(), SENDER, "jenny@example.com", "x"))
        assert sink.received == []
        plain = SmtpTarget.parse(f"smtp://127.0.0.1:{sink.port}?tls=none")
        assert plain.tls == PLAIN
        asyncio.run(SmtpTransport(plain).send(letter(), SENDER, "jenny@example.com", "x"))
        assert len(sink.wait_for(1)) == 1


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("ftp://mail.example.com", "must start with smtp://"),
        ("smtp://", "names no host"),
        ("smtp://mail.example.com:notaport", "must look like smtp://"),
        (f"smtp://shop:{URL_PASSWORD}@mail.example.com?tls=none", "without TLS"),
        ("smtps://mail.example.com?tls=none", "only with smtp://"),
        ("smtp://mail.example.com?verify=no", "unknown option 'verify'"),
        ("smtp://mail.example.com?timeout=soon", "timeout= must be a number"),
    ],
)
def test_a_bad_smtp_url_names_what_is_wrong_and_never_the_password(url: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env_file=None, FULFILL_SMTP_URL=url)
    assert caught.value.message.startswith("FULFILL_SMTP_URL: ")
    assert expected in caught.value.message
    assert PASSWORD not in caught.value.message
    assert URL_PASSWORD not in caught.value.message


def test_default_ports_and_a_timeout() -> None:
    assert SmtpTarget.parse("smtp://mail.example.com").port == 587
    assert SmtpTarget.parse("smtps://mail.example.com").port == 465
    assert SmtpTarget.parse("smtp://relay.internal?tls=none").port == 25
    assert SmtpTarget.parse("smtp://mail.example.com?timeout=5").timeout == 5.0


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("FULFILL_MAIL_FROM", "orders at example", "must be an email address"),
        ("FULFILL_MAIL_FROM", "Shop <orders@example.com>\r\nBcc: x@example.com", "one line"),
        ("FULFILL_SUPPORT_EMAIL", "help@", "must be an email address"),
        ("FULFILL_SHOP_NAME", "Lantern\nBooks", "one line"),
        ("FULFILL_MAIL_RETRY_URL", "javascript:alert(1)", "must be an http(s) URL"),
    ],
)
def test_bad_mail_settings_stop_the_start(variable: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(expected)) as caught:
        load_settings(env_file=None, **{variable: value})
    assert caught.value.message.startswith(f"{variable}: ")


def check_cli(tmp_path: Path, **env: str) -> tuple[int, dict[str, Any]]:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(hook_catalog("http://127.0.0.1:9/hook"))
    outcome = CliRunner().invoke(
        main,
        ["check", "--json"],
        env={"FULFILL_CATALOG": str(catalog), "STRIPE_WEBHOOK_SECRET": "whsec_x", **env},
        catch_exceptions=False,
    )
    return outcome.exit_code, json.loads(outcome.output)


def email_finding(answer: dict[str, Any]) -> dict[str, str]:
    findings: list[dict[str, str]] = [f for f in answer["findings"] if f["what"] == "email"]
    (finding,) = findings
    return finding


# aiosmtpd warns of AUTH without its own STARTTLS (the login-less case below).
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_check_logs_in_to_the_smtp_server_and_names_a_wrong_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, answer = check_cli(tmp_path)
    assert (code, email_finding(answer)["result"]) == (0, "outbox")

    # A server with a certificate from a CA the system trusts (SSL_CERT_FILE here).
    authority = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(server)
    bundle = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    with smtp_server(starttls=server, auth=True) as sink:
        good = f"smtp://shop:{URL_PASSWORD}@localhost:{sink.port}"
        code, answer = check_cli(tmp_path, FULFILL_SMTP_URL=good)
        assert (code, email_finding(answer)["result"]) == (0, "ok"), answer
        assert "STARTTLS" in email_finding(answer)["detail"]
        wrong = f"smtp://shop:not-the-password@localhost:{sink.port}"
        code, answer = check_cli(tmp_path, FULFILL_SMTP_URL=wrong)
        assert code == 1
        finding = email_finding(answer)
        assert finding["result"] == "error"
        assert "SMTPAuthenticationError" in finding["detail"]
        assert "FULFILL_SMTP_URL" in finding["detail"]
        assert "not-the-password" not in json.dumps(answer)
        assert sink.received == []  # a check sends nothing

    with smtp_server(auth=True) as sink:
        # This server wants a login; the URL gives none.
        code, answer = check_cli(
            tmp_path, FULFILL_SMTP_URL=f"smtp://127.0.0.1:{sink.port}?tls=none"
        )
        assert (code, email_finding(answer)["result"]) == (1, "error")
    with smtp_server() as sink:
        # STARTTLS asked for, not offered: an error, not a plain-text login.
        code, answer = check_cli(
            tmp_path, FULFILL_SMTP_URL=f"smtp://u:{URL_PASSWORD}@127.0.0.1:{sink.port}"
        )
        assert code == 1
        assert PASSWORD not in json.dumps(answer)
        assert URL_PASSWORD not in json.dumps(answer)
    code, answer = check_cli(tmp_path, FULFILL_MAIL="false")
    assert email_finding(answer)["result"] == "off"
