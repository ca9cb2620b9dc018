"""`python -m examples.cds_service`: run the example CDS Service with its MOCKEHR_CDS_* settings."""

from examples.cds_service.serve import main

main()
