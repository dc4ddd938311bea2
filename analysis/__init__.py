"""Statistics, figures and the report, measured the same way on experiment, truth and model."""
