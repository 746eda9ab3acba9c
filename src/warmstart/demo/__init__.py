"""The web demo: quick-preset training of the demo models (cached), the demo's own routes on the
serving app, and the headless end-to-end check behind ``warmstart demo --check``."""
