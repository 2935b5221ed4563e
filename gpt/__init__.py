"""Character-level GPT: models, training loop, checkpoints and generation."""
