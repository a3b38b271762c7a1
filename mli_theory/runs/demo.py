"""The embedded default: train small networks on scikit-learn's diabetes data and check MLI.

Two runs, both on ``sklearn:diabetes`` (442 patients, 10 standardised features, standardised
disease-progression target) under MSE:

* ``mlp:10-32-32-1:tanh`` trained with SGD + momentum: loss curve, grid metrics, output-path
  geometry, the MSE conditions (grid evidence) and a certificate over [0, 1] from rigorous
  enclosures of L′ (:mod:`mli_theory.certify.partition`);
* ``deep_linear:10-8-8-1`` trained the same way: the same, plus an exact certificate over the
  whole interval [0, 1], with the MSE conditions proven or disproven exactly (polynomial path).
"""

from __future__ import annotations

import os
from typing import Any, TextIO

import torch

from ..inputs.arch import build_model, parse_arch
from ..check import check
from ..inputs.checkpoint import save_state_dict
from ..inputs.data import load_data
from ..plot import plot_curve
from .train import train

_RUNS = (
    ("mlp", "mlp:10-32-32-1:tanh", 0.02),
    ("deep_linear", "deep_linear:10-8-8-1", 0.02),
)


def run_demo(out: str, *, epochs: int = 150, seed: int = 0, log: TextIO | None = None) -> dict[str, Any]:
    """Train, save checkpoints and plots under ``out``, check MLI; return a summary dict."""
    os.makedirs(out, exist_ok=True)
    data = load_data("sklearn:diabetes", "mse")
    data32 = data.to("cpu", torch.float32)
    summary: dict[str, Any] = {"data": data.name, "out": out, "runs": {}}
    texts = []
    for name, arch, lr in _RUNS:
        torch.manual_seed(seed)
        model = build_model(parse_arch(arch))
        if log:
            log.write(f"demo: training {arch} on {data.name} ({epochs} epochs, SGD lr={lr}, momentum 0.9)\n")
        res = train(model, data32, optimizer="sgd", lr=lr, epochs=epochs, batch_size=32, seed=seed)
        init_p, final_p = os.path.join(out, f"{name}_init.pt"), os.path.join(out, f"{name}_final.pt")
        save_state_dict(res.init, init_p)
        save_state_dict(res.final, final_p)
        result = check(
            build_model(parse_arch(arch)),
            res.init,
            res.final,
            data,
            alphas=50,
            certify=True,
            dtype=torch.float64,
            info={"arch": arch, "data": data.name},
            witness_curve=True,
        )
        plot_p = os.path.join(out, f"{name}_curve.png")
        near = result.info.get("witness_curve")
        plot_curve(result, plot_p, title=f"{arch} on {data.name}: certificate {result.certificate.status}",
                   witness_samples=(near["alphas"], near["losses"]) if near else None)
        summary["runs"][name] = {
            "arch": arch,
            "init": init_p,
            "final": final_p,
            "plot": plot_p,
            "final_train_loss": res.final_loss,
            "check": result.to_dict(),
        }
        cmd = (
            f"mli-theory check --arch {arch} --init {init_p} --final {final_p} --data {data.name} "
            "--loss mse --dtype float64 --certify"
        )
        texts.append(result.to_text() + f"\n\n  plot: {plot_p}\n  reproduce: {cmd}\n")
    summary["text"] = "\n".join(texts)
    return summary
