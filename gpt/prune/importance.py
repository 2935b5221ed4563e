"""How much each layer, attention head and MLP channel of a GPT matters, measured on a few
validation windows.

- A **layer** is scored by what removing it costs: the rise in validation loss with its
  block skipped, measured exactly (one forward pass per block and batch). There are few
  layers, so the exact measure is cheap, and a residual network often has a block whose
  removal costs little.
- A **head** or an **MLP channel** is scored by the first-order Taylor estimate of that cost
  (Molchanov et al., 2017; for heads, Michel et al., 2019): removing it zeroes the columns
  of the output projection that read it, which changes the loss by about the sum, over
  those columns, of weight x gradient. The sum is taken per batch and its absolute value
  averaged over the batches, so a group whose effect is large in either direction counts
  as important. One backward pass per batch scores every head and channel at once;
  measuring each exactly would take a forward pass for each of thousands of channels.
"""
from __future__ import annotations

import torch

from ..model import GPT

Batch = tuple[torch.Tensor, torch.Tensor]


@torch.no_grad()
def mean_loss(model: GPT, batches: list[Batch]) -> float:
    return sum(float(model(x, y)[1]) for x, y in batches) / len(batches)


@torch.no_grad()
def layer_costs(model: GPT, batches: list[Batch]) -> list[float]:
    """The rise in mean loss with each block skipped, block by block."""
    blocks = model.blocks
    full = mean_loss(model, batches)
    costs = []
    try:
        for i in range(len(blocks)):
            model.blocks = torch.nn.ModuleList(b for j, b in enumerate(blocks) if j != i)
            costs.append(mean_loss(model, batches) - full)
    finally:
        model.blocks = blocks
    return costs


def group_scores(model: GPT, batches: list[Batch]) -> tuple[torch.Tensor, torch.Tensor]:
    """(layers, heads) and (layers, MLP channels): each head's and channel's Taylor score."""
    cfg = model.config
    heads = torch.zeros(len(model.blocks), cfg.n_head)
    channels = torch.zeros(len(model.blocks), cfg.mlp_hidden)
    weights = [p for block in model.blocks for p in (block.attn.proj.weight, block.mlp.proj.weight)]
    for x, y in batches:
        loss = model(x, y)[1]
        grads = torch.autograd.grad(loss, weights)
        for i in range(len(model.blocks)):
            attn, mlp = weights[2 * i], weights[2 * i + 1]
            # weight x gradient summed over each input column: (in,); a head reads head_size of them
            per_column = (attn * grads[2 * i]).sum(0).detach().float().cpu()
            heads[i] += per_column.view(cfg.n_head, cfg.head_size).sum(-1).abs()
            channels[i] += (mlp * grads[2 * i + 1]).sum(0).detach().float().cpu().abs()
    return heads / len(batches), channels / len(batches)
