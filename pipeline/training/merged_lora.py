"""A peft LoRA linear layer that, where it is cheaper, runs as one matmul with the merged weight ``W + s·B·A``.

peft computes ``W x + s·B(A x)``: two extra matmuls over every token, forward and backward. For FLUX.1-dev (width
3072, rank 16, thousands of tokens) that is cheap. For the embedded micro model (width 128, rank 128, ~700 tokens a
batch) the LoRA path costs more than the layer itself, while merging the weight first costs one 128×128×128 product
per step and the backward one weight gradient. Same function, same gradients (up to rounding), same saved LoRA — only
the order of the products differs. Measured in ``bench/merged_lora.py``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.lora import Linear as LoraLinear


def merging_pays(tokens: int, in_features: int, out_features: int, rank: int) -> bool:
    """Whether one forward + backward with the merged weight takes fewer FLOPs than peft's LoRA path (``tokens``:
    ``N``, the rows of the layer's input).

    peft: the LoRA's two products forward and about twice that backward, ``6·N·r·(in + out)``. Merged: ``B·A``
    forward, its two gradients, and the merged weight's gradient over the tokens, ``2·in·out·(N + 3r)``. (The base
    layer's own forward and input gradient are the same both ways.)
    """
    return in_features * out_features * (tokens + 3 * rank) < 3 * tokens * rank * (in_features + out_features)


def merging_can_pay(in_features: int, out_features: int, rank: int) -> bool:
    """Whether :func:`merging_pays` holds for some batch: for enough tokens exactly when ``in·out < 3r·(in + out)``
    (the merged weight's fixed cost ``6·r·in·out`` is paid back only then)."""
    return in_features * out_features < 3 * rank * (in_features + out_features)


class MergedWeightLoraLinear(LoraLinear):
    """peft's LoRA ``Linear``, whose forward uses the merged weight when :func:`merging_pays` (one plain adapter, no
    dropout) and peft's own forward otherwise. Registered with ``LoraConfig._register_custom_module``, peft's hook
    for custom layers, so saving, loading and the state dict's names are peft's."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        adapter = self._single_plain_adapter()
        base = self.get_base_layer()
        if (adapter is None or args or kwargs
                or not merging_pays(x.numel() // base.in_features, base.in_features, base.out_features,
                                    self.r[adapter])):
            return super().forward(x, *args, **kwargs)
        weight = base.weight + self.get_delta_weight(adapter).to(base.weight.dtype)
        return F.linear(x, weight, base.bias)

    def _single_plain_adapter(self) -> str | None:
        """The one active adapter when the merged form computes exactly what peft would; otherwise None."""
        if self.disable_adapters or self.merged or len(self.active_adapters) != 1:
            return None
        adapter = self.active_adapters[0]
        if (adapter not in self.lora_A or adapter in self.lora_variant
                or not isinstance(self.lora_dropout[adapter], torch.nn.Identity)):
            return None
        return adapter
