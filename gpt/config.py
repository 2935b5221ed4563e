"""Typed configurations: the model's shape (saved in every checkpoint) and the training run's."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields


class ConfigError(ValueError):
    """An option value or a saved config that does not make sense."""


def _from_dict(cls, d: dict):
    known = {f.name for f in fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} fields: {', '.join(sorted(unknown))}")
    return cls(**d)


@dataclass
class ModelConfig:
    kind: str = "gpt"  # "gpt" or "bigram"
    vocab_size: int = 0
    block_size: int = 256  # context length in tokens
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.2
    pos: str = "rope"  # "rope" (rotary, no parameters) or "learned" (absolute embeddings)
    bias: bool = False
    tie_weights: bool = True
    rope_base: float = 10000.0
    activation: str = "gelu"  # the MLP's: "gelu" (exact) or "gelu_tanh" (the tanh approximation)

    def validate(self) -> None:
        if self.kind not in ("gpt", "bigram"):
            raise ConfigError(f"model kind must be 'gpt' or 'bigram', got {self.kind!r}")
        if self.pos not in ("rope", "learned"):
            raise ConfigError(f"--pos must be 'rope' or 'learned', got {self.pos!r}")
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.kind == "gpt" and self.n_embd % self.n_head:
            raise ConfigError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        if self.kind == "gpt" and self.pos == "rope" and (self.n_embd // self.n_head) % 2:
            raise ConfigError(f"rotary embeddings need an even head size, got {self.n_embd // self.n_head}")
        if self.activation not in ("gelu", "gelu_tanh"):
            raise ConfigError(f"activation must be 'gelu' or 'gelu_tanh', got {self.activation!r}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        # configs saved before the activation was recorded were trained with the tanh form
        return _from_dict(cls, {"activation": "gelu_tanh", **d})
