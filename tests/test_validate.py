"""experiments/validate.py and validate_analysis.py: the design, the statistics, the tables on synthetic rows."""

from __future__ import annotations

import math

import pytest
from scipy import stats


@pytest.fixture(scope="module")
def va(experiments):
    return experiments("validate_analysis")


@pytest.fixture(scope="module")
def vd(experiments):
    return experiments("validate")


def test_wilson_and_newcombe_match_published_values(va):
    p, lo, hi = va.wilson(5, 10)
    assert (p, round(lo, 4), round(hi, 4)) == (0.5, 0.2366, 0.7634)
    # Newcombe (1998), Stat. Med. 17:873, example (a): 56/70 − 48/80, method 10: 0.0524 to 0.3339
    d, lo, hi = va.newcombe(56, 70, 48, 80)
    assert d == pytest.approx(0.2) and lo == pytest.approx(0.0524, abs=5e-4) and hi == pytest.approx(0.3339, abs=5e-4)
    assert all(math.isnan(v) for v in va.newcombe(0, 0, 1, 2))


def test_spearman_uses_average_ranks_for_ties(va):
    x = [0.0, 0.0, 0.0, 1.0, 2.0, 3.0]
    y = [0.0, 0.0, 0.0, 0.0, 0.5, 0.2]
    rho, p, n = va.spearman(x, y)
    assert n == 6 and rho == pytest.approx(stats.spearmanr(x, y).statistic)
    assert va.spearman(list(reversed(x)), list(reversed(y)))[0] == pytest.approx(rho)  # row order cannot matter


def test_median_interval_contains_the_median_and_mcnemar_counts_discordant_pairs(va):
    m, lo, hi, n = va.median_ci([1.0, 2.0, 3.0, 4.0, 100.0])
    assert (m, n) == (3.0, 5) and lo <= m <= hi
    b, c, p = va.mcnemar([(True, False)] * 6 + [(False, True)] * 0 + [(True, True)] * 3)
    assert (b, c) == (6, 0) and p == pytest.approx(2 * 0.5**6)


def test_the_design_is_fair_and_quick_is_a_subset_of_full(vd):
    from mli_theory.runs.sweep import run_id

    full, quick = vd.design(False), vd.design(True)
    for lrs in vd.LRS.values():
        assert len(lrs) >= 6 and all(b / a == pytest.approx(10 ** 0.25, rel=0.01) for a, b in zip(lrs, lrs[1:]))
    cells = {}
    for c in full["optim"]:
        cells.setdefault((c.extra["opt"], c.arch, c.lr), set()).add(c.seed)
    assert len(cells) == 3 * 2 * 9 and all(len(s) >= 5 for s in cells.values())
    ids = {name: {run_id(c) for c in cfgs} for name, cfgs in full.items()}
    for name, cfgs in quick.items():
        assert {run_id(c) for c in cfgs} <= ids[name]
    assert all(c.min_distance >= 0 and c.distance_reward == 0 for c in full["push"])


def _row(va, exp="optim", opt="sgd", bn=False, lr=0.1, seed=0, loss=0.01, rise=0.0, cert0="monotone", cert3="monotone", **kw):
    return {"experiment": exp, "opt": opt, "batchnorm": bn, "lr": lr, "seed": seed, "status": "ok", "train_loss": loss,
            "final_loss_path": loss, "max_rise": rise, "interior_bump": kw.pop("bump", 0.0), "end_rise": rise if not kw.get("interior") else 0.0,
            "final_run_steps": 1 if rise > 0 else 0, "normalized_distance": kw.pop("dist", 1.0), "gauss_length": kw.pop("gauss", 2.0),
            "cert@0": None if bn else cert0, "cert@0.001": None if bn else cert3, "min_distance": kw.pop("rho", 0.0), "anneal": 0.0, **kw}


def test_stability_edge_is_the_largest_lr_where_half_the_seeds_converge(va):
    rows = [_row(va, lr=lr, seed=s, loss=(0.01 if (lr < 1.0 or (lr == 1.0 and s < 1)) else 5.0)) for lr in (0.1, 0.3, 1.0, 3.0) for s in range(2)]
    edges = va.stability_edges(rows)
    assert edges[("sgd", False)] == 1.0
    grid = {"sgd": [0.1, 0.3, 1.0, 3.0]}
    assert [va.relative_step(r, edges, grid) for r in rows[::2]] == [-2, -1, 0, 1]


def test_certified_table_counts_each_run_once(va):
    rows = [_row(va, rise=0.0, cert0="non_monotone"), _row(va, rise=2e-3, cert0="non_monotone"), _row(va, rise=5e-4, cert0="unknown"),
            _row(va, rise=1e-6, cert0="monotone")]
    table, tot = va.certified_table(rows, 0.0)
    assert [r[1] for r in table] == [1, 2, 1, 4]
    assert tot == {"monotone": 1, "non_monotone": 2, "unknown": 1}


def test_analysis_end_to_end_on_synthetic_rows(va, vd, tmp_path):
    rows = {"optim": [], "push": [], "anneal": [], "conv": []}
    for opt, lrs in vd.LRS.items():
        for bn in (False, True):
            for i, lr in enumerate(lrs):
                for s in range(3):
                    edge = i == len(lrs) - 2
                    rows["optim"].append(_row(va, opt=opt, bn=bn, lr=lr, seed=s, loss=0.01 if i >= 2 and i < len(lrs) - 1 else 3.0,
                                              rise=0.01 if edge and s == 0 else 0.0, cert0="non_monotone" if edge and s == 0 else "monotone",
                                              dist=1.0 + i, gauss=2.0 + i))
    for rho in (0.0, 2.0):
        for s in range(3):
            rows["push"].append(_row(va, exp="push", opt="sgd_m", lr=0.03, seed=s, rho=rho, rise=0.02 if rho and s else 0.0))
    for r in rows["optim"]:
        if not r["batchnorm"] and r["lr"] in vd.LRS[r["opt"]][-5:-1]:
            rows["anneal"].append({**r, "experiment": "anneal", "anneal": 0.25, "max_rise": 0.0, "end_rise": 0.0, "cert@0": "monotone"})
    for net in ("cnn", "resnet"):
        for bn in (False, True):
            rows["conv"].append(_row(va, exp="conv", opt="adam", lr=1e-3, bn=bn, net=net, rise=0.0))
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\nolder text\n")
    summary = va.analyse(rows, str(tmp_path / "out"), label="quick", design=vd.design(True), readme=str(readme))
    text = readme.read_text()
    assert va.BEGIN in text and va.END in text and "older text" in text
    assert "### 2. Adam violates MLI more often than SGD" in text and "Wilson" in text
    assert (tmp_path / "out" / "tables.md").is_file() and (tmp_path / "out" / "nonmonotone_vs_lr.png").is_file()
    assert summary["edges"]["adam"] == vd.LRS["adam"][-2]
    assert summary["anneal"]["grid Δ > 0"][:3] == [3, 0, 36]  # 3 rising constant-lr twins at the edges, none annealed
    va.analyse(rows, str(tmp_path / "out"), label="quick", design=vd.design(True), readme=str(readme))
    assert readme.read_text().count(va.BEGIN) == 1  # regenerating replaces the block


def test_recertify_replaces_certificates_an_older_certifier_could_not_give(vd, tmp_path):
    from mli_theory.runs import TrainConfig
    from mli_theory.runs.sweep import run_one

    cfg = TrainConfig(arch="mlp:10-6-1:tanh:bn", data="sklearn:diabetes", loss="mse", epochs=3, batch_size=64, lr=0.01)
    folder = str(tmp_path / "runs" / "r1")
    row = run_one(cfg, folder, alphas=9, geometry=False, tols=(0.0, 1e-3))
    assert row["status"] == "ok", row.get("error")
    stale = {**row, "cert@0": "unknown", "cert_reason@0": "bn=recompute ... (a data-dependent function of α that is not enclosed yet)",
             "final_loss_path": 0.01, "experiment": "optim"}
    assert vd._needs_certificate(stale) and not vd._needs_certificate(row)
    new = vd._recertify_one((stale, folder))
    assert new["recertified"] and new["cert@0"] == row["cert@0"] and new["certificate"] == new["cert@0"]
    assert vd.STALE not in new["cert_reason@0"]
