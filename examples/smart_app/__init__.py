"""A small SMART app (EHR launch): shows the patient and the appContext it was launched with."""
