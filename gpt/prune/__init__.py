"""gpt-prune: a smaller dense model cut from a trained one, whole layers, attention heads and
MLP channels removed where they matter least (`importance`), the rest copied as it was
(`shrink`), written as a new run folder that every command loads (`prune`)."""
