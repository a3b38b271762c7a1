"""Benchmark: weight matching (Ainsworth et al. 2022) time for an MLP and small ResNets.

    python benchmarks/alignment_speed.py [--quick] [--repeats 3]

For each model: the time to derive the permutation groups from the traced model, and the time of
the whole :func:`mli_theory.connectivity.weight_matching` (tracing included) between two
independently initialised checkpoints (wall and process CPU seconds: on a shared machine the CPU
time is the steadier number), with the number of sweeps it took. The models are defined
here (torchvision is not needed): the MLP 784-1000-1000-10 of the GUIDE's anchors and CIFAR-style
ResNet-20 (3 stages × 3 basic blocks, BatchNorm, 1×1 projection shortcuts) at widths 16 and 64.
Everything runs on the CPU in float64 (the matching casts to float64 itself).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
from _timing import add_quiet_flag, machine, quiet_run  # noqa: E402

from mli_theory.connectivity import permutation_groups, weight_matching  # noqa: E402


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = (
            nn.Sequential()
            if stride == 1 and c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        )

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet-(6n+2): a 3×3 stem, three stages of n basic blocks (widths w, 2w, 4w), a linear head."""

    def __init__(self, width: int = 16, blocks: int = 3, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        layers, c = [], width
        for stage, w in enumerate((width, 2 * width, 4 * width)):
            for i in range(blocks):
                layers.append(BasicBlock(c, w, 2 if (stage > 0 and i == 0) else 1))
                c = w
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        return self.fc(torch.flatten(self.pool(self.layers(x)), 1))


def _state(model: nn.Module, seed: int) -> dict:
    torch.manual_seed(seed)
    for m in model.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for k, v in sd.items():  # non-trivial BatchNorm statistics, as after training
        if k.endswith("running_var"):
            sd[k] = 0.5 + torch.rand_like(v)
        elif k.endswith("running_mean"):
            sd[k] = 0.1 * torch.randn_like(v)
    return sd


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="skip the width-64 ResNet")
    ap.add_argument("--repeats", type=int, default=3)
    add_quiet_flag(ap)
    args = ap.parse_args()
    with quiet_run(args.require_quiet):
        models = [
            ("MLP 784-1000-1000-10", nn.Sequential(nn.Linear(784, 1000), nn.ReLU(), nn.Linear(1000, 1000), nn.ReLU(), nn.Linear(1000, 10))),
            ("ResNet-20, width 16 (0.27 M params)", ResNet(16)),
        ]
        if not args.quick:
            models.append(("ResNet-20, width 64 (4.3 M params)", ResNet(64)))
        print(f"weight matching on {machine('cpu')}; median of {args.repeats}")
        print(f"  {'model':<38} {'params':>10} {'groups':>7} {'trace ms':>9} {'match s':>9} {'CPU s':>7} {'sweeps':>7}")
        for name, model in models:
            a, b = _state(model, 0), _state(model, 1)
            n_params = sum(p.numel() for p in model.parameters())
            t_trace, t_match, t_cpu, sweeps = [], [], [], 0
            for _ in range(args.repeats):
                t = time.perf_counter()
                groups = permutation_groups(model)
                t_trace.append(time.perf_counter() - t)
                t, c = time.perf_counter(), time.process_time()
                res = weight_matching(model, a, b)
                t_match.append(time.perf_counter() - t)
                t_cpu.append(time.process_time() - c)
                sweeps = res.iterations
            print(f"  {name:<38} {n_params:>10} {len(groups):>7} {1e3 * statistics.median(t_trace):>9.1f} "
                  f"{statistics.median(t_match):>9.2f} {statistics.median(t_cpu):>7.2f} {sweeps:>7}")


if __name__ == "__main__":
    main()
