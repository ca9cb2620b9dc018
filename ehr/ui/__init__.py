"""The EHR's web UI: sign-in through the authorization server, patient list and chart, CDS cards,
SMART launches, the exchange inspector and the admin pages (server-rendered, a little JavaScript)."""
