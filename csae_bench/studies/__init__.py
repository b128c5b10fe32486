"""Studies built on the pipeline: ablation, csae_sweep."""
