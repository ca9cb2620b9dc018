"""Authorization server tables."""

from __future__ import annotations

from sqlalchemy import Boolean, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from common.db import Base


class UserRow(Base):
    """A person who logs in: a practitioner or a patient, linked to a FHIR resource (fhirUser)."""

    __tablename__ = "users"

    username: Mapped[str] = mapped_column(String(128), primary_key=True)
    # argon2id hash (argon2-cffi); never the password itself.
    password_hash: Mapped[str] = mapped_column(String(255))
    fhir_user: Mapped[str] = mapped_column(String(128))  # e.g. "Practitioner/123"
    display: Mapped[str] = mapped_column(String(255))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[int] = mapped_column(Integer)


class ClientRow(Base):
    """A registered OAuth client: the EHR, a CDS Service, a SMART app or a backend client."""

    __tablename__ = "oauth_clients"

    client_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # ehr | cds-service | smart-app | backend
    name: Mapped[str] = mapped_column(String(255))
    # private_key_jwt | client_secret_basic | none (public SMART apps)
    auth_method: Mapped[str] = mapped_column(String(32))
    secret_hash: Mapped[str | None] = mapped_column(String(255), nullable=True)
    jwks: Mapped[str | None] = mapped_column(Text, nullable=True)  # inline JWK Set (public keys)
    jwks_uri: Mapped[str | None] = mapped_column(String(512), nullable=True)
    redirect_uris: Mapped[str] = mapped_column(Text, default="[]")  # JSON list, exact match
    launch_url: Mapped[str | None] = mapped_column(String(512), nullable=True)
    scope: Mapped[str] = mapped_column(Text, default="")  # approved / pre-authorised scopes
    # May obtain tokens on behalf of registered CDS Services (token exchange, user assertions).
    first_party: Mapped[bool] = mapped_column(Boolean, default=False)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[int] = mapped_column(Integer)


class IssuedTokenRow(Base):
    """Every access or refresh token issued (introspection, revocation, code-replay cascades)."""

    __tablename__ = "oauth_tokens"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # access | refresh
    client_id: Mapped[str] = mapped_column(String(128))
    # The client that asked for it when that differs (the EHR exchanging for a CDS Service).
    actor_client_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    sub: Mapped[str] = mapped_column(String(255))
    scope: Mapped[str] = mapped_column(Text)
    patient: Mapped[str | None] = mapped_column(String(64), nullable=True)
    fhir_user: Mapped[str | None] = mapped_column(String(255), nullable=True)
    grant: Mapped[str] = mapped_column(String(255))  # the grant (or code/refresh family) it came from
    iat: Mapped[int] = mapped_column(Integer)
    exp: Mapped[int] = mapped_column(Integer)
    revoked_at: Mapped[int | None] = mapped_column(Integer, nullable=True)

    __table_args__ = (
        Index("ix_oauth_tokens_grant", "grant"),
        Index("ix_oauth_tokens_exp", "exp"),
    )


class RevocationRow(Base):
    """The revocation feed: an append-only, ordered list the FHIR server replicas poll."""

    __tablename__ = "oauth_revocations"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    jti: Mapped[str] = mapped_column(String(64))
    exp: Mapped[int] = mapped_column(Integer)
    revoked_at: Mapped[int] = mapped_column(Integer)

    __table_args__ = (Index("ix_oauth_revocations_exp", "exp"),)


class UsedJtiRow(Base):
    """jti values of client assertions already used (RFC 7523 §3 item 7): across replicas and restarts."""

    __tablename__ = "oauth_used_jtis"

    key: Mapped[str] = mapped_column(String(300), primary_key=True)  # client_id + "|" + jti
    expires_at: Mapped[int] = mapped_column(Integer)

    __table_args__ = (Index("ix_oauth_used_jtis_expires_at", "expires_at"),)


# --- SMART App Launch 2.2 (migration 0004) ----------------------------------------------------


class LoginSessionRow(Base):
    """A login session at the authorization server. The cookie holds a random value; only its
    SHA-256 is stored, so a database reader cannot ride a session."""

    __tablename__ = "auth_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    username: Mapped[str] = mapped_column(String(128))
    auth_time: Mapped[int] = mapped_column(Integer)
    expires_at: Mapped[int] = mapped_column(Integer)

    __table_args__ = (Index("ix_auth_sessions_expires_at", "expires_at"),)


class LoginThrottleRow(Base):
    """Failed-login counters (fixed window) per username and per client IP, shared by replicas."""

    __tablename__ = "auth_login_throttle"

    key: Mapped[str] = mapped_column(String(80), primary_key=True)  # "u:"/"ip:" + sha256 hex
    window_start: Mapped[int] = mapped_column(Integer)
    failures: Mapped[int] = mapped_column(Integer)


class LaunchRow(Base):
    """An EHR launch context registered by the first-party EHR (POST /launch), single use."""

    __tablename__ = "smart_launches"

    launch_hash: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the value
    client_id: Mapped[str] = mapped_column(String(128))  # the SMART app it was registered for
    registered_by: Mapped[str] = mapped_column(String(128))  # the EHR client
    username: Mapped[str] = mapped_column(String(128))
    patient: Mapped[str] = mapped_column(String(64))
    encounter: Mapped[str | None] = mapped_column(String(64), nullable=True)
    fhir_context: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON array
    app_context: Mapped[str | None] = mapped_column(Text, nullable=True)
    need_patient_banner: Mapped[bool] = mapped_column(Boolean, default=False)
    launch_options: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON (revision 0009)
    created_at: Mapped[int] = mapped_column(Integer)
    expires_at: Mapped[int] = mapped_column(Integer)
    used_at: Mapped[int | None] = mapped_column(Integer, nullable=True)

    __table_args__ = (Index("ix_smart_launches_expires_at", "expires_at"),)


class AuthorizationCodeRow(Base):
    """An authorization code (RFC 6749 §4.1.2), stored as its SHA-256, bound to everything the
    token request must repeat or prove (client, redirect_uri, PKCE challenge)."""

    __tablename__ = "oauth_codes"

    code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    family: Mapped[str] = mapped_column(String(64))  # oauth_tokens.grant of what it issues
    client_id: Mapped[str] = mapped_column(String(128))
    redirect_uri: Mapped[str] = mapped_column(Text)
    code_challenge: Mapped[str] = mapped_column(String(128))
    username: Mapped[str] = mapped_column(String(128))
    scope: Mapped[str] = mapped_column(Text)
    patient: Mapped[str | None] = mapped_column(String(64), nullable=True)
    encounter: Mapped[str | None] = mapped_column(String(64), nullable=True)
    fhir_context: Mapped[str | None] = mapped_column(Text, nullable=True)
    app_context: Mapped[str | None] = mapped_column(Text, nullable=True)
    need_patient_banner: Mapped[bool] = mapped_column(Boolean, default=False)
    launch_options: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON (revision 0009)
    nonce: Mapped[str | None] = mapped_column(String(255), nullable=True)
    session_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    auth_time: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[int] = mapped_column(Integer)
    expires_at: Mapped[int] = mapped_column(Integer)
    used_at: Mapped[int | None] = mapped_column(Integer, nullable=True)

    __table_args__ = (Index("ix_oauth_codes_expires_at", "expires_at"),)


class RefreshTokenRow(Base):
    """A refresh token (opaque, stored as its SHA-256). One row per rotation; a family shares the
    grant it came from, the scope granted at authorization and the launch context."""

    __tablename__ = "oauth_refresh_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    family: Mapped[str] = mapped_column(String(64))
    client_id: Mapped[str] = mapped_column(String(128))
    username: Mapped[str] = mapped_column(String(128))
    scope: Mapped[str] = mapped_column(Text)  # the family's scope: a refresh may only narrow it
    access: Mapped[str] = mapped_column(String(16))  # offline | online
    session_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)  # online only
    patient: Mapped[str | None] = mapped_column(String(64), nullable=True)
    encounter: Mapped[str | None] = mapped_column(String(64), nullable=True)
    fhir_context: Mapped[str | None] = mapped_column(Text, nullable=True)
    app_context: Mapped[str | None] = mapped_column(Text, nullable=True)
    need_patient_banner: Mapped[bool] = mapped_column(Boolean, default=False)
    launch_options: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON (revision 0009)
    created_at: Mapped[int] = mapped_column(Integer)
    expires_at: Mapped[int] = mapped_column(Integer)
    used_at: Mapped[int | None] = mapped_column(Integer, nullable=True)  # rotated
    revoked_at: Mapped[int | None] = mapped_column(Integer, nullable=True)

    __table_args__ = (
        Index("ix_oauth_refresh_tokens_family", "family"),
        Index("ix_oauth_refresh_tokens_expires_at", "expires_at"),
    )
