"""What runs a model version: one interface, and the runners that implement it."""
