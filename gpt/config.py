"""Typed configurations: the model's shape (saved in every checkpoint) and the training run's.

The model options a user sets (`--n-layer`, `--pos`, ...) are the `TrainConfig` fields
marked `model=True`; their defaults are the `ModelConfig` defaults, so each default is
written once, and `TrainConfig.model_config()` turns them into the model's shape.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from plumbing.errors import UserError

DEFAULT_PATIENCE = 5
ACTIVATIONS = ("gelu", "gelu_tanh", "relu2")
OPTIMIZERS = ("adamw", "muon")


class ConfigError(UserError, ValueError):
    """An option value or a saved config that does not make sense."""


def from_dict(cls, d: dict):
    """A config dataclass from a dict; unknown keys are refused, not silently dropped."""
    unknown = set(d) - {f.name for f in fields(cls)}
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
    activation: str = "gelu"  # the MLP's: "gelu" (exact), "gelu_tanh" (the tanh approximation) or "relu2" (relu(x)^2)
    qk_norm: bool = False  # RMS-normalise queries and keys per head before rotary embeddings and attention
    logit_softcap: float = 0.0  # logits = C * tanh(logits / C); 0: off
    # the shapes gpt-prune leaves when it removes attention heads and MLP channels (each layer
    # keeps the same number, so every layer has one shape); 0: the usual shapes
    head_dim: int = 0  # channels per head; 0: n_embd / n_head
    mlp_width: int = 0  # the MLP's inner width; 0: 4 x n_embd

    def validate(self) -> None:
        if self.kind not in ("gpt", "bigram"):
            raise ConfigError(f"model kind must be 'gpt' or 'bigram', got {self.kind!r}")
        if self.pos not in ("rope", "learned"):
            raise ConfigError(f"--pos must be 'rope' or 'learned', got {self.pos!r}")
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.head_dim < 0 or self.mlp_width < 0:
            raise ConfigError(f"head_dim and mlp_width must be positive (or 0 for the usual shapes), "
                              f"got {self.head_dim} and {self.mlp_width}")
        if self.kind == "gpt" and not self.head_dim and self.n_embd % self.n_head:
            raise ConfigError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        if self.kind == "gpt" and self.pos == "rope" and self.head_size % 2:
            raise ConfigError(f"rotary embeddings need an even head size, got {self.head_size}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"--activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        if not 0 <= self.logit_softcap < math.inf:  # also refuses NaN
            raise ConfigError(f"--logit-softcap must be positive (or 0 for none), got {self.logit_softcap}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_size(self) -> int:
        return self.head_dim or self.n_embd // self.n_head

    @property
    def attn_width(self) -> int:
        """Channels of all heads together: n_embd, unless gpt-prune removed heads."""
        return self.n_head * self.head_size

    @property
    def mlp_hidden(self) -> int:
        return self.mlp_width or 4 * self.n_embd

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        # configs saved before the activation was recorded were trained with the tanh form
        return from_dict(cls, {"activation": "gelu_tanh", **d})


def model_option(name: str):
    """A TrainConfig field that sets the model's shape, with ModelConfig's default."""
    return field(default=getattr(ModelConfig, name), metadata={"model": True})


FSDP_FP16 = ("fp16's gradient scaler would look for overflows in this process's part of the gradients only "
             "(use --dtype bf16 or fp32)")

# a run's budget: it ends at whichever comes first, and its learning rate decays over whichever
# is further along. Given as options, the two replace a preset's or a checkpoint's as a whole.
BUDGET_FIELDS = ("max_iters", "max_time")


def layered(values: dict, overrides: dict) -> dict:
    """`values` (a preset's, or a resumed run's) with the options given laid on top (None:
    not given). A budget given replaces the old one as a whole: --max-iters 60 on a preset
    with a time budget would otherwise keep its clock, and with it a learning rate that
    follows the clock. A learning rate given without --min-lr ends at a tenth of itself, not
    at the preset's floor."""
    values = dict(values)
    if any(overrides.get(k) is not None for k in BUDGET_FIELDS):
        values.update(dict.fromkeys(BUDGET_FIELDS))
    if overrides.get("lr") is not None and overrides.get("min_lr") is None:
        values["min_lr"] = None  # the floor follows the rate given: lr / 10, as --min-lr's default says
    values.update({k: v for k, v in overrides.items() if v is not None})
    return values


@dataclass
class TrainConfig:
    data: str = "data"
    out: str | None = None  # the run folder; default checkpoints/<model>-<date>-<time>-<pid>
    preset: str | None = None
    # model (the ModelConfig fields a user sets; `model` is the kind)
    model: str = field(default=ModelConfig.kind, metadata={"model": True})
    n_layer: int = model_option("n_layer")
    n_head: int = model_option("n_head")
    n_embd: int = model_option("n_embd")
    block_size: int = model_option("block_size")
    dropout: float = model_option("dropout")
    pos: str = model_option("pos")
    bias: bool = model_option("bias")
    activation: str = model_option("activation")
    qk_norm: bool = model_option("qk_norm")
    tie_weights: bool = model_option("tie_weights")
    logit_softcap: float = model_option("logit_softcap")
    head_dim: int = model_option("head_dim")
    mlp_width: int = model_option("mlp_width")
    # optimisation
    batch_size: int = 64
    grad_accum: int = 1
    max_iters: int | None = 5000
    max_time: float | None = None  # seconds of wall-clock for the whole run
    lr: float = 1e-3
    min_lr: float | None = None  # default lr / 10
    warmup_iters: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    optimizer: str = "adamw"  # "muon": Muon for the blocks' weight matrices, AdamW for the rest
    muon_lr: float = 0.02  # Muon's peak rate; the schedule scales it as it scales --lr
    muon_weight_decay: float = 0.0
    ema: float = 0.0  # decay of an exponential moving average of the weights, which is then the run's model; 0: none
    # evaluation and logging
    eval_interval: int = 250
    eval_windows: int = 256
    patience: int | None = None  # evaluations without a new best before stopping (0: never); None: 5
    # when patience runs out: decay the lr to min_lr over this fraction of the steps so far, then stop
    cooldown: float = 0.0
    log_interval: int = 10
    trackers: str = ""  # --log: experiment trackers beside metrics.jsonl, comma-separated (tensorboard, wandb)
    # fine-tuning: start from another run's model (in full, or with low-rank adapters)
    init_from: str | None = None  # a run folder or checkpoint
    lora: int = 0  # adapter rank; 0: fine-tune every weight
    lora_alpha: float | None = None  # the adapters' scale is alpha / rank; default 2 x rank
    lora_targets: str = "qkv,proj,fc"
    # distillation: learn from a trained model's distribution as well as from the data
    teacher: str | None = None  # a run, checkpoint or model folder with the data's vocabulary
    distill_weight: float = 0.5  # the soft (teacher) term's share of the loss, in (0, 1]
    distill_temperature: float = 2.0  # both distributions are softened by it
    # machine
    device: str = "auto"
    dtype: str = "auto"
    compile: bool = False
    # recompute each block's activations in the backward pass instead of keeping them: the
    # activations of one block at a time rather than of all, for one more forward pass
    activation_checkpointing: bool = False
    # shard the weights, gradients and optimizer state across the processes torchrun starts
    fsdp: bool = False
    seed: int = 1337
    deterministic: bool = False  # torch's deterministic kernels; needs a step budget alone
    progress: bool = True

    def __post_init__(self) -> None:
        if self.max_time == 0:  # --max-time 0: no wall-clock budget (drops a preset's)
            self.max_time = None

    def validate(self) -> None:
        positive = ["batch_size", "grad_accum", "eval_interval", "eval_windows", "log_interval", "block_size"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.max_iters is None and self.max_time is None:
            raise ConfigError("give --max-iters or --max-time (or both)")
        if self.deterministic and self.max_time is not None:
            raise ConfigError("--deterministic needs a step budget alone: give --max-iters N, which replaces a "
                              "preset's time budget (under a time budget the learning rate and the last step follow "
                              "the clock)")
        if self.max_iters is not None and self.max_iters < 1:
            raise ConfigError(f"--max-iters must be at least 1, got {self.max_iters}")
        if self.max_time is not None and not 0 < self.max_time < math.inf:
            raise ConfigError(f"--max-time must be positive (or 0 for no time budget), got {self.max_time}")
        # finite, in range, not NaN: each would otherwise be a traceback, or a NaN loss steps later
        if not 0 < self.lr < math.inf or (self.min_lr is not None and not 0 <= self.min_lr < math.inf):
            raise ConfigError("--lr must be positive and --min-lr not negative (both finite)")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("weight_decay", "grad_clip"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ConfigError(f"--{name.replace('_', '-')} must be 0 or more (and finite), "
                                  f"got {getattr(self, name)}")
        if not 0 <= self.seed < 2**32:  # what every generator seeded from it takes
            raise ConfigError(f"--seed must be in [0, 2^32), got {self.seed}")
        if self.lora_alpha is not None and not 0 < self.lora_alpha < math.inf:
            raise ConfigError(f"--lora-alpha must be positive, got {self.lora_alpha}")
        if self.warmup_iters < 0:
            raise ConfigError(f"--warmup-iters must not be negative, got {self.warmup_iters}")
        if self.lora and not self.init_from:
            raise ConfigError("--lora adapts a trained model: give it one with --init-from RUN")
        if self.patience is not None and self.patience < 0:
            raise ConfigError(f"--patience must be 0 (never stop early) or more, got {self.patience}")
        if not 0 <= self.cooldown <= 1:
            raise ConfigError(f"--cooldown must be a fraction of the steps so far, from 0 (off) to 1, "
                              f"got {self.cooldown}")
        if self.cooldown and self.patience == 0:
            raise ConfigError("--cooldown starts when --patience runs out, which --patience 0 never does")
        if not 0 <= self.ema < 1:  # also refuses NaN
            raise ConfigError(f"--ema must be a decay from 0 (no average) up to, not including, 1, got {self.ema}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.optimizer == "muon":
            if self.model != "gpt":
                raise ConfigError("--optimizer muon trains a transformer's weight matrices; "
                                  "the bigram model has none (use adamw)")
            if self.lora:
                raise ConfigError("--optimizer muon trains whole weight matrices, not low-rank adapters; "
                                  "use adamw with --lora")
            if not 0 < self.muon_lr < math.inf or not 0 <= self.muon_weight_decay < math.inf:
                raise ConfigError("--muon-lr must be positive and --muon-weight-decay not negative (both finite)")
        if not 0 < self.distill_weight <= 1:  # also refuses NaN
            raise ConfigError(f"--distill-weight must be in (0, 1], got {self.distill_weight}")
        if not 1e-3 <= self.distill_temperature <= 1e3:  # past these, logits / T or T^2 leave float32's range
            raise ConfigError(f"--distill-temperature must be between 0.001 and 1000, got {self.distill_temperature}")
        if self.activation_checkpointing and self.model != "gpt":
            raise ConfigError("--activation-checkpointing recomputes a transformer's blocks; "
                              "the bigram model has none (leave it out)")
        if self.fsdp:
            self.check_fsdp()
        if self.lora < 0:
            raise ConfigError(lora_rank_refused(self.lora))
        self.model_config(vocab_size=1).validate()  # a bad model option stops the run before it claims a folder

    def check_fsdp(self) -> None:
        """What --fsdp cannot be combined with, each refused in one line saying why."""
        clashes = [
            (self.model != "gpt", "the bigram model is one table, which sharding would not shrink (use --model gpt)"),
            (self.optimizer == "muon", "--optimizer muon orthogonalises whole weight matrices, which FSDP splits "
                                       "across processes (use --optimizer adamw)"),
            (bool(self.lora), "--lora trains adapters on a frozen base that each process holds whole "
                              "(fine-tune with --init-from alone)"),
            (self.dtype == "fp16", FSDP_FP16),
        ]
        for refused, why in clashes:
            if refused:
                raise ConfigError(f"--fsdp: {why}")

    def model_config(self, vocab_size: int) -> ModelConfig:
        shape = {name: getattr(self, name) for name in MODEL_FIELDS if name != "model"}
        return ModelConfig(kind=self.model, vocab_size=vocab_size, **shape)

    @property
    def early_stop_after(self) -> int:
        """Evaluations without improvement that end the run (0: never). On by default under
        every budget: a small corpus overfits within a time budget as within a step budget,
        and best.pt keeps the best model either way."""
        return self.patience if self.patience is not None else DEFAULT_PATIENCE

    @property
    def lora_scale_alpha(self) -> float:
        return self.lora_alpha if self.lora_alpha is not None else 2.0 * self.lora

    @property
    def final_lr(self) -> float:
        return self.min_lr if self.min_lr is not None else self.lr / 10

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return from_dict(cls, d)


MODEL_FIELDS = tuple(f.name for f in fields(TrainConfig) if f.metadata.get("model"))


def lora_rank_refused(rank: int) -> str:
    """What a rank below 1 is told: 0 would be no adapter at all, a full fine-tune not asked for."""
    return f"--lora must be a rank of at least 1, got {rank} (leave --lora out to train every weight)"
