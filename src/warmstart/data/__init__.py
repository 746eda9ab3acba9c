"""warmstart.data."""
