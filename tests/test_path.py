import copy

import pytest
import torch
from cases import CASES, instantiate

from mli_theory.path import BNPolicy, distances, evaluate, interpolate, loss_curve, make_line, recompute_bn_statistics


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_endpoints_reproduce_the_models_bit_for_bit(case, device):
    model, init, final, data = instantiate(case)
    line = make_line(model, init, final, device=device, dtype=torch.float64)
    d = data.to(device, torch.float64)
    for alpha, state in ((0.0, init), (1.0, final)):
        ref = copy.deepcopy(model).double().to(device)
        ref.load_state_dict(state)
        ref.eval()
        with torch.no_grad():
            expected = ref(d.x)
            got = torch.func.functional_call(line.shell, line.at(alpha), (d.x,))
        assert torch.equal(expected, got)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_caller_objects_are_not_mutated(case):
    model, init, final, data = instantiate(case)
    before_model = {k: v.clone() for k, v in model.state_dict().items()}
    before_init = {k: v.clone() for k, v in init.items()}
    before_final = {k: v.clone() for k, v in final.items()}
    x_before = data.x.clone()
    training = model.training
    line = make_line(model, init, final, dtype=torch.float64)
    loss_curve(line, data, [0.0, 0.5, 1.0], bn=BNPolicy.RECOMPUTE, batch_size=4)
    from mli_theory.geometry import path_jet

    path_jet(line, data, [0.2, 0.8])
    for k, v in model.state_dict().items():
        assert torch.equal(v, before_model[k])
    assert all(torch.equal(init[k], before_init[k]) for k in init)
    assert all(torch.equal(final[k], before_final[k]) for k in final)
    assert torch.equal(data.x, x_before)
    assert model.training == training


@pytest.mark.parametrize("case", [c for c in CASES if "bn" not in c["id"] and c["id"] != "convnet"], ids=lambda c: c["id"])
@pytest.mark.parametrize("dtype,rel", [(torch.float64, 1e-13), (torch.float32, 1e-5)], ids=["float64", "float32"])
def test_full_set_mean_is_independent_of_batch_size(case, dtype, rel):
    """Sums accumulate in float64 whatever the dtype: only the per-batch forward rounding differs."""
    model, init, final, data = instantiate(case, n=29)
    line = make_line(model, init, final, dtype=dtype)
    data = data.to("cpu", dtype)
    ref = loss_curve(line, data, [0.0, 0.3, 1.0]).losses
    for bs in (1, 4, 7, 29, 100):
        got = loss_curve(line, data, [0.0, 0.3, 1.0], batch_size=bs).losses
        assert got == pytest.approx(ref, rel=rel, abs=0)


@pytest.mark.parametrize("case", [c for c in CASES if "bn" not in c["id"]], ids=lambda c: c["id"])
def test_vmapped_alpha_chunks_match_the_plain_loop(case, device):
    model, init, final, data = instantiate(case)
    line = make_line(model, init, final, device=device, dtype=torch.float64)
    d = data.to(device, torch.float64)
    alphas = [i / 10 for i in range(11)]
    loop = loss_curve(line, d, alphas, alpha_chunk=1)
    chunked = loss_curve(line, d, alphas, alpha_chunk=4)
    assert chunked.losses == pytest.approx(loop.losses, rel=1e-12)


def test_interpolation_is_computed_afresh_at_every_alpha():
    a = {"w": torch.tensor([0.1, 0.7], dtype=torch.float64)}
    b = {"w": torch.tensor([0.3, -0.2], dtype=torch.float64)}
    for alpha in (0.0, 0.1, 0.37, 1.0):
        expected = (1 - alpha) * a["w"] + alpha * b["w"]
        assert torch.equal(interpolate(a, b, alpha)["w"], expected)
    assert torch.equal(interpolate(a, b, 1.0)["w"], b["w"])


def test_batchnorm_policies():
    case = next(c for c in CASES if c["id"] == "mlp_relu_bn")
    model, init, final, data = instantiate(case, n=20)
    line = make_line(model, init, final, dtype=torch.float64)
    # recompute: statistics are re-estimated; equal to a manual train-mode pass on a copy
    state = recompute_bn_statistics(line, line.at(0.4), data.x, None)
    ref = copy.deepcopy(model).double()
    ref.load_state_dict(line.at(0.4))
    for m in ref.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.reset_running_stats()
            m.momentum = None
    ref.train()
    with torch.no_grad():
        ref(data.x)
    for k, v in ref.state_dict().items():
        assert torch.allclose(state[k].double(), v.double(), rtol=1e-12, atol=1e-14), k
    # the three policies give different curves in the interior and agree where they must
    curves = {p: loss_curve(line, data, [0.0, 0.5, 1.0], bn=p).losses for p in BNPolicy}
    assert curves[BNPolicy.INTERPOLATE][1] != curves[BNPolicy.RECOMPUTE][1]
    assert curves[BNPolicy.FROZEN][2] == curves[BNPolicy.INTERPOLATE][2]  # both use θT's statistics at α = 1
    ev, _ = evaluate(line, line.at(1.0), data)
    assert ev == curves[BNPolicy.INTERPOLATE][2]


def test_distances():
    case = CASES[0]
    model, init, final, _ = instantiate(case)
    line = make_line(model, init, final, dtype=torch.float64)
    d, nd = distances(line)
    delta = torch.cat([(final[k].double() - init[k].double()).flatten() for k in init])
    base = torch.cat([init[k].double().flatten() for k in init])
    assert d == pytest.approx(float(delta.norm()), rel=1e-14)
    assert nd == pytest.approx(float(delta.norm() / base.norm()), rel=1e-14)
