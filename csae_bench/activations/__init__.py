"""Residual-stream activations: the harvest (harvest.py), the shard store training streams from
(source.py) and the gradient pool (gradient_pool.py)."""
