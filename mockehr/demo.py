"""Seeding the demo data set and its logins, and reading back what `mockehr up` prints."""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from authserver.models import UserRow
from authserver.passwords import hash_password
from fhirserver.transaction import process_transaction
from mockehr.seed import generate

USERS_FILE = "demo-users.json"


@dataclass(frozen=True)
class DemoUser:
    username: str
    password: str
    fhir_user: str
    display: str
    patients: tuple[str, ...]


def _load_passwords(data_dir: Path) -> dict[str, str]:
    path = data_dir / USERS_FILE
    if not path.exists():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return {str(k): str(v["password"]) for k, v in data.items()}


def _save_users(data_dir: Path, users: list[DemoUser]) -> None:
    path = data_dir / USERS_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(
            {
                u.username: {
                    "password": u.password,
                    "fhirUser": u.fhir_user,
                    "display": u.display,
                    "patients": list(u.patients),
                }
                for u in users
            },
            fh,
            indent=2,
        )


async def is_seeded(sessions: async_sessionmaker[AsyncSession]) -> bool:
    """True once the demo logins exist in this database (the data set is loaded with them)."""
    async with sessions() as session:
        result = await session.execute(select(UserRow.username).limit(1))
        return result.first() is not None


async def seed(
    sessions: async_sessionmaker[AsyncSession], data_dir: Path, *, patients: int = 30, seed_value: int = 1
) -> list[DemoUser]:
    """Load the generated data set (idempotent: PUT with stable ids) and create its logins."""
    result = generate(patients, seed_value)
    now = dt.datetime.now(dt.UTC)
    async with sessions() as session, session.begin():
        await process_transaction(session, result.bundle, now=now, max_entries=len(result.bundle["entry"]) + 1)
    passwords = _load_passwords(data_dir)
    users = [
        DemoUser(
            username=p.username,
            password=passwords.get(p.username) or secrets.token_urlsafe(9),
            fhir_user=f"Practitioner/{p.id}",
            display=p.display,
            patients=p.patient_ids,
        )
        for p in result.practitioners
    ]
    await _upsert_users(sessions, users)
    _save_users(data_dir, users)
    return users


async def _upsert_users(sessions: async_sessionmaker[AsyncSession], users: list[DemoUser]) -> None:
    async with sessions() as session, session.begin():
        for user in users:
            row = await session.get(UserRow, user.username)
            if row is None:
                session.add(
                    UserRow(
                        username=user.username,
                        password_hash=hash_password(user.password),
                        fhir_user=user.fhir_user,
                        display=user.display,
                        active=True,
                        created_at=int(time.time()),
                    )
                )
            else:
                row.fhir_user, row.display = user.fhir_user, user.display


def demo_users(data_dir: Path) -> list[DemoUser]:
    """The demo logins recorded in the data directory (what `mockehr up` prints)."""
    path = data_dir / USERS_FILE
    if not path.exists():
        return []
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return [
        DemoUser(k, v["password"], v["fhirUser"], v.get("display", k), tuple(v.get("patients", [])))
        for k, v in data.items()
    ]
