"""common.logs: credentials never reach a log line, whichever logger, handler or format is used."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest
from starlette.datastructures import FormData, QueryParams

from common import logs
from common.logs import REDACTED, install_redaction, redact

JWS = "eyJhbGciOiJFUzM4NCIsImtpZCI6ImsxIn0.eyJzdWIiOiJwYXRpZW50LTEifQ.c2lnbmF0dXJlLWJ5dGVz"
JWE = "eyJhbGciOiJSU0EtT0FFUC0yNTYifQ.ZW5jcnlwdGVkLWtleQ.aXY.Y2lwaGVydGV4dA.dGFn"


# --- redact() ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("calling with Bearer abc123", f"calling with Bearer {REDACTED}"),
        ("using bearer abc.def-ghi_jkl~x+y/z=", f"using bearer {REDACTED}"),
        ("DPoP abc123", f"DPoP {REDACTED}"),
        ("Basic dXNlcjpwYXNz", f"Basic {REDACTED}"),
    ],
)
def test_redact_hides_bearer_basic_and_dpop_credentials(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer abc123", f"Authorization: {REDACTED}"),
        ("authorization: Basic dXNlcjpwYXNz", f"authorization: {REDACTED}"),
        ("Authorization: Token abc123", f"Authorization: {REDACTED}"),
        ("AUTHORIZATION:ApiKey abc123", f"AUTHORIZATION:{REDACTED}"),
        ("Proxy-Authorization: Negotiate YIIabc", f"Proxy-Authorization: {REDACTED}"),
        ("authorization=PrivateScheme abc123", f"authorization={REDACTED}"),
        ("{'authorization': 'Token abc123'}", f"{{'authorization': '{REDACTED}'}}"),
        ('{"Authorization": "ApiKey abc123"}', f'{{"Authorization": "{REDACTED}"}}'),
        ("[('authorization', 'Token abc123')]", f"[('authorization', '{REDACTED}')]"),
        ("Authorization: Token abc123\r\nHost: ehr", f"Authorization: {REDACTED}\r\nHost: ehr"),
    ],
)
def test_redact_hides_authorization_header_values_of_any_scheme(text: str, expected: str) -> None:
    assert redact(text) == expected
    assert "abc123" not in redact(text)


@pytest.mark.parametrize(
    "text",
    [
        "[(b'host', b'ehr'), (b'authorization', b'Token abc123')]",
        'Authorization: Digest username="u", response="abc123"',
    ],
)
def test_redact_hides_authorization_values_in_raw_asgi_headers_and_quoted_schemes(text: str) -> None:
    assert "abc123" not in redact(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"token {JWS} rejected", "token [JWT] rejected"),
        (JWS, "[JWT]"),
        (f"encrypted {JWE} end", "encrypted [JWT] end"),
        (f"'{JWS}'", "'[JWT]'"),
        (f"a={JWS}&b=1", "a=[JWT]&b=1"),
        (f"two: {JWS} {JWE}", "two: [JWT] [JWT]"),
    ],
)
def test_redact_hides_jwt_shaped_strings_of_three_and_five_parts(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    "name",
    [
        "access_token",
        "refresh_token",
        "id_token",
        "code",
        "client_assertion",
        "client_secret",
        "password",
        "subject_token",
        "actor_token",
        "code_verifier",
        "assertion",
        "token",
        "admin_token",
        "state",
        "launch",
    ],
)
@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("GET /cb?{name}=s3cr3t HTTP/1.1", "GET /cb?{name}=[REDACTED] HTTP/1.1"),
        ("GET /cb?x=1&{name}=s3cr3t&y=2", "GET /cb?x=1&{name}=[REDACTED]&y=2"),
        ("{name}=s3cr3t&grant_type=x", "{name}=[REDACTED]&grant_type=x"),
        ("body: {name}=s3cr3t", "body: {name}=[REDACTED]"),
        ('{{"{name}": "s3cr3t", "n": 1}}', '{{"{name}": "[REDACTED]", "n": 1}}'),
        ('{{"{name}":"s3cr3t"}}', '{{"{name}":"[REDACTED]"}}'),
        ("{{'{name}': 's3cr3t'}}", "{{'{name}': '[REDACTED]'}}"),
        ("{{'a': 1, '{name}': 's3cr3t'}}", "{{'a': 1, '{name}': '[REDACTED]'}}"),
        ("GET /cb?{NAME}=s3cr3t", "GET /cb?{NAME}=[REDACTED]"),
    ],
)
def test_redact_hides_credential_parameters_in_queries_forms_and_json(name: str, template: str, expected: str) -> None:
    text = template.format(name=name, NAME=name.upper())

    assert redact(text) == expected.format(name=name, NAME=name.upper())
    assert "s3cr3t" not in redact(text)


@pytest.mark.parametrize(
    "text",
    [
        repr(QueryParams("code=abc123&state=xyz")),
        repr(FormData([("client_secret", "abc123"), ("grant_type", "client_credentials")])),
        repr(FormData([("grant_type", "authorization_code"), ("code", "abc123")])),
    ],
)
def test_redact_hides_credentials_in_the_repr_of_starlette_query_params_and_form_data(text: str) -> None:
    assert "abc123" not in redact(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "HTTP 200 OK",
        "The request succeeded in 12 ms",
        "expires_in=300",
        "token_type=Bearer",
        "grant_type=authorization_code",
        "scope=openid fhirUser patient/*.read",
        "patient=123&encounter=9",
        "redirect_uri=https://app.example/cb",
        "barcode=123",
        "codec=h264",
        "unicode=utf8",
        "unknown state",
        "status code 200",
        "GET /fhir/Patient/123 HTTP/1.1",
        "client_id=my-app",
        "kid=abc123 alg=ES384",
        "eyJ alone is not a token",
        "service authserver ready on https://localhost:8443",
    ],
)
def test_redact_leaves_harmless_text_alone(text: str) -> None:
    assert redact(text) == text


# --- install_redaction(): real records ----------------------------------------------------------


@pytest.fixture
def redaction(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Install the record factory for this test only, whatever another test installed."""
    previous = logging.getLogRecordFactory()
    monkeypatch.setattr(logs, "_installed", False)
    install_redaction()
    yield
    logging.setLogRecordFactory(previous)


class _OnlyHandler(logging.Logger):
    """A registered logger that ignores handlers added by others (pytest's log capture attaches its own,
    which turns a logging error into a test exception instead of logging's real stderr report)."""

    own: logging.Handler

    def callHandlers(self, record: logging.LogRecord) -> None:
        if record.levelno >= self.own.level:
            self.own.handle(record)


@pytest.fixture
def captured(redaction: None, request: pytest.FixtureRequest) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A real logger from logging.getLogger with a StringIO StreamHandler attached."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.setLoggerClass(_OnlyHandler)
    try:
        logger = logging.getLogger(f"test_logs.{request.node.name}")
    finally:
        logging.setLoggerClass(logging.Logger)
    assert isinstance(logger, _OnlyHandler)
    logger.own = handler
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def test_install_redaction_is_idempotent(redaction: None) -> None:
    factory = logging.getLogRecordFactory()

    install_redaction()

    assert logging.getLogRecordFactory() is factory


def test_a_credential_in_a_logged_argument_is_redacted_before_any_handler_sees_it(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured

    logger.info("GET %s", "/cb?code=secret123&state=xyz")

    assert stream.getvalue() == f"INFO {logger.name}: GET /cb?code={REDACTED}&state={REDACTED}\n"


def test_a_credential_in_the_message_itself_is_redacted(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured

    logger.warning("refused Authorization: Token secret123")

    assert stream.getvalue() == f"WARNING {logger.name}: refused Authorization: {REDACTED}\n"


def test_a_credential_whose_value_is_a_placeholder_is_logged_redacted_not_dropped(
    captured: tuple[logging.Logger, io.StringIO], capsys: pytest.CaptureFixture[str]
) -> None:
    logger, stream = captured

    logger.info("GET /cb?code=%s", "secret123")

    assert stream.getvalue() == f"INFO {logger.name}: GET /cb?code={REDACTED}\n"
    assert "secret123" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("msg", "args"),
    [
        ("GET /cb?code=%s", ("secret123",)),
        ("token=%s accepted", ("secret123",)),
        ('{"client_secret": "%s"}', ("secret123",)),
    ],
)
def test_a_credential_whose_value_is_a_placeholder_never_reaches_stderr(
    msg: str, args: tuple[str, ...], captured: tuple[logging.Logger, io.StringIO], capsys: pytest.CaptureFixture[str]
) -> None:
    logger, stream = captured

    logger.info(msg, *args)

    err = capsys.readouterr().err
    assert stream.getvalue().startswith(f"INFO {logger.name}: ")
    assert "secret123" not in stream.getvalue()
    assert "secret123" not in err
    assert "Logging error" not in err


def test_an_exception_message_carrying_a_jwt_is_redacted_in_the_logged_traceback(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured

    try:
        raise ValueError(f"cannot use token {JWS} for Bearer {JWS[:20]}")
    except ValueError:
        logger.exception("request failed")

    out = stream.getvalue()
    assert out.startswith(f"ERROR {logger.name}: request failed\nTraceback (most recent call last):\n")
    assert "ValueError: cannot use token [JWT] for Bearer [REDACTED]" in out
    assert JWS not in out
    assert JWS[:20] not in out


def test_a_chained_exception_traceback_is_redacted_too(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured

    try:
        try:
            raise KeyError(f"access_token={JWS[:30]}x")
        except KeyError as inner:
            raise RuntimeError("outer") from inner
    except RuntimeError:
        logger.exception("failed")

    out = stream.getvalue()
    assert f"access_token={REDACTED}" in out
    assert JWS[:30] not in out
    assert "RuntimeError: outer" in out


def test_a_uvicorn_access_style_record_still_formats_with_the_token_redacted(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured

    logger.info(
        '%s - "%s %s HTTP/%s" %d',
        "127.0.0.1:54321",
        "GET",
        "/cds-services/greeting?access_token=abc&x=1",
        "1.1",
        200,
    )

    assert stream.getvalue() == (
        f'INFO {logger.name}: 127.0.0.1:54321 - "GET /cds-services/greeting?access_token={REDACTED}&x=1 HTTP/1.1" 200\n'
    )


def test_mapping_bytes_and_object_arguments_are_redacted(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured

    logger.info("%(path)s", {"path": "/token?refresh_token=abc"})
    logger.info("%s %s", "headers", {"Authorization": "Token abc"})
    logger.info("%s", b"grant_type=x&client_secret=abc")

    lines = stream.getvalue().splitlines()
    assert lines[:2] == [
        f"INFO {logger.name}: /token?refresh_token={REDACTED}",
        f"INFO {logger.name}: headers {{'Authorization': '{REDACTED}'}}",
    ]
    assert f"&client_secret={REDACTED}" in lines[2]
    assert "abc" not in stream.getvalue()


@pytest.mark.parametrize(
    "arg",
    [
        {"client_secret": "abc123", "grant_type": "client_credentials"},
        {"authorization": "Token abc123"},
        {"code": "abc123", "state": "xyz"},
    ],
)
def test_a_dict_logged_as_the_only_argument_has_its_credentials_redacted(
    arg: dict[str, str], captured: tuple[logging.Logger, io.StringIO]
) -> None:
    logger, stream = captured

    logger.info("received %s", arg)

    assert stream.getvalue().startswith(f"INFO {logger.name}: received {{")
    assert "abc123" not in stream.getvalue()


def test_a_bytes_argument_that_starts_with_a_credential_is_redacted(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured

    logger.info("%s", b"client_secret=abc123&grant_type=client_credentials")

    assert "abc123" not in stream.getvalue()


UVICORN_ACCESS_MSG = '%s - "%s %s HTTP/%s" %d'
UVICORN_ACCESS_ARGS = ("127.0.0.1:54321", "GET", "/cds-services/greeting?access_token=abc123&x=1", "1.1", 200)


def test_a_record_of_the_real_uvicorn_access_logger_formats_with_uvicorns_formatter_and_is_redacted(
    redaction: None,
) -> None:
    from uvicorn.logging import AccessFormatter

    record = logging.getLogger("uvicorn.access").makeRecord(
        "uvicorn.access", logging.INFO, __file__, 1, UVICORN_ACCESS_MSG, UVICORN_ACCESS_ARGS, None
    )
    formatter = AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s', use_colors=False)

    assert formatter.format(record) == (
        f'127.0.0.1:54321 - "GET /cds-services/greeting?access_token={REDACTED}&x=1 HTTP/1.1" 200 OK'
    )
    assert logging.Formatter("%(message)s").format(record) == (
        f'127.0.0.1:54321 - "GET /cds-services/greeting?access_token={REDACTED}&x=1 HTTP/1.1" 200'
    )


def test_numeric_arguments_keep_their_type_so_numeric_formats_still_work(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured

    logger.info("%d %.1f %s %s", 7, 2.5, None, True)

    assert stream.getvalue() == f"INFO {logger.name}: 7 2.5 None True\n"


def test_records_made_after_install_are_redacted_whatever_the_handler(redaction: None) -> None:
    record = logging.getLogger("x").makeRecord("x", logging.INFO, __file__, 1, "got %s", (f"Bearer {JWS}",), None)

    assert record.getMessage() == f"got Bearer {REDACTED}"


@pytest.mark.parametrize(
    "text",
    [
        "GET /cb?code=abc&state=xyz HTTP/1.1",
        "Authorization: Bearer eyJhbGciOiJFUzM4NCJ9.eyJzdWIiOiJ4In0.c2ln",
        '{"access_token": "tok", "refresh_token": "r"}',
        "QueryParams('code=abc')",
        "token=zzz",
        "(b'authorization', b'Token abc')",
    ],
)
def test_redaction_is_idempotent(text: str) -> None:
    once = redact(text)
    assert redact(once) == once
