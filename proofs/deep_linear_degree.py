"""Proof: deep linear networks have polynomial loss along the path (degree ≤ 2·depth)."""

from _common import exit_with, run

from mli_theory.theory.symbolic import check_step, deep_linear_degree


def deeper_cases() -> bool:
    return all(check_step(s) for d in (1, 4) for s in deep_linear_degree(depth=d, width=2).steps)


def exact_matches_network() -> bool:
    """The exact polynomial of mli_theory.exact agrees with a float64 network at random α."""
    import torch
    from torch import nn

    from mli_theory.inputs import Dataset
    from mli_theory.exact import loss_polynomial_of_line
    from mli_theory.path import evaluate, make_line

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Linear(4, 4, bias=False), nn.Linear(4, 2, bias=False)).double()
    s0 = {k: v.clone() for k, v in m.state_dict().items()}
    s1 = {k: v + torch.randn_like(v) for k, v in s0.items()}
    data = Dataset(torch.randn(10, 3, dtype=torch.float64), torch.randn(10, 2, dtype=torch.float64), "mse", "t")
    line = make_line(m, s0, s1, dtype=torch.float64)
    poly = loss_polynomial_of_line(line, data)
    if poly.degree > 6:
        return False
    for a in torch.rand(10, dtype=torch.float64).tolist():
        v, _ = evaluate(line, line.at(a), data)
        if abs(v - poly(a)) > 1e-12 * abs(v):
            return False
    return True


if __name__ == "__main__":
    exit_with(
        run(
            deep_linear_degree(),
            {
                "degree claims for depth 1 and 4 (width 2)": deeper_cases,
                "exact polynomial = network loss at random α (float64, 1e-12 relative)": exact_matches_network,
            },
        )
    )
