"""Small models as data: factory, input width, output width, loss, seed."""

from __future__ import annotations

import torch
from torch import nn

from mli_theory.inputs import build_model
from mli_theory.inputs import Dataset


class ConvNet(nn.Module):
    """A small non-Sequential model with conv, BatchNorm2d and a residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.head = nn.Linear(3 * 4 * 4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(-1, 1, 4, 4)
        h = torch.tanh(self.bn(self.conv(x))) + x
        return self.head(h.flatten(1))


CASES = [
    {"id": "linear", "factory": lambda: build_model("linear:4-2"), "d": 4, "k": 2, "loss": "mse", "seed": 0},
    {"id": "deep_linear", "factory": lambda: build_model("deep_linear:4-5-3-2"), "d": 4, "k": 2, "loss": "mse", "seed": 1},
    {"id": "mlp_tanh", "factory": lambda: build_model("mlp:4-6-6-2:tanh"), "d": 4, "k": 2, "loss": "mse", "seed": 2},
    {"id": "mlp_relu_bn", "factory": lambda: build_model("mlp:4-6-6-3:relu:bn"), "d": 4, "k": 3, "loss": "ce", "seed": 3},
    {"id": "mlp_gelu", "factory": lambda: build_model("mlp:4-5-2:gelu"), "d": 4, "k": 2, "loss": "mse", "seed": 4},
    {"id": "convnet", "factory": ConvNet, "d": 16, "k": 2, "loss": "mse", "seed": 5},
]


def instantiate(case: dict, n: int = 13, dtype: torch.dtype = torch.float64):
    """(model, init, final, data) for a case: θT = θ0 + noise, BN statistics perturbed."""
    g = torch.Generator().manual_seed(case["seed"])
    torch.manual_seed(case["seed"])
    model = case["factory"]()
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    final = {}
    for k, v in init.items():
        if not v.is_floating_point():
            final[k] = v + 3
        elif "running_var" in k:
            final[k] = v + torch.rand(v.shape, generator=g)
        else:
            final[k] = v + 0.7 * torch.randn(v.shape, generator=g)
    x = torch.randn(n, case["d"], generator=g, dtype=dtype)
    if case["loss"] == "mse":
        y = torch.randn(n, case["k"], generator=g, dtype=dtype)
    else:
        y = torch.randint(0, case["k"], (n,), generator=g)
    return model, init, final, Dataset(x, y, case["loss"], case["id"])
