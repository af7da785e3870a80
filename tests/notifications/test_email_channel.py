"""notifications.channels.email against two real SMTP servers on loopback: what is sent (multipart
text + HTML), failover to the secondary (refused connection, 421, 451, timeout, open breaker), 550
as a permanent failure, and both providers down."""
import smtplib
import ssl
import time

import pytest
from django.core.mail import EmailMultiAlternatives

from notifications.breaker import CircuitBreaker
from notifications.channels import PermanentFailure, UncertainFailure
from notifications.channels import email as smtp
from notifications.channels.base import tls_context
from tests.support.fakesmtp import FakeSMTP, smtp_settings

FAST_BREAKER = {"window": 30.0, "min_calls": 3, "failure_ratio": 0.5, "open_seconds": 30.0,
                "max_open_seconds": 60.0, "probe_seconds": 10.0}


@pytest.fixture
def providers(settings):
    """Two fake providers (primary, secondary) and settings pointing at them."""
    with FakeSMTP() as primary, FakeSMTP() as secondary:
        for name, value in smtp_settings(primary, secondary).items():
            setattr(settings, name, value)
        settings.EMAIL_TIMEOUT = 1.0
        settings.HERALD_BREAKERS = {**settings.HERALD_BREAKERS, "smtp-primary": FAST_BREAKER,
                                    "smtp-secondary": FAST_BREAKER}
        yield primary, secondary


def _message(to: str = "ann@example.com", n: int = 1) -> EmailMultiAlternatives:
    message = EmailMultiAlternatives(subject=f"Hello {n}", body=f"plain {n}", from_email="Herald <herald@test>",
                                     to=[to], headers={"Message-ID": f"<m{n}@test>", "X-Herald-Kind": "test"})
    message.attach_alternative(f"<p>html {n}</p>", "text/html")
    return message


def _send(n: int = 1, to: str = "ann@example.com") -> smtp.Sent:
    return smtp.send(message=_message(to, n), route=smtp.route())


def test_sends_multipart_through_the_primary(providers):
    primary, secondary = providers

    sent = _send()

    assert sent == smtp.Sent(provider="primary", message_id="<m1@test>")
    [received] = primary.messages()
    assert received["rcpt_tos"] == ["ann@example.com"]
    assert received["mail_from"] == "herald@test"
    assert received["subject"] == "Hello 1"
    assert received["message_id"] == "<m1@test>"
    assert received["headers"]["x-herald-kind"] == "test"
    assert received["content_type"] == "multipart/alternative"
    assert received["text"].strip() == "plain 1"
    assert received["html"].strip() == "<p>html 1</p>"
    assert secondary.messages() == []


def test_a_timeout_after_data_is_uncertain_and_does_not_fail_over(providers):
    """The primary may have delivered the mail (its answer to DATA was lost): sending it through
    the secondary would be a duplicate. It is retried later, with the same Message-ID."""
    primary, secondary = providers
    primary.configure(slow_seconds=3.0)  # EMAIL_TIMEOUT is 1 s

    with pytest.raises(UncertainFailure):
        _send()

    assert secondary.messages() == []
    assert primary.stats()["slow"] == 1


@pytest.mark.parametrize("fault", ["refused", "421", "451"])
def test_a_failing_primary_fails_over_to_the_secondary(providers, fault):
    primary, secondary = providers
    if fault == "refused":
        primary.down()
    else:
        primary.configure(temp_fail=fault)

    sent = _send()

    assert sent.provider == "secondary"
    assert [m["message_id"] for m in secondary.messages()] == ["<m1@test>"]
    if fault in ("421", "451"):
        assert primary.stats()["temp_failed"] == 1
    assert CircuitBreaker("smtp-primary").state()["state"] == "closed"  # one failure does not open it


def test_the_primary_breaker_opens_and_then_the_primary_is_not_even_called(providers):
    primary, secondary = providers
    primary.configure(temp_fail="451")
    for n in range(3):  # min_calls failures open the breaker
        assert _send(n).provider == "secondary"
    assert CircuitBreaker("smtp-primary").state()["state"] == "open"
    calls_before = primary.stats()["connections"]

    route = smtp.route()
    sent = smtp.send(message=_message(n=99), route=route)

    assert not route.gates["primary"].allowed and route.gates["secondary"].allowed
    assert sent.provider == "secondary"
    assert primary.stats()["connections"] == calls_before


def test_recipient_refused_with_550_is_permanent_and_not_retried_elsewhere(providers):
    primary, secondary = providers
    primary.configure(reject={"gone@example.com"})

    with pytest.raises(PermanentFailure, match="550"):
        _send(to="gone@example.com")

    assert primary.stats()["rejected"] == 1
    assert secondary.stats()["connections"] == 0
    assert CircuitBreaker("smtp-primary").state()["state"] == "closed"


def test_both_down_is_transient_then_the_breakers_open_and_nothing_is_called(providers):
    primary, secondary = providers
    primary.down()
    secondary.configure(temp_fail="421")

    for n in range(3):
        with pytest.raises(smtp.ProvidersDown) as excinfo:
            _send(n)
        assert not excinfo.value.outage  # healthy-looking providers failed: this costs an attempt
    route = smtp.route()

    assert not route.open
    assert 25 < route.wait <= 30  # the breakers' open_seconds
    assert secondary.stats()["temp_failed"] == 3
    assert secondary.messages() == []


def test_a_failed_half_open_probe_is_an_outage_not_the_message_s_fault(providers, settings):
    primary, secondary = providers
    quick = {**FAST_BREAKER, "open_seconds": 0.2}
    settings.HERALD_BREAKERS = {**settings.HERALD_BREAKERS, "smtp-primary": quick, "smtp-secondary": quick}
    primary.down()
    secondary.down()
    for n in range(3):
        with pytest.raises(smtp.ProvidersDown):
            _send(n)
    assert not smtp.route().open

    time.sleep(0.3)
    route = smtp.route()  # the primary's probe is due
    assert route.gates["primary"].state == "half_open"
    with pytest.raises(smtp.ProvidersDown) as excinfo:
        smtp.send(message=_message(n=7), route=route)

    assert excinfo.value.outage


def test_classification_of_smtp_errors():
    assert smtp._classify(smtplib.SMTPRecipientsRefused({"a@x": (550, b"no")})) == "permanent"
    assert smtp._classify(smtplib.SMTPRecipientsRefused({"a@x": (452, b"full")})) == "transient"
    assert smtp._classify(smtplib.SMTPDataError(554, b"rejected")) == "permanent"
    assert smtp._classify(smtplib.SMTPDataError(451, b"later")) == "transient"
    assert smtp._classify(smtplib.SMTPSenderRefused(550, b"bad sender", "h@x")) == "transient"  # our account
    assert smtp._classify(smtplib.SMTPServerDisconnected("gone")) == "transient"
    assert smtp._classify(TimeoutError("timed out")) == "transient"
    assert smtp._classify(ConnectionRefusedError(111, "refused")) == "transient"


def test_every_email_shares_one_verifying_tls_context(providers, tmp_path):
    """Django's SMTP backend builds a TLS context (loading the CA store, ~20 ms of CPU) per backend,
    that is per email here: STARTTLS uses the process's one verifying context instead, unless a
    client certificate is configured."""
    first, second = smtp.backend("primary"), smtp.backend("secondary")

    assert first.ssl_context is second.ssl_context is tls_context()
    assert first.ssl_context.verify_mode == ssl.CERT_REQUIRED and first.ssl_context.check_hostname
    with_cert = smtp.SMTPBackend(host="127.0.0.1", ssl_certfile=str(tmp_path / "missing.pem"))
    with pytest.raises(FileNotFoundError):  # its own context, loading the configured certificate
        with_cert.ssl_context
