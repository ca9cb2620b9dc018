"""FHIR R4 resource server of the mockehr stack."""
