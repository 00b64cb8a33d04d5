"""Email for the delivery service: one plain-text message sent through the operator's SMTP
server (``monitor.alerts.smtp``), and the ``mailto:`` URLs that name its recipients.

:func:`send_email` opens one connection per message (alerts are rare; nothing is pooled):
``tls`` starts in TLS, ``starttls`` requires the upgrade (a server that does not offer it is
an error, never a fallback to the clear), ``none`` sends in the clear. Certificates are
verified, host name included, against ``ca_file`` when it is set, else the system's trust
store. The login (``username``) happens only after TLS when TLS is configured. The whole
conversation is bounded by ``timeout_seconds``; the ``QUIT`` after an accepted message is
best effort.

Failures raise :class:`MailError` with a generic message (``could not connect``, ``TLS
failed``, ``the server refused the login``, ``SMTP error 451``): never the server's reply
text, an address it refused or a credential, since the message lands in the delivery log.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Mapping, Sequence
from email.errors import MessageError
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from urllib.parse import unquote, urlsplit

import aiosmtplib

from app.core.config import SmtpSettings
from app.core.logging import get_logger

log = get_logger("app.mailer")

MAILTO = "mailto:"
QUIT_SECONDS = 5.0


class MailError(Exception):
    """An email could not be sent. ``str()`` is generic (safe for the delivery log);
    ``permanent``: no retry can help."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def is_mailto(url: str) -> bool:
    """Whether a delivery's URL names email recipients (the scheme is case-insensitive)."""
    return url[: len(MAILTO)].lower() == MAILTO


def parse_mailto(url: str) -> list[str]:
    """The recipients of a ``mailto:`` URL (RFC 6068): the comma-separated addresses of its
    path and of its ``to`` fields, percent-decoded, each a plain ``local@domain``. Other
    fields (``subject``, ``body``, ...) are ignored: the delivery's payload holds the message.
    Raises a permanent :class:`MailError` when the URL is malformed or names no recipient."""
    if not is_mailto(url):
        raise MailError("the destination is not a mailto URL", permanent=True)
    parts = urlsplit(url)
    encoded = [item for item in parts.path.split(",") if item]
    for field_ in parts.query.split("&") if parts.query else []:
        name, _, value = field_.partition("=")
        if unquote(name).lower() == "to":
            encoded.extend(item for item in value.split(",") if item)
    recipients: list[str] = []
    for item in encoded:
        try:
            address = Address(addr_spec=unquote(item, errors="strict")).addr_spec
        except (ValueError, IndexError, MessageError):  # defects, parse errors
            raise MailError("the mailto URL is malformed", permanent=True) from None
        if address not in recipients:
            recipients.append(address)
    if not recipients:
        raise MailError("the mailto URL names no recipient", permanent=True)
    return recipients


def build_message(
    smtp: SmtpSettings,
    recipients: Sequence[str],
    subject: str,
    text: str,
    *,
    headers: Mapping[str, str],
    message_id: str | None = None,
) -> EmailMessage:
    """The plain-text message (UTF-8), marked ``Auto-Submitted: auto-generated`` (RFC 3834)
    so that auto-responders stay quiet. ``message_id`` is the unique part of the
    ``Message-ID`` (the delivery id keeps it the same on every attempt); random by default.
    Raises a permanent :class:`MailError` when a header cannot be encoded."""
    domain = parseaddr(smtp.from_address)[1].rpartition("@")[2] or "localhost"
    message = EmailMessage()
    try:
        message["From"] = smtp.from_address
        message["To"] = ", ".join(recipients)
        message["Subject"] = " ".join(subject.splitlines())
        message["Date"] = formatdate(usegmt=True)
        message["Message-ID"] = (
            f"<{message_id}@{domain}>" if message_id else make_msgid(domain=domain)
        )
        message["Auto-Submitted"] = "auto-generated"
        for name, value in headers.items():
            message[name] = value
        message.set_content(text)
    except (ValueError, TypeError, IndexError):
        raise MailError("the message cannot be encoded", permanent=True) from None
    return message


async def send_email(
    smtp: SmtpSettings,
    recipients: list[str],
    subject: str,
    text: str,
    *,
    headers: dict[str, str],
    message_id: str | None = None,
) -> None:
    """Send one plain-text email to ``recipients`` through ``smtp`` (see the module
    docstring), with ``headers`` added to the message. Returns once the server accepted it
    for at least one recipient (the others refused are logged, counted, not retried); raises
    :class:`MailError` otherwise."""
    if not smtp.host:
        raise MailError("SMTP is not configured", permanent=True)
    if not recipients:
        raise MailError("no recipient", permanent=True)
    message = build_message(smtp, recipients, subject, text, headers=headers, message_id=message_id)
    sender = parseaddr(smtp.from_address)[1] or smtp.from_address
    seconds = smtp.timeout_seconds
    client = aiosmtplib.SMTP(
        hostname=smtp.host,
        port=smtp.port,
        timeout=seconds,
        use_tls=smtp.security == "tls",
        start_tls=False,  # upgraded below, where its absence is an error
    )
    stage = "connect"
    try:
        async with asyncio.timeout(seconds):
            context = await _tls_context(smtp) if smtp.security != "none" else None
            await client.connect(tls_context=context)
            if smtp.security == "starttls":
                await client.ehlo()
                if not client.supports_extension("starttls"):
                    raise MailError("the server does not offer STARTTLS (required)")
                stage = "tls"
                await client.starttls()
            if smtp.username:
                stage = "login"
                password = smtp.password.get_secret_value() if smtp.password else ""
                await client.login(smtp.username, password)
            stage = "send"
            refused, _ = await client.send_message(message, sender=sender, recipients=recipients)
        if refused:
            log.warning(
                "email_recipients_refused", refused=len(refused), recipients=len(recipients)
            )
        with contextlib.suppress(Exception):  # accepted already: a lost QUIT changes nothing
            async with asyncio.timeout(min(seconds, QUIT_SECONDS)):
                await client.quit()
    except MailError:
        raise
    except Exception as exc:
        raise _failure(exc, stage, seconds) from None
    finally:
        client.close()  # also when cancelled


async def _tls_context(smtp: SmtpSettings) -> ssl.SSLContext:
    """A client context verifying the server's certificate and name: against ``ca_file``
    alone when it is set, else the system's trust store (read off the event loop)."""
    try:
        return await asyncio.to_thread(ssl.create_default_context, cafile=smtp.ca_file)
    except (OSError, ValueError):  # a missing file; ssl.SSLError (an OSError): not a bundle
        raise MailError("the CA file cannot be read") from None


def _failure(exc: Exception, stage: str, seconds: float) -> MailError:
    """The generic error of a failed conversation (never the server's text)."""
    if isinstance(exc, TimeoutError):  # aiosmtplib's timeouts and the overall deadline
        return MailError(f"timed out after {seconds:g}s")
    if stage == "tls" or _caused_by(exc, ssl.SSLError):  # the upgrade, or implicit TLS's
        return MailError("TLS failed")
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return MailError("the server refused the login")
    if isinstance(exc, (aiosmtplib.SMTPRecipientsRefused, aiosmtplib.SMTPRecipientRefused)):
        return MailError("the server refused a recipient")
    if isinstance(exc, aiosmtplib.SMTPSenderRefused):
        return MailError("the server refused the sender")
    if isinstance(exc, aiosmtplib.SMTPNotSupported):
        return MailError("the server does not support internationalized addresses (SMTPUTF8)")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return MailError(f"SMTP error {exc.code}")
    if stage == "connect" and isinstance(exc, (aiosmtplib.SMTPConnectError, OSError)):
        return MailError("could not connect")
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected):
        return MailError("the server closed the connection")
    if stage == "login" and isinstance(exc, aiosmtplib.SMTPException):
        return MailError("the server offers no login (AUTH)")
    if isinstance(exc, OSError):
        return MailError("the connection failed")
    if stage == "send" and isinstance(exc, ValueError):  # an address that cannot be sent
        return MailError("the message cannot be sent to these addresses", permanent=True)
    return MailError(f"the email failed ({type(exc).__name__})")


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False
