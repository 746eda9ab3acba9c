"""warmstart.coldstart."""
