"""OAuth 2 / SMART App Launch authorization server of the mockehr stack."""
