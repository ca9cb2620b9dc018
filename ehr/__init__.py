"""The EHR: CDS Hooks client, service registry, demo UI and SMART launcher."""
