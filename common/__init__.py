"""Shared core of the mockehr stack: settings, keys and JOSE, database, TLS, HTTP, logging.

`common` imports no service (enforced by import-linter); every service builds on it.
"""
