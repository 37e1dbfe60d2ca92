"""Batching policies (pure) and the dynamic batcher around them."""
