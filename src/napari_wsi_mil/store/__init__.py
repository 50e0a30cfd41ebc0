"""The project store: cohort table, per-slide results, annotations and interchange formats."""
