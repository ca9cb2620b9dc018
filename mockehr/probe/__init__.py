"""`mockehr probe`: a security conformance probe for CDS Services.

The probe acts as a CDS Client (an EHR) with its own signing key and JWKS URL, calls the service's
discovery endpoint, every service it lists and each service's feedback endpoint with a correctly
signed request (the positive control), then with a battery of invalid ones, and reports check by
check whether the service failed closed: a bare 401 (or 403), no card, nothing leaked.

Modules: `forge` (tokens, good and bad), `jwks_server` (the probe's JWKS URLs on loopback),
`checks` (the catalogue), `cds_requests` (the request bodies), `judge` (verdicts), `runner`,
`report` (terminal table, JSON, HTML).
"""
