"""Model cards of the s4nd_* weights (package data, read with importlib.resources)."""
