"""Developer tools run from a checkout (`python -m tools.docgen`); never shipped in the wheel."""
