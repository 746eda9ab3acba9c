"""warmstart.retrieval."""
