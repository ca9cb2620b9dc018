"""A reference CDS Service that verifies the EHR's JWT the way CDS Hooks 2.0 asks."""
