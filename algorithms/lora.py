"""LoRA (not an algorithm): low-rank adapters on the attention and MLP projections, for `--lora R`
(Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", arXiv 2106.09685).

Each linear map W (out x in) of the decoder layers (q, k, v, o, gate, up, down in LLaMA and Qwen) is frozen and
learns a low-rank change instead:

    W' = W + (α / R) · B · A,      A (R x in) random, B (out x R) zero

so W' = W at the start and the model computes exactly what it did. Only A and B train: R · (in + out) numbers per
projection instead of in · out, so the gradients and AdamW's state shrink by about that factor (algorithms/memory.py).
α = 32 whatever R, as "LoRA Without Regret" (Schulman et al., Thinking Machines, 2025) fixes it: with the 1/R
factor the learning rate that works hardly depends on R; it is about 10x full fine-tuning's, so pass --lr.
A is initialised as torch initialises a linear layer (Kaiming-uniform), as the LoRA paper's code does.

The reference policy is the same model with its adapters switched off (`adapters_off`): W itself, the warm-up,
so no second copy of the weights is loaded. What the run saves as model/ is merged (W' written as an ordinary
weight), so `AutoModelForCausalLM.from_pretrained` loads it as it is; checkpoints keep W and the adapters apart
(`plain_state_dict`, `adapter_state_dict`), so that --resume goes on training the same adapters.
"""
import contextlib
import math

import torch

ALPHA = 32


class LoRALinear(torch.nn.Module):
    """A frozen linear layer `base` plus the trained low-rank change: y = base(x) + (α/R) · (x Aᵀ) Bᵀ.
    x (..., in) -> y (..., out). The weight W' = W + (α/R)·B·A is never formed: two thin matmuls instead."""

    def __init__(self, base, rank, alpha=ALPHA):
        super().__init__()
        self.base = base.requires_grad_(False)
        weight = base.weight
        self.lora_A = torch.nn.Parameter(torch.empty(rank, base.in_features, dtype=weight.dtype, device=weight.device))
        self.lora_B = torch.nn.Parameter(torch.zeros(base.out_features, rank, dtype=weight.dtype, device=weight.device))
        torch.nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as torch.nn.Linear initialises its weight
        self.scale = alpha / rank
        self.enabled = True

    def forward(self, x):
        y = self.base(x)
        return y + (x @ self.lora_A.T @ self.lora_B.T) * self.scale if self.enabled else y

    def merged_weight(self):
        """W' = W + (α/R) · B · A, (out, in)."""
        return (self.base.weight + self.scale * self.lora_B @ self.lora_A).detach()


def add_adapters(model, rank):
    """Freeze every weight of `model` and wrap each linear layer of its decoder (not the LM head) in a LoRALinear of
    rank `rank`; returns the model. Only the adapters are left to train."""
    model.requires_grad_(False)
    trunk = model.base_model
    for name, module in list(trunk.named_modules()):
        if isinstance(module, torch.nn.Linear):
            trunk.set_submodule(name, LoRALinear(module, rank))
    return model


def adapters(model):
    """(name in model.state_dict(), LoRALinear) of every adapter in `model`."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear)]


@contextlib.contextmanager
def adapters_off(model):
    """Inside, `model` computes with its frozen weights W alone (the reference policy); nothing changes for a model
    without adapters."""
    layers = [m for _, m in adapters(model)]
    for m in layers:
        m.enabled = False
    try:
        yield model
    finally:
        for m in layers:
            m.enabled = True


def plain_state_dict(model, merge):
    """model.state_dict() under the names of the model without adapters, each adapted weight W' = W + (α/R)·B·A
    (merge: what from_pretrained loads, model/) or W (a checkpoint's model, to which its adapters are added)."""
    state = model.state_dict()
    for name, m in adapters(model):
        for key in ("base.weight", "base.bias", "lora_A", "lora_B"):
            state.pop(f"{name}.{key}", None)
        state[f"{name}.weight"] = m.merged_weight() if merge else m.base.weight
        if m.base.bias is not None:
            state[f"{name}.bias"] = m.base.bias
    return state


def adapter_state_dict(model):
    """The adapters alone, A and B of each (empty without adapters): what a checkpoint's trainer state keeps of them,
    its model folder holding the frozen weights."""
    return {k: v for k, v in model.state_dict().items() if k.endswith(("lora_A", "lora_B"))}
