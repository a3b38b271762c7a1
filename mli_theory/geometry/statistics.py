r"""BatchNorm statistics along the path as jets, so that z′ and z″ differentiate the measured curve.

With BatchNorm the curve whose loss is measured is z(α) = f(X; θ(α), s(α)), where the running
statistics s(α) = (μ(α), σ²(α)) of every BatchNorm layer follow the policy
(:class:`mli_theory.path.BNPolicy`):

* ``frozen``: s(α) = s_T, constant;
* ``interpolate``: s(α) = (1−α)s_0 + αs_T, affine in α (jet (s(α), s_T − s_0, 0));
* ``recompute`` (the reference's and our default): the statistics are reset and re-estimated by a
  pass in train mode over the training data in minibatches B_1, …, B_m, with a cumulative average
  (``momentum=None``). In that pass every BatchNorm layer normalises with the statistics of its
  own minibatch, and torch then stores the equal-weight average over minibatches

      μ(α) = (1/m) Σ_b μ_b(α),   σ²(α) = (1/m) Σ_b N_b/(N_b − 1) · v_b(α),

  with μ_b, v_b the mean and biased variance of the layer's input over the N_b positions (examples
  × spatial positions) of minibatch b. Each μ_b, v_b is a smooth function of α (the layer's input
  is, and the earlier layers normalise with their own batch statistics, which are smooth as long
  as v_b + ε > 0), so s(α) is smooth and its jet is the equal-weight average of the jets of the
  batch statistics.

:func:`statistics_jets` computes the jets of the re-estimated statistics by running the jet
interpreter over the recompute pass itself: BatchNorm modules get a rule that normalises with the batch statistics *as jets*
(the full second-order rule of the normalisation, as for LayerNorm) and records them. The
evaluation pass then reads (s, s′, s″) instead of constants, so z′ and z″ are the derivatives of
the curve that ``check`` evaluates; the tests compare them with finite differences of that curve
under every policy.

Where this is not possible the jets hold the statistics fixed at each α, which differentiates
another curve: nested forward mode (torch's eval-mode batch norm has a zero forward derivative in
its running statistics, silently), a model the interpreter cannot trace, or a model whose train
mode does something else at random (active dropout). :func:`statistics_jets` then raises
:class:`NotOnMeasuredCurve` with the reason, and :class:`mli_theory.geometry.PathJet` records it.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn
from torch.fx import GraphModule

from ..inputs.data import Dataset
from ..path import Line, recompute_batches
from .interpreter import interpret
from .rules import FUNCTION_RULES, METHOD_RULES, MODULE_RULES, Jet, JetNumbers, _affine, _channel, _normalized, lift, linear, mul


class NotOnMeasuredCurve(ValueError):
    """The jets cannot follow the BatchNorm statistics of the measured curve (the message says why)."""


def _bn_modules(gm: GraphModule) -> dict[int, str]:
    """id(module) → qualified name, for BatchNorm layers that keep running statistics."""
    return {
        id(m): name
        for name, m in gm.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    }


def _train_mode_numbers(names: dict[int, str], record: dict[str, list[tuple[Jet, Jet]]]) -> JetNumbers:
    """The jet number type with BatchNorm in train mode: batch statistics, recorded per layer."""

    def batch_norm_train(m: Any, p: dict, input: Any) -> Any:
        name = names.get(id(m))
        if name is None:  # no running statistics: the ordinary rule (or its fallback) applies
            return MODULE_RULES[type(m)](m, p, input)
        x = lift(input)
        m._check_input_dim(x.v)
        dims = (0,) + tuple(range(2, x.v.dim()))
        count = x.v.numel() // x.v.shape[1]
        if count < 2:
            raise NotOnMeasuredCurve(f"BatchNorm layer {name} sees {count} value per channel in a batch")
        mean = linear(lambda t: t.mean(dims), x)
        centred = linear(lambda t: t - t.mean(dims, keepdim=True), x)
        var = linear(lambda t: t.mean(dims) * (count / (count - 1)), mul(centred, centred))
        record.setdefault(name, []).append((mean, var))
        n = x.v.dim()
        return _affine(_normalized(x, dims, m.eps), _channel(p.get("weight"), n), _channel(p.get("bias"), n))

    modules = dict(MODULE_RULES)
    for cls in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
        modules[cls] = batch_norm_train
    return JetNumbers(modules, FUNCTION_RULES, METHOD_RULES)


def _average(jets: list[Jet]) -> Jet:
    """The equal-weight average of jets (torch's cumulative average with ``momentum=None``)."""
    k = len(jets)

    def mean_of(parts: list[torch.Tensor | None], like: torch.Tensor) -> torch.Tensor | None:
        if all(p is None for p in parts):
            return None
        return sum((p if p is not None else torch.zeros_like(like)) for p in parts) / k

    v = sum(j.v for j in jets) / k
    return Jet(v, mean_of([j.d1 for j in jets], v), mean_of([j.d2 for j in jets], v))


def _random_in_train_mode(module: nn.Module) -> str | None:
    for name, m in module.named_modules():
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            return f"{name} ({type(m).__name__}, p={m.p})"
    return None


def statistics_jets(
    line: Line,
    gm: GraphModule,
    params: Mapping[str, Any],
    data: Dataset,
    batch_size: int | None,
) -> dict[str, Jet]:
    """Jets (s(α), s′(α), s″(α)) of the re-estimated running statistics (``bn=recompute``) of every
    BatchNorm layer at one α. (Under ``interpolate`` the statistics are affine in α and enter like
    the parameters; under ``frozen`` they are constants: neither needs this pass.)

    Args:
        line: the path (its shell is the model whose graph is ``gm``).
        gm: the traced model.
        params: parameter jets at α (θ(α), Δθ, 0), keyed like the state dict.
        data: the training data (inputs used), as for the loss.
        batch_size: minibatch size of the re-estimation (as for the loss).

    Raises:
        NotOnMeasuredCurve: the recompute pass cannot be followed (active dropout in train mode,
            a layer with fewer than 2 values per channel).
    """
    why = _random_in_train_mode(line.shell)
    if why is not None:
        raise NotOnMeasuredCurve(f"the re-estimation pass runs {why} in train mode, which is random")
    names = _bn_modules(gm)
    record: dict[str, list[tuple[Jet, Jet]]] = {}
    numbers = _train_mode_numbers(names, record)
    for sl in recompute_batches(data.n, batch_size):
        interpret(gm, numbers, [Jet(data.x[sl])], params)
    out: dict[str, Jet] = {}
    for name in names.values():
        got = record.get(name)
        if not got:
            raise NotOnMeasuredCurve(f"BatchNorm layer {name} is not reached by the traced forward pass")
        prefix = f"{name}." if name else ""
        out[prefix + "running_mean"] = _average([m for m, _ in got])
        out[prefix + "running_var"] = _average([v for _, v in got])
    return out
