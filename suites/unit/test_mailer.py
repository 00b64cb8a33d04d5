"""The mailer against real SMTP servers (aiosmtpd, each on a free loopback port, in its own
thread): STARTTLS required and verified against a CA made for the test, the login only after
it (LOGIN and PLAIN), implicit TLS, and each failure as its generic error: a refused login
that never shows the password, a server without STARTTLS, an untrusted certificate, nothing
listening, a server that never answers, SMTP not configured; and ``mailto:`` URLs."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from app.core.config import SmtpSettings
from app.services.mailer import MailError, is_mailto, parse_mailto, send_email
from qa.launcher import free_port

USER = "renum-alerts"
PASSWORD = "correct horse battery staple"  # the test server's
HEADERS = {"Renum-Delivery": "d-123", "Renum-Event": "alert.firing"}


# -- certificates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certificates:
    ca_file: Path  # the CA to trust
    folder: Path  # <name>.pem and <name>.key: server certificates the CA signed

    def server_context(self, name: str = "loopback") -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.folder / f"{name}.pem", self.folder / f"{name}.key")
        return context


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A CA and two server certificates it signed: ``loopback`` for 127.0.0.1 and localhost,
    ``elsewhere`` for mail.example.test only."""
    folder = tmp_path_factory.mktemp("smtp-tls")
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    usage = dict.fromkeys(
        [
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "encipher_only",
            "decipher_only",
        ],
        False,
    )
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("Renum test CA"))
        .issuer_name(_name("Renum test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, **usage),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    made = Certificates(folder / "ca.pem", folder)
    made.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    names: dict[str, list[x509.GeneralName]] = {
        "loopback": [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        "elsewhere": [x509.DNSName("mail.example.test")],
    }
    for file_name, alternatives in names.items():
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = (
            x509.CertificateBuilder()
            .subject_name(_name(str(alternatives[0].value)))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.OID_SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
            .sign(ca_key, hashes.SHA256())
        )
        (folder / f"{file_name}.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
        (folder / f"{file_name}.key").write_bytes(_pem_key(key))
    return made


# -- servers ------------------------------------------------------------------------------------


class Mailbox:
    """An aiosmtpd handler keeping every message it accepts, and the logins it saw."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._messages: list[tuple[str, list[str], EmailMessage]] = []
        self.logins: list[tuple[str, str, bool]] = []  # mechanism, user, over TLS

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        with self._lock:
            self._messages.append((envelope.mail_from, list(envelope.rcpt_tos), message))
        return "250 Message accepted for delivery"

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        user, password = auth_data.login.decode(), auth_data.password.decode()
        with self._lock:
            self.logins.append((mechanism, user, session.ssl is not None))
        # handled=False: aiosmtpd answers a failure itself (535)
        return AuthResult(success=(user, password) == (USER, PASSWORD), handled=False)

    @property
    def messages(self) -> list[tuple[str, list[str], EmailMessage]]:
        with self._lock:
            return list(self._messages)


@dataclass
class Server:
    mailbox: Mailbox
    port: int


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    """Start aiosmtpd servers on free loopback ports (``Controller`` keywords go to the
    server); every one is stopped when the test ends."""
    started: list[Controller] = []

    def start(**kwargs: Any) -> Server:
        mailbox = Mailbox()
        port = free_port()
        if kwargs.pop("authenticate", False):
            kwargs["authenticator"] = mailbox.authenticate
        controller = Controller(mailbox, hostname="127.0.0.1", port=port, **kwargs)
        controller.start()
        started.append(controller)
        return Server(mailbox, port)

    try:
        yield start
    finally:
        for controller in started:
            controller.stop()


def settings(port: int, **overrides: Any) -> SmtpSettings:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "security": "starttls",
        "from_address": "Renum alerts <renum-alerts@example.test>",
        "timeout_seconds": 5.0,
        **overrides,
    }
    return SmtpSettings(**values)


def text_of(message: EmailMessage) -> str:
    """The plain-text body as sent (SMTP's CRLF line ends made LF)."""
    body = message.get_body(("plain",))
    assert isinstance(body, EmailMessage)
    return str(body.get_content()).replace("\r\n", "\n").rstrip("\n")


async def send(smtp: SmtpSettings, **kwargs: Any) -> None:
    await send_email(
        smtp,
        kwargs.pop("recipients", ["ops@example.test", "oncall+renum@example.test"]),
        kwargs.pop("subject", "[FIRING] p95 latency (test)"),
        kwargs.pop("text", "GET /api/v1/teams: p95 2.50s (bound 2s)\nRule: route_latency_p95"),
        headers=kwargs.pop("headers", HEADERS),
        **kwargs,
    )


# -- sending ------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("mechanism", ["LOGIN", "PLAIN"])
async def test_starttls_then_login_delivers_the_message(
    serve: Callable[..., Server], certificates: Certificates, mechanism: str
) -> None:
    other = {"LOGIN": "PLAIN", "PLAIN": "LOGIN"}[mechanism]
    server = serve(
        tls_context=certificates.server_context(),
        require_starttls=True,
        auth_require_tls=True,  # AUTH is offered only once TLS is up
        auth_exclude_mechanism=[other],
        authenticate=True,
    )
    smtp = settings(
        server.port, username=USER, password=PASSWORD, ca_file=str(certificates.ca_file)
    )
    await send(smtp, message_id="d-123")

    assert server.mailbox.logins == [(mechanism, USER, True)]
    ((sender, recipients, message),) = server.mailbox.messages
    assert sender == "renum-alerts@example.test"  # the envelope has the bare address
    assert recipients == ["ops@example.test", "oncall+renum@example.test"]
    assert message["From"] == "Renum alerts <renum-alerts@example.test>"
    assert message["To"] == "ops@example.test, oncall+renum@example.test"
    assert message["Subject"] == "[FIRING] p95 latency (test)"
    assert message["Renum-Delivery"] == "d-123"
    assert message["Renum-Event"] == "alert.firing"
    assert message["Message-ID"] == "<d-123@example.test>"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["Date"]
    assert text_of(message) == "GET /api/v1/teams: p95 2.50s (bound 2s)\nRule: route_latency_p95"


@pytest.mark.anyio
async def test_implicit_tls_delivers(
    serve: Callable[..., Server], certificates: Certificates
) -> None:
    server = serve(ssl_context=certificates.server_context())
    smtp = settings(server.port, security="tls", ca_file=str(certificates.ca_file))
    await send(smtp, subject="multi\nline subject", text="Grüße ✓")
    ((_, _, message),) = server.mailbox.messages
    assert message["Subject"] == "multi line subject"  # no header injection
    assert message["Message-ID"].endswith("@example.test>")
    assert text_of(message) == "Grüße ✓"


@pytest.mark.anyio
async def test_a_plain_relay_without_tls_delivers(serve: Callable[..., Server]) -> None:
    server = serve()
    await send(settings(server.port, security="none"), recipients=["ops@example.test"])
    ((_, recipients, _),) = server.mailbox.messages
    assert recipients == ["ops@example.test"]


# -- failures -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_wrong_password_is_a_generic_login_error_without_the_password(
    serve: Callable[..., Server], certificates: Certificates
) -> None:
    server = serve(
        tls_context=certificates.server_context(), require_starttls=True, authenticate=True
    )
    wrong = "not-the-password-s3cr3t"
    smtp = settings(server.port, username=USER, password=wrong, ca_file=str(certificates.ca_file))
    with pytest.raises(MailError) as caught:
        await send(smtp)
    assert str(caught.value) == "the server refused the login"
    assert not caught.value.permanent  # the operator may fix it: retried
    assert wrong not in repr(caught.value)
    assert wrong not in str(caught.value.args)
    assert caught.value.__cause__ is None
    assert server.mailbox.messages == []


@pytest.mark.anyio
async def test_starttls_is_required_not_opportunistic(serve: Callable[..., Server]) -> None:
    server = serve(authenticate=True, auth_require_tls=False)  # no TLS; would take a login
    smtp = settings(server.port, username=USER, password=PASSWORD)
    with pytest.raises(MailError, match=r"^the server does not offer STARTTLS \(required\)$"):
        await send(smtp)
    assert server.mailbox.logins == []  # the password never went out in the clear
    assert server.mailbox.messages == []


@pytest.mark.anyio
@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_an_untrusted_certificate_fails_tls(
    serve: Callable[..., Server], certificates: Certificates, security: str
) -> None:
    """Without ``ca_file`` the system's trust store applies, which does not know the test CA."""
    if security == "tls":
        server = serve(ssl_context=certificates.server_context())
    else:
        server = serve(tls_context=certificates.server_context(), require_starttls=True)
    with pytest.raises(MailError, match=r"^TLS failed$"):
        await send(settings(server.port, security=security, username=USER, password=PASSWORD))
    assert server.mailbox.logins == []
    assert server.mailbox.messages == []


@pytest.mark.anyio
async def test_a_trusted_certificate_for_another_name_fails_tls(
    serve: Callable[..., Server], certificates: Certificates
) -> None:
    server = serve(tls_context=certificates.server_context("elsewhere"), require_starttls=True)
    smtp = settings(
        server.port, username=USER, password=PASSWORD, ca_file=str(certificates.ca_file)
    )
    with pytest.raises(MailError, match=r"^TLS failed$"):
        await send(smtp)
    assert server.mailbox.logins == []
    assert server.mailbox.messages == []


@pytest.mark.anyio
async def test_nothing_listening_is_could_not_connect() -> None:
    with pytest.raises(MailError, match=r"^could not connect$") as caught:
        await send(settings(free_port()))
    assert not caught.value.permanent


@pytest.mark.anyio
async def test_a_server_that_never_answers_times_out() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never greets
        port = silent.getsockname()[1]
        with pytest.raises(MailError, match=r"^timed out after 0\.3s$"):
            await send(settings(port, timeout_seconds=0.3))


class RefusingMailbox(Mailbox):
    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        return f"550 5.1.1 <{address}>: no such user here"


@pytest.mark.anyio
async def test_a_refused_recipient_is_generic() -> None:
    controller = Controller(RefusingMailbox(), hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        smtp = settings(controller.port, security="none")
        with pytest.raises(MailError, match=r"^the server refused a recipient$"):
            await send(smtp, recipients=["secret-list@example.test"])
    finally:
        controller.stop()


@pytest.mark.anyio
async def test_smtp_not_configured_is_permanent() -> None:
    with pytest.raises(MailError, match=r"^SMTP is not configured$") as caught:
        await send(SmtpSettings())
    assert caught.value.permanent


@pytest.mark.anyio
async def test_an_unreadable_ca_file_is_an_error(tmp_path: Path) -> None:
    smtp = settings(free_port(), ca_file=str(tmp_path / "missing.pem"))
    with pytest.raises(MailError, match=r"^the CA file cannot be read$"):
        await send(smtp)


# -- mailto URLs --------------------------------------------------------------------------------


def test_mailto_urls_name_their_recipients_percent_decoded() -> None:
    assert parse_mailto("mailto:a@example.com") == ["a@example.com"]
    assert parse_mailto("MAILTO:a%2Bb@example.com,c@example.com") == [
        "a+b@example.com",
        "c@example.com",
    ]
    assert parse_mailto("mailto:a@example.com?to=b@example.com&subject=ignored") == [
        "a@example.com",
        "b@example.com",
    ]
    assert parse_mailto("mailto:?to=b@example.com,a@example.com,b@example.com") == [
        "b@example.com",
        "a@example.com",
    ]
    assert is_mailto("mailto:x@y")
    assert is_mailto("Mailto:x@y")
    assert not is_mailto("https://hooks.example.com/mailto:x")


@pytest.mark.parametrize(
    "url",
    [
        "mailto:",
        "mailto:?subject=hi",
        "mailto:not-an-address",
        "mailto:a@example.com%0D%0ABcc:%20x@evil.test",
        "mailto:%3Ca@example.com%3E",
        "mailto:a b@example.com",
        "mailto:a@",
        "mailto:%FF@example.com",
        "https://example.com/x",
    ],
)
def test_a_malformed_mailto_url_is_a_permanent_error(url: str) -> None:
    with pytest.raises(MailError) as caught:
        parse_mailto(url)
    assert caught.value.permanent
