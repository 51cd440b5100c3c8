"""Maps from free parameters (logits) to the probability simplex."""
