"""warmstart.distill."""
