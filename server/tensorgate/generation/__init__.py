"""Language-model generation: paged KV cache, iteration-level scheduler, sampling, models."""
