"""The optimizers: AdamW, or Muon for the matrices beside AdamW for the rest (the schedule is schedule.py)."""
from __future__ import annotations

import torch

from ..config import ConfigError, TrainConfig

# the settings a resumed run takes from the options given now, not from the checkpoint
# (--weight-decay, --beta1, --beta2, --muon-weight-decay on resume, and this machine's fused choice)
RESUME_SETTINGS = ("fused", "weight_decay", "betas")


def adamw(params: list, lr: float, weight_decay: float, betas: tuple[float, float],
          device: torch.device) -> torch.optim.AdamW:
    # decay matrices (embeddings, projections); not norms' gains or biases, whose scale
    # the decay would only pull toward zero
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # the fused kernel updates each parameter in one pass instead of a dozen elementwise
    # operations: on a CPU it saves about 5% of a small model's training step
    extra = {"fused": True} if device.type in ("cuda", "cpu") else {}
    return torch.optim.AdamW(groups, lr=lr, betas=betas, **extra)


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
                   device: torch.device) -> torch.optim.AdamW:
    """AdamW for every trainable parameter."""
    return adamw([p for p in model.parameters() if p.requires_grad], lr, weight_decay, betas, device)


def adamw_state_bytes(params) -> int:
    """What training with AdamW keeps beside each trained weight: its gradient and the two
    moments, each the weight's size (what LoRA saves on the weights it freezes)."""
    return sum(3 * p.numel() * p.element_size() for p in params)


def check_optimizer(name: str) -> None:
    """Refuse, before anything is written, an optimizer this torch does not have."""
    if name == "muon" and not hasattr(torch.optim, "Muon"):
        raise ConfigError(f"--optimizer muon needs torch.optim.Muon (torch 2.9 or later); "
                          f"this is torch {torch.__version__} (use --optimizer adamw)")


def hidden_matrices(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """What Muon trains: the transformer blocks' 2-D weights (attention and MLP projections).
    Embeddings and the head are lookups and read-outs rather than maps between hidden
    states, and norms and biases are vectors: Muon's orthogonalised update fits none of them."""
    return [p for p in model.blocks.parameters() if p.dim() == 2 and p.requires_grad]


class Optimizers:
    """One run's optimizers, stepped together: AdamW alone, or Muon for the hidden matrices
    and AdamW for everything else. The schedule gives AdamW's rate; Muon follows the same
    curve scaled to its own peak (--muon-lr), so warmup and decay drive both."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, device: torch.device, dtype: torch.dtype):
        """`dtype`: the run's compute precision (Muon's iteration follows it on CPUs)."""
        params = [p for p in model.parameters() if p.requires_grad]
        betas = (cfg.beta1, cfg.beta2)
        self.muon = None
        if cfg.optimizer == "muon":
            check_optimizer("muon")
            from .muon import Muon, newton_schulz_dtype  # it subclasses torch's, which older torch lacks

            hidden = hidden_matrices(model)
            taken = {id(p) for p in hidden}
            params = [p for p in params if id(p) not in taken]
            # torch's defaults otherwise (momentum 0.95, Nesterov, 5 Newton-Schulz steps);
            # "original" scales each matrix's rate by sqrt(max(1, rows / columns)), as the
            # speed-run records that use lr 0.02 do. Muon's decoupled decay is multiplied by its
            # rate, several times AdamW's, so it has its own option (default none, as in those records)
            self.muon = Muon(hidden, newton_schulz_dtype(device, dtype), lr=cfg.muon_lr,
                             weight_decay=cfg.muon_weight_decay, adjust_lr_fn="original")
        self.adamw = adamw(params, cfg.lr, cfg.weight_decay, betas, device)
        self.muon_scale = cfg.muon_lr / cfg.lr

    @property
    def all(self) -> list[torch.optim.Optimizer]:
        return [self.adamw] + ([self.muon] if self.muon is not None else [])

    def set_lr(self, lr: float) -> None:
        for group in self.adamw.param_groups:
            group["lr"] = lr
        for group in self.muon.param_groups if self.muon is not None else []:
            group["lr"] = lr * self.muon_scale

    def step(self, scaler: torch.amp.GradScaler, clip: float, params) -> None:
        """Clip the gradients (0: no clipping), step every optimizer, clear the gradients."""
        if clip > 0:
            for opt in self.all:
                scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, clip)
        for opt in self.all:
            scaler.step(opt)
        scaler.update()
        for opt in self.all:
            opt.zero_grad(set_to_none=True)

    def zero_grad(self) -> None:
        for opt in self.all:
            opt.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        """The checkpoint's entries: AdamW's under "optimizer" (where it always was), Muon's
        beside it."""
        out = {"optimizer": self.adamw.state_dict()}
        if self.muon is not None:
            out["muon_optimizer"] = self.muon.state_dict()
        return out

    def load_state_dict(self, state: dict) -> None:
        pairs = [(self.adamw, state["optimizer"])]
        if self.muon is not None:
            pairs.append((self.muon, state["muon_optimizer"]))
        for opt, saved in pairs:
            own = [{k: g[k] for k in RESUME_SETTINGS if k in g} for g in opt.param_groups]
            opt.load_state_dict(saved)
            for g, settings in zip(opt.param_groups, own):
                g.update(settings)
