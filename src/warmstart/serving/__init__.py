"""warmstart.serving."""
