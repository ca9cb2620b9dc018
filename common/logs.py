"""Log redaction: Authorization headers, bearer tokens, JWT-shaped strings and credential
parameters never reach a log line.

Redaction happens when a record is *created* (a LogRecord factory), so it covers every logger and
handler — uvicorn's access log included — whatever logging configuration is in force.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

REDACTED = "[REDACTED]"

_CREDENTIAL_NAMES = (
    "access_token|refresh_token|id_token|subject_token|actor_token|client_assertion|assertion"
    "|client_secret|code_verifier|code|password|passwd|token|admin_token|launch|state|secret"
)
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # JWS / JWE compact serialisations: base64url JSON header "eyJ..." then 2 or 4 more parts.
    (re.compile(r"eyJ[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*){1,4}"), "[JWT]"),
    # Authorization / Proxy-Authorization header values, whatever the scheme.
    # Authorization header values: a quoted value up to its closing quote (dict and ASGI-tuple
    # reprs: "', b'..."), an unquoted one to the end of the line (Digest carries quoted params).
    (
        re.compile(r"(?i)((?:proxy-)?authorization['\"]?\s*[:=,]\s*b?(['\"]))[^\r\n]*?(?=\2)"),
        r"\1" + REDACTED,
    ),
    (
        re.compile(r"(?i)((?:proxy-)?authorization['\"]?\s*[:=]\s*)(?!['\"\s]|b['\"])[^\r\n]+"),
        r"\1" + REDACTED,
    ),
    (re.compile(r"(?i)\b(bearer|basic|dpop)\s+[A-Za-z0-9\-._~+/=\[\]]+"), r"\1 " + REDACTED),
    # name=value in query strings and forms, "name": "value" in JSON.
    (
        # Preceded by a separator, a quote or a bracket (reprs of QueryParams and FormData),
        # followed by =, : or , (a ('name', 'value') pair).
        re.compile(
            rf"(?i)([?&;#\s,{{(\['\"](?:{_CREDENTIAL_NAMES})['\"]?\s*[=:,]\s*b?['\"]?)(?!\[REDACTED\])[^&\s'\",}})\]]+"
        ),
        r"\1" + REDACTED,
    ),
    (re.compile(rf"(?i)^((?:{_CREDENTIAL_NAMES})=)(?!\[REDACTED\])[^&\s]+"), r"\1" + REDACTED),
)


def redact(text: str) -> str:
    """Replace credentials in `text`. Idempotent: redacting twice changes nothing more."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, bytes):
        return redact(value.decode("utf-8", "replace"))
    if isinstance(value, int | float | bool) or value is None:
        return value
    return redact(str(value))


# Loggers whose formatter needs the original args (uvicorn's AccessFormatter unpacks a 5-tuple).
_KEEP_ARGS_LOGGERS = frozenset({"uvicorn.access"})

_installed = False


def install_redaction() -> None:
    """Wrap the LogRecord factory once per process so every record is redacted at birth."""
    global _installed
    previous: Callable[..., logging.LogRecord] = logging.getLogRecordFactory()
    if _installed or getattr(previous, "_mockehr_redacting", False):
        return  # never wrap our own factory: records would be redacted twice

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if record.name in _KEEP_ARGS_LOGGERS and isinstance(record.args, tuple):
            # Their formatters unpack record.args: redact each argument, keep the format string.
            record.args = tuple(_redact_value(a) for a in record.args)
        else:
            # Redact the *formatted* message: a credential split between the format string
            # ("token=%s") and its argument, or a dict argument, is then seen whole.
            if isinstance(record.args, tuple):
                record.args = tuple(
                    a.decode("utf-8", "replace") if isinstance(a, bytes | bytearray) else a for a in record.args
                )
            try:
                message = record.getMessage()
            except (TypeError, ValueError, KeyError):
                message = f"{record.msg} {record.args!r}"
            record.msg, record.args = redact(message), ()
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return record

    factory._mockehr_redacting = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
    _installed = True


def configure_logging(level: str, service: str) -> None:
    """Plain, single-line logs tagged with the service name; redaction always on."""
    install_redaction()
    root = logging.getLogger()
    if not any(getattr(h, "_mockehr", False) for h in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s"))
        handler._mockehr = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level.upper())
