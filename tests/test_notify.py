"""The training e-mail, delivered to a real SMTP server (aiosmtpd) on loopback: STARTTLS, login, content."""

import base64
import email
import email.policy
import logging
import shutil
import socket
import ssl
import subprocess
from dataclasses import replace

import photo_factory
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from pipeline.library.catalog import Library
from pipeline.library.notify import NotificationError, send_training_email, smtp_settings_from_env
from pipeline.settings import TINY_MODEL, SmtpSettings

USER = "anna@example.org"
PASSWORD = "s3cret-Pässword-42"  # non-ASCII: smtplib.login alone cannot send it
ASCII_PASSWORD = "plain-ascii-secret-7"


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], email.message.EmailMessage]] = []

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd's hook name
        message = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), message))
        return "250 Message accepted for delivery"


def _authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == USER.encode() and auth_data.password in (
        PASSWORD.encode(), ASCII_PASSWORD.encode())
    return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd sends the 535 itself


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make the test server's certificate")
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem")],
        check=True, capture_output=True,
    )
    return folder / "cert.pem", folder / "key.pem"


@pytest.fixture
def tls_server(certificate):
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=_free_port(), tls_context=context,
                            require_starttls=True, authenticator=_authenticator, auth_required=True)
    controller.start()
    smtp = SmtpSettings(host="127.0.0.1", port=controller.port, username=USER, password=PASSWORD,
                        sender="likeness@example.org", recipient="anna@example.org", starttls=True,
                        ca_file=str(cert), timeout=10)
    yield inbox, smtp
    controller.stop()


@pytest.fixture
def plain_server():
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=_free_port())
    controller.start()
    smtp = SmtpSettings(host="127.0.0.1", port=controller.port, recipient="a@example.org, b@example.org",
                        starttls=False, timeout=10)
    yield inbox, smtp
    controller.stop()


def _ready_model(tmp_path, verdict: str = "ready", recognised: int = 6):
    library = Library(tmp_path)
    record = library.create("Anna 2025", TINY_MODEL, {"steps": 50})
    grid = record.folder / "sample_grid.png"
    photo_factory.astronaut().resize((128, 64)).save(grid)
    extra = record.folder / "sample_0.png"
    photo_factory.grace_hopper().resize((64, 64)).save(extra)
    record = library.update(record.id, status="ready", sample_grid=grid, best_checkpoint_step=50, best_lora_scale=0.9,
                            scores={"overall": 81.4, "likeness": 0.7312, "quality": 0.66,
                                    "parts": {"likeness": 0.73, "quality": 0.66},
                                    "verdict": verdict, "verdict_text": f"{verdict}: measured",
                                    "recognised": recognised, "test_images": 8})
    return record, extra


def test_success_email_with_grid_scores_and_attachment_over_starttls(tls_server, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="pipeline")
    inbox, smtp = tls_server
    record, extra = _ready_model(tmp_path)

    send_training_email(smtp, record, images=[record.sample_grid, extra])

    assert len(inbox.messages) == 1
    sender, recipients, message = inbox.messages[0]
    assert sender == "likeness@example.org" and recipients == ["anna@example.org"]
    assert message["Subject"] == ("Likeness: “Anna 2025”: Ready: looks like the person "
                                  "(recognised in 6 of 8 test images)")
    text = message.get_body(preferencelist=("plain",)).get_content()
    assert record.trigger_word in text
    assert "likeness: 0.73" in text and "overall: 81" in text and "step 50 at LoRA scale 0.9" in text
    assert "ready: measured" in text
    html = message.get_body(preferencelist=("html",)).get_content()
    parts = {part.get_filename(): part for part in message.walk() if part.get_filename()}
    assert set(parts) == {"sample_grid.png", "sample_0.png"}  # the grid once, though passed in images too
    grid = parts["sample_grid.png"]
    assert grid.get_content_disposition() == "inline" and grid["Content-ID"][1:-1] in html
    assert grid.get_content() == record.sample_grid.read_bytes()
    assert parts["sample_0.png"].get_content_disposition() == "attachment"
    assert parts["sample_0.png"].get_content() == extra.read_bytes()

    assert "sent" in caplog.text and "anna@example.org" in caplog.text
    for secret in (PASSWORD, base64.b64encode(PASSWORD.encode()).decode()):
        assert secret not in caplog.text
        assert secret not in message.as_string()
    assert PASSWORD not in repr(smtp)


def test_failure_email_gives_the_reason(plain_server, tmp_path):
    inbox, smtp = plain_server
    library = Library(tmp_path)
    record = library.create("Ben", TINY_MODEL, {})
    record = library.update(record.id, status="failed", error="RuntimeError: CUDA out of memory at step 12")

    send_training_email(smtp, record)

    _, recipients, message = inbox.messages[0]
    assert recipients == ["a@example.org", "b@example.org"]
    assert message["Subject"] == "Likeness: training “Ben” failed"
    text = message.get_body(preferencelist=("plain",)).get_content()
    assert "Reason: RuntimeError: CUDA out of memory at step 12" in text
    assert not [part for part in message.walk() if part.get_filename()]


def test_an_ascii_password_logs_in_too(tls_server, tmp_path):
    inbox, smtp = tls_server
    record, _ = _ready_model(tmp_path)
    send_training_email(replace(smtp, password=ASCII_PASSWORD), record)
    assert len(inbox.messages) == 1


@pytest.mark.parametrize("password", [PASSWORD, ASCII_PASSWORD])
def test_a_wrong_password_is_reported_without_the_password(tls_server, tmp_path, caplog, password):
    caplog.set_level(logging.DEBUG, logger="pipeline")
    inbox, smtp = tls_server
    record, _ = _ready_model(tmp_path)
    wrong = replace(smtp, password="not-" + password)
    with pytest.raises(NotificationError, match="refused the login of user 'anna@example.org'") as info:
        send_training_email(wrong, record)
    assert "LIKENESS_SMTP_PASSWORD" in str(info.value)
    assert password not in str(info.value) and password not in caplog.text
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert inbox.messages == []


def test_an_untrusted_certificate_is_refused(tls_server, tmp_path):
    _, smtp = tls_server
    record, _ = _ready_model(tmp_path)
    with pytest.raises(NotificationError, match="LIKENESS_SMTP_CA_FILE"):
        send_training_email(replace(smtp, ca_file=""), record)


def test_no_password_is_sent_unencrypted_to_another_host(tmp_path):
    record, _ = _ready_model(tmp_path)
    smtp = SmtpSettings(host="mail.example.invalid", port=25, username=USER, password=PASSWORD,
                        recipient="a@example.org", starttls=False)
    with pytest.raises(NotificationError, match="without encryption") as info:
        send_training_email(smtp, record)
    assert PASSWORD not in str(info.value)


def test_disabled_settings_say_what_is_missing(tmp_path):
    record, _ = _ready_model(tmp_path)
    with pytest.raises(NotificationError, match="LIKENESS_SMTP_HOST"):
        send_training_email(SmtpSettings(), record)


def test_settings_from_env():
    smtp = smtp_settings_from_env({
        "LIKENESS_SMTP_HOST": "smtp.example.org", "LIKENESS_SMTP_PORT": "2525", "LIKENESS_SMTP_USER": USER,
        "LIKENESS_SMTP_PASSWORD": PASSWORD, "LIKENESS_SMTP_FROM": "bot@example.org",
        "LIKENESS_SMTP_TO": "anna@example.org", "LIKENESS_SMTP_STARTTLS": "no",
    })
    assert (smtp.host, smtp.port, smtp.username, smtp.password) == ("smtp.example.org", 2525, USER, PASSWORD)
    assert (smtp.sender, smtp.recipient, smtp.starttls, smtp.enabled) == ("bot@example.org", "anna@example.org",
                                                                         False, True)
    assert not smtp_settings_from_env({}).enabled
    assert smtp_settings_from_env({"LIKENESS_SMTP_SSL": "1"}).port == 465
    with pytest.raises(ValueError, match="LIKENESS_SMTP_PORT"):
        smtp_settings_from_env({"LIKENESS_SMTP_PORT": "smtp"})
    with pytest.raises(ValueError, match="LIKENESS_SMTP_STARTTLS"):
        smtp_settings_from_env({"LIKENESS_SMTP_STARTTLS": "maybe"})


def test_a_model_that_is_not_recognisable_says_so_first(plain_server, tmp_path):
    """Trained ("ready") but the likeness verdict is "not recognisable": the subject and the first line say that
    before anything else, in the sentence the library and the model card use."""
    inbox, smtp = plain_server
    record, _extra = _ready_model(tmp_path, verdict="not_recognisable", recognised=1)
    send_training_email(smtp, record)
    message = inbox.messages[0][2]
    assert message["Subject"] == ("Likeness: “Anna 2025”: Not recognisable (recognised in 1 of 8 test images) — "
                                  "trained, but it does not look like the person")
    text = message.get_body(preferencelist=("plain",)).get_content()
    assert text.index("Not recognisable") < text.index("Trigger word")
