"""The "training finished" e-mail: success with the sample grid and the scores, or failure with the reason.

Sent with the standard library's smtplib: STARTTLS (or implicit TLS) with certificate checks, login only over
TLS (or to a mail server on this machine), and the password never in a log line, an error or the message.
"""

from __future__ import annotations

import base64
import html
import ipaddress
import logging
import mimetypes
import os
import smtplib
import ssl
from collections.abc import Callable, Mapping, Sequence
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

from pipeline.assessment.scores import headline
from pipeline.library.catalog import ModelRecord
from pipeline.settings import SmtpSettings
from pipeline.status import Status

logger = logging.getLogger(__name__)

ENV_PREFIX = "LIKENESS_SMTP_"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


class NotificationError(ValueError):
    """The e-mail could not be built or sent; the message says why (never with the password)."""


def _env_bool(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = environ.get(ENV_PREFIX + name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{ENV_PREFIX}{name}: {raw!r} is not a yes/no value; use 1/0, true/false, yes/no or on/off")


def smtp_settings_from_env(environ: Mapping[str, str] = os.environ) -> SmtpSettings:
    """SmtpSettings from LIKENESS_SMTP_HOST/PORT/USER/PASSWORD/FROM/TO/STARTTLS (and SSL, CA_FILE, TIMEOUT).

    Without LIKENESS_SMTP_HOST the settings are disabled (no e-mail is sent).
    """
    defaults = SmtpSettings()
    use_ssl = _env_bool(environ, "SSL", defaults.use_ssl)
    port_raw = environ.get(ENV_PREFIX + "PORT", "").strip()
    try:
        port = int(port_raw) if port_raw else (465 if use_ssl else defaults.port)
    except ValueError:
        raise ValueError(f"{ENV_PREFIX}PORT: {port_raw!r} is not a port number; use 587 (STARTTLS) or 465") from None
    if not 0 < port < 65536:
        raise ValueError(f"{ENV_PREFIX}PORT: {port} is outside 1..65535")
    timeout_raw = environ.get(ENV_PREFIX + "TIMEOUT", "").strip()
    try:
        timeout = float(timeout_raw) if timeout_raw else defaults.timeout
    except ValueError:
        raise ValueError(f"{ENV_PREFIX}TIMEOUT: {timeout_raw!r} is not a number of seconds") from None
    return SmtpSettings(
        host=environ.get(ENV_PREFIX + "HOST", "").strip(),
        port=port,
        username=environ.get(ENV_PREFIX + "USER", "").strip(),
        password=environ.get(ENV_PREFIX + "PASSWORD", ""),
        sender=environ.get(ENV_PREFIX + "FROM", "").strip() or defaults.sender,
        recipient=environ.get(ENV_PREFIX + "TO", "").strip(),
        starttls=_env_bool(environ, "STARTTLS", defaults.starttls),
        use_ssl=use_ssl,
        ca_file=environ.get(ENV_PREFIX + "CA_FILE", "").strip(),
        timeout=timeout,
    )


# -- the message ------------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 10 else f"{value:.2f}"
    return str(value)


def score_lines(scores: Mapping[str, Any], skip: Sequence[str] = ()) -> list[str]:
    """The scores as "name: value" lines; nested dicts (parts, by checkpoint) on one line each."""
    lines = []
    for key, value in scores.items():
        if key in skip:
            continue
        label = key.replace("_", " ")
        if isinstance(value, Mapping):
            inner = ", ".join(f"{str(k).replace('_', ' ')} {_fmt(v)}" for k, v in value.items())
            lines.append(f"{label}: {inner}")
        elif isinstance(value, list | tuple):
            lines.append(f"{label}: {', '.join(_fmt(v) for v in value)}")
        elif value is not None:
            lines.append(f"{label}: {_fmt(value)}")
    return lines


def _subject(record: ModelRecord) -> str:
    if record.status == Status.READY:  # status and verdict in one sentence: "not recognisable" comes first
        return f"Likeness: “{record.name}”: {headline(record.status, record.scores)}"
    if record.status == Status.FAILED:
        return f"Likeness: training “{record.name}” failed"
    if record.status == Status.CANCELLED:
        return f"Likeness: training “{record.name}” was cancelled"
    return f"Likeness: model “{record.name}” is {record.status}"


def _text_body(record: ModelRecord, has_grid: bool) -> str:
    lines = ["Hello,", ""]
    if record.status == Status.READY:
        lines += [f"Your model “{record.name}” finished training. {headline(record.status, record.scores)}.", ""]
    elif record.status == Status.FAILED:
        lines += [f"Training of your model “{record.name}” failed.", "", f"Reason: {record.error or 'unknown'}", "",
                  "Open the Training tab in Likeness for the full log. Common fixes: fewer or smaller photos, a lower",
                  "resolution or a lighter memory mode when memory ran out; more varied, sharper photos of one person",
                  "when the likeness was poor.", ""]
    elif record.status == Status.CANCELLED:
        lines += [f"Training of your model “{record.name}” was cancelled.", ""]
        if record.error:
            lines += [f"Note: {record.error}", ""]
    else:
        lines += [f"Your model “{record.name}” is now {record.status}.", ""]
    lines += [
        f"Trigger word: {record.trigger_word}  (write it in the prompt where the person should appear)",
        f"Base model:   {record.base_model}",
        f"Started:      {record.created_at}",
        f"Finished:     {record.finished_at or '-'}",
        "",
    ]
    if record.scores:
        verdict = record.scores.verdict_text or record.scores.verdict
        if verdict:
            lines += [f"Verdict: {verdict}", ""]
        lines += ["Scores:"] + [f"  {line}" for line in score_lines(record.scores.to_dict(),
                                                                    skip=("verdict", "verdict_text"))]
        lines.append("")
    if record.best_checkpoint_step is not None:
        scale = f" at LoRA scale {record.best_lora_scale:g}" if record.best_lora_scale is not None else ""
        lines += [f"Best checkpoint: step {record.best_checkpoint_step}{scale}", ""]
    if has_grid:
        lines += ["The sample grid (test images from the sample prompts) is included below.", ""]
    lines += ["— Likeness"]
    return "\n".join(lines)


def _html_body(text: str, grid_cid: str | None) -> str:
    image = f'<p><img src="cid:{grid_cid[1:-1]}" alt="sample grid" style="max-width:100%"></p>' if grid_cid else ""
    return f'<html><body><pre style="font-family:sans-serif;white-space:pre-wrap">{html.escape(text)}</pre>' \
           f"{image}</body></html>"


def _mime_type(path: Path) -> tuple[str, str]:
    guessed, _ = mimetypes.guess_type(path.name)
    maintype, _, subtype = (guessed or "application/octet-stream").partition("/")
    return maintype, subtype


def build_training_email(smtp: SmtpSettings, record: ModelRecord, *, images: Sequence[Path] = ()) -> EmailMessage:
    """The message ``send_training_email`` sends: plain text and HTML with the sample grid inline, ``images``
    (other than the grid) attached."""
    message = EmailMessage()
    message["Subject"] = _subject(record)
    message["From"] = smtp.sender
    message["To"] = smtp.recipient
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = make_msgid(domain="likeness.local")
    grid = Path(record.sample_grid) if record.sample_grid and Path(record.sample_grid).is_file() else None
    text = _text_body(record, grid is not None)
    message.set_content(text)
    grid_cid = make_msgid(domain="likeness.local") if grid is not None else None
    message.add_alternative(_html_body(text, grid_cid), subtype="html")
    if grid is not None:
        maintype, subtype = _mime_type(grid)
        message.get_payload()[1].add_related(grid.read_bytes(), maintype, subtype, cid=grid_cid,
                                             filename=grid.name, disposition="inline")
    seen = {grid.resolve()} if grid is not None else set()
    for image in images:
        path = Path(image)
        if not path.is_file():
            raise NotificationError(f"images: {path} does not exist; pass only files that were written")
        if path.resolve() in seen:
            continue  # the grid is already inline
        seen.add(path.resolve())
        maintype, subtype = _mime_type(path)
        message.add_attachment(path.read_bytes(), maintype=maintype, subtype=subtype, filename=path.name)
    return message


# -- sending ----------------------------------------------------------------------------------------------------


def _is_local(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _login(client: smtplib.SMTP, username: str, password: str) -> None:
    """smtplib's login encodes credentials as ASCII and fails on e.g. 'Pässword'; AUTH PLAIN is UTF-8 by its RFC
    (4616), so such credentials go through PLAIN by hand."""
    if (username + password).isascii():
        client.login(username, password)
        return
    if not client.has_extn("auth") or "PLAIN" not in client.esmtp_features["auth"].upper().split():
        raise smtplib.SMTPNotSupportedError("the server does not offer AUTH PLAIN, needed for a non-ASCII password")
    token = base64.b64encode(f"\0{username}\0{password}".encode()).decode("ascii")
    code, response = client.docmd("AUTH", f"PLAIN {token}")
    if code != 235:
        raise smtplib.SMTPAuthenticationError(code, response)


def send_training_email(smtp: SmtpSettings, record: ModelRecord, *, images: Sequence[Path] = ()) -> None:
    """Send the training-finished e-mail for ``record``; raises NotificationError with the reason if it fails."""
    if not smtp.enabled:
        raise NotificationError("smtp: host and recipient must be set (LIKENESS_SMTP_HOST, LIKENESS_SMTP_TO)")
    encrypted = smtp.use_ssl or smtp.starttls
    if smtp.username and not encrypted and not _is_local(smtp.host):
        raise NotificationError(
            f"smtp: refusing to send the password for {smtp.username!r} to {smtp.host} without encryption; "
            "set LIKENESS_SMTP_STARTTLS=1 (port 587) or LIKENESS_SMTP_SSL=1 (port 465)"
        )
    message = build_training_email(smtp, record, images=images)
    recipients = [r.strip() for r in smtp.recipient.split(",") if r.strip()]
    where = f"{smtp.host}:{smtp.port}"
    try:
        context = ssl.create_default_context(cafile=smtp.ca_file or None) if encrypted else None
        if smtp.use_ssl:
            client: smtplib.SMTP = smtplib.SMTP_SSL(smtp.host, smtp.port, timeout=smtp.timeout, context=context)
        else:
            client = smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout)
        with client:
            client.ehlo()
            if smtp.starttls and not smtp.use_ssl:
                client.starttls(context=context)
                client.ehlo()
            if smtp.username:
                _login(client, smtp.username, smtp.password)
            client.send_message(message, from_addr=smtp.sender, to_addrs=recipients)
    except smtplib.SMTPAuthenticationError as error:
        # from None: the chained exception would carry the AUTH exchange
        raise NotificationError(
            f"smtp: {where} refused the login of user {smtp.username!r} ({error.smtp_code}); "
            "check LIKENESS_SMTP_USER and LIKENESS_SMTP_PASSWORD"
        ) from None
    except smtplib.SMTPNotSupportedError as error:
        raise NotificationError(f"smtp: {where} does not support what was asked ({error}); "
                                "try LIKENESS_SMTP_STARTTLS=0 for a server without TLS on this machine") from None
    except ssl.SSLError as error:
        raise NotificationError(f"smtp: TLS with {where} failed ({error.reason or error}); if the server uses its "
                                "own certificate, point LIKENESS_SMTP_CA_FILE at it") from None
    except (smtplib.SMTPException, OSError) as error:
        raise NotificationError(f"smtp: could not send via {where}: {type(error).__name__}: {error}") from None
    logger.info("notify: sent %r to %s via %s", message["Subject"], ", ".join(recipients), where)


def email_notifier(smtp: SmtpSettings) -> Callable[[ModelRecord], str]:
    """A training runner's notifier: the training-finished e-mail with the sample grid; says where it went."""

    def notify(record: ModelRecord) -> str:
        send_training_email(smtp, record, images=[Path(record.sample_grid)] if record.sample_grid else [])
        return f"e-mail sent to {smtp.recipient}"

    return notify
