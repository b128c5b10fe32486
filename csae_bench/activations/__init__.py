"""Residual-stream activations: the harvest (harvest.py) and the gradient pool (gradient_pool.py)."""
