"""The mockehr command line."""
