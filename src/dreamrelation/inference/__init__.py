"""Generation: sampler setup, GenerationConfig, outputs with sidecars (generate), CLI bodies (run)."""
