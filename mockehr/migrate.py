"""Run the alembic migrations programmatically (`mockehr db upgrade`, `mockehr init`, tests).

The migrations are the repository's top-level alembic/ folder. A wheel ships them as the package
`mockehr.migrations` (pyproject.toml maps the folder to that name), so they are found through the
import system wherever mockehr is installed, never next to site-packages, where `alembic/` is the
Alembic library itself. A checkout that is not installed falls back to the folder.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory

from alembic import command

CHECKOUT_MIGRATIONS = Path(__file__).resolve().parent.parent / "alembic"


def script_location() -> Path:
    """The folder holding env.py and versions/."""
    try:
        # `mockehr.migrations` has no __init__.py (an __init__.py in the checkout's alembic/ would
        # turn it into a package shadowing the library), so ask for a file inside it.
        env = resources.files("mockehr.migrations").joinpath("env.py")
    except ModuleNotFoundError:
        return CHECKOUT_MIGRATIONS
    return Path(str(env)).parent


def alembic_config(database_url: str) -> Config:
    # Built in memory: alembic.ini is only for running `alembic` by hand in a checkout.
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location()))
    cfg.set_main_option("path_separator", "os")
    cfg.attributes["database_url"] = database_url
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    """Upgrade the schema; must not be called from inside a running event loop (env.py runs one)."""
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite:///unused.db")).get_current_head()
