"""Sampling: a checkpoint -> a Generator -> tokens, one step at a time -> text.

    from gpt.sample import Generator, SamplingOptions
    gen = Generator.load("checkpoints/run1")
    print(gen.generate("ROMEO:", SamplingOptions(max_new_tokens=200, seed=1))[0])
"""
from .generate import Generator
from .sampling import GenerationError, SamplingOptions

__all__ = ["GenerationError", "Generator", "SamplingOptions"]
