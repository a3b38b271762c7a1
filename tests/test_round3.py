"""Round 3 of the research validation: the design (experiments/round3.py), the tests
(experiments/inference.py, against exact enumeration, scipy and simulation) and the analysis
(experiments/round3_analysis.py) on synthetic rows."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import optimize, stats


@pytest.fixture(scope="module")
def mods(experiments):
    return experiments("inference"), experiments("round3"), experiments("round3_analysis")


def _exact_p(stat, y, strata):
    """Two-sided p of a within-strata permutation statistic by enumerating every arrangement."""
    y = np.asarray(y)
    groups = {}
    for i, s in enumerate(strata):
        groups.setdefault(s, []).append(i)
    idx = list(groups.values())
    obs = abs(stat(y))
    per = [set(itertools.permutations(y[g])) for g in idx]
    hits = total = 0
    for combo in itertools.product(*per):
        z = y.copy()
        for g, vals in zip(idx, combo):
            z[g] = vals
        # weight each distinct arrangement by its multiplicity (all arrangements equally likely)
        hits += abs(stat(z)) >= obs - 1e-12
        total += 1
    return hits / total


def test_permutation_tests_match_exact_enumeration(mods):
    inf, _, _ = mods
    rng = np.random.default_rng(3)
    y = np.array([1, 0, 1, 1, 0, 0, 1, 0, 0, 1])
    g = np.array([1, 1, 1, 0, 0, 1, 0, 1, 0, 0])
    s = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    x = rng.normal(size=10)
    score = np.array([0, 1, 2, 3, 0, 1, 2, 3, 1, 2], dtype=float)

    def cmh(gg):
        return sum(((gg[i] * y[i]).sum() - gg[i].sum() * y[i].sum() / len(i)) for i in (np.arange(5), np.arange(5, 10)))

    r = inf.stratified_rate_test(y, g, s, B=40_000, seed=1)
    assert r.p == pytest.approx(_exact_p(cmh, g, s), abs=0.012)

    def ranksum(yy):
        tot = 0.0
        for i in (np.arange(5), np.arange(5, 10)):
            u = (stats.rankdata(x[i]) - 0.5) / 5
            tot += (yy[i] * (u - u.mean())).sum()
        return tot

    r = inf.stratified_rank_test(x, y, s, B=40_000, seed=2)
    assert r.p == pytest.approx(_exact_p(ranksum, y, s), abs=0.012)

    def trend(yy):
        return sum((yy[i] * (score[i] - score[i].mean())).sum() for i in (np.arange(5), np.arange(5, 10)))

    r = inf.trend_test(y, score, s, B=40_000, seed=3)
    assert r.p == pytest.approx(_exact_p(trend, y, s), abs=0.012)


def test_one_stratum_rank_test_is_the_mann_whitney_test(mods):
    inf, _, _ = mods
    x = np.array([0.3, 1.2, 2.2, 0.1, 3.4, 2.9, 4.1, 0.7, 5.0, 3.8, 4.4])
    y = np.array([0, 0, 0, 0, 1, 0, 1, 0, 1, 1, 1])
    r = inf.stratified_rank_test(x, y, [0] * len(x), B=60_000, seed=4)
    ref = stats.mannwhitneyu(x[y == 1], x[y == 0], alternative="two-sided", method="exact").pvalue
    assert r.p == pytest.approx(ref, abs=0.006) and r.effect > 0


def test_uninformative_strata_give_p_one_and_planted_effects_are_found(mods):
    inf, _, _ = mods
    assert inf.stratified_rate_test([0] * 6, [1, 1, 1, 0, 0, 0], [0] * 6).p == 1.0
    assert inf.stratified_rank_test([1, 2, 3], [0, 0, 0], [0] * 3).p == 1.0
    rng = np.random.default_rng(0)
    g = rng.random(300) < 0.5
    strata = rng.integers(0, 4, 300)
    yy = rng.random(300) < np.where(g, 0.5, 0.1)
    r = inf.stratified_rate_test(yy, g, strata, B=5000)
    assert r.p < 1e-3 and 0.25 < r.effect < 0.55
    null = inf.stratified_rate_test(rng.random(300) < 0.3, g, strata, B=5000)
    assert null.p > 1e-3  # with this seed; a valid test rejects a true null rarely


def test_holm_matches_its_definition(mods):
    inf, _, _ = mods
    p = [0.001, 0.04, 0.03, 0.2, 0.012]
    adj = inf.holm(p)
    # by hand: sorted 0.001×5, 0.012×4, 0.03×3, 0.04×2, 0.2×1, cumulative max
    assert adj == pytest.approx([0.005, 0.09, 0.09, 0.2, 0.048])
    assert inf.mcnemar_exact(0, 0) == 1.0 and inf.mcnemar_exact(3, 3) == 1.0


def test_firth_estimate_maximises_the_penalised_likelihood_even_under_separation(mods):
    inf, _, _ = mods
    rng = np.random.default_rng(1)
    for separated in (False, True):
        x = rng.normal(size=40)
        yv = (x > 0).astype(float) if separated else (rng.random(40) < 1 / (1 + np.exp(-1.5 * x))).astype(float)
        X = np.column_stack([np.ones(40), x, rng.normal(size=40)])
        fit = inf.firth_logistic(X, yv, ["c", "x", "z"])
        ref = optimize.minimize(lambda b: -inf.firth_penalised_loglik(b, X, yv), np.zeros(3), method="Nelder-Mead",
                                options={"xatol": 1e-9, "fatol": 1e-12, "maxiter": 20000, "maxfev": 40000})
        assert fit.converged and all(math.isfinite(c) for c in fit.coef)
        assert np.allclose(fit.coef, ref.x, atol=2e-4)
        assert all(lo < c < hi for lo, c, hi in zip(fit.lo, fit.coef, fit.hi))


def test_detectable_effects_have_the_stated_power(mods):
    inf, _, r3a = mods
    rng = np.random.default_rng(5)
    n1, n0, p0, alpha = 150, 200, 0.1, 0.05
    p1 = inf.detectable_rate(n1, n0, p0, alpha=alpha)
    a = rng.binomial(n1, p1, 20_000) / n1
    b = rng.binomial(n0, p0, 20_000) / n0
    z = (2 * np.arcsin(np.sqrt(a)) - 2 * np.arcsin(np.sqrt(b))) / math.sqrt(1 / n1 + 1 / n0)
    assert np.mean(np.abs(z) > stats.norm.ppf(1 - alpha / 2)) == pytest.approx(0.8, abs=0.03)
    d = inf.detectable_shift(60, 80, alpha=alpha)
    hits = 0
    for _ in range(1500):
        u = stats.mannwhitneyu(rng.normal(d, 1, 60), rng.normal(0, 1, 80)).pvalue
        hits += u < alpha
    assert hits / 1500 == pytest.approx(0.8, abs=0.04)
    assert inf.detectable_rate(0, 5, 0.1) == 1.0 and inf.detectable_rate(3, 3, 0.0, alpha=0.001) == 1.0
    # the McNemar statement: at the returned removal rate, the critical count is reached 80 % of the time
    text = r3a._mcnemar_detectable(100, alpha / 7)
    crit, q = int(text.split()[1]), float(text.rsplit(" ", 3)[-3])
    assert inf.mcnemar_exact(crit, 0) < alpha / 7 <= inf.mcnemar_exact(crit - 1, 0)
    assert stats.binom.sf(crit - 1, 100, q) == pytest.approx(0.8, abs=0.03)


def test_design_quick_is_a_subset_balanced_and_twinned(mods):
    from mli_theory.runs.sweep import run_id

    _, r3, _ = mods
    e = r3.edges([])
    full, quick = r3.edge_design(e, False), r3.edge_design(e, True)
    assert len(full) == 6 * 2 * 20 * 2 and {run_id(c) for c in quick} <= {run_id(c) for c in full}
    assert len({run_id(c) for c in full}) == len(full)
    assert [c.seed for c in full] == sorted(c.seed for c in full)  # ordered by seed: a partial sweep stays balanced
    twins = {}
    for c in full:
        twins.setdefault((c.extra["opt"], c.batchnorm, c.lr, c.seed), set()).add(c.anneal)
    assert all(v == {0.0, 0.25} for v in twins.values())
    below = {(c.extra["opt"], c.batchnorm): c.lr for c in full if c.extra["step"] == -1}
    assert below[("sgd", False)] == 0.316 and below[("adam", False)] == 0.0178 and below[("sgd_m", True)] == 0.1
    assert {run_id(c) for c in r3.threads_design(e, True)} <= {run_id(c) for c in r3.threads_design(e, False)} <= {run_id(c) for c in full}
    assert {run_id(c) for c in r3.push_design(True)} <= {run_id(c) for c in r3.push_design(False)}


def test_pilot_edge_rule(mods):
    _, r3, _ = mods

    def row(lr, loss):
        return {"lr": lr, "status": "ok", "final_loss_path": loss}

    rows = [row(0.178, 0.01)] * 3 + [row(0.178, 0.2)] * 2 + [row(0.316, 0.01)] * 2 + [row(0.316, 3.0)] * 3
    edge, counts = r3.edge_from_pilot(rows)
    assert edge == 0.178 and counts[0.316] == (2, 5)
    assert r3.edge_from_pilot([row(0.178, 0.2)] * 5)[0] == r3.ADAM_BN_ROUND2_TOP


def _synthetic(r3a_seed: int, adam_rate: float):
    rng = np.random.default_rng(r3a_seed)
    edge = []
    cells = [("sgd", False, 0.562), ("sgd", True, 0.178), ("sgd_m", False, 0.178), ("sgd_m", True, 0.178), ("adam", False, 0.0316), ("adam", True, 0.1)]
    for o, b, e in cells:
        for step in (0, -1):
            lr = float(f"{e * 10 ** (step / 4):.3g}")
            for seed in range(20):
                for an in (0.0, 0.25):
                    rate = adam_rate if o == "adam" else 0.05
                    rise = rng.random() < rate
                    loss = 0.01 if rng.random() < 0.9 else (0.3 if rng.random() < 0.5 else 9.0)
                    edge.append({"id": f"{o}{b}{lr}{seed}{an}", "opt": o, "batchnorm": b, "lr": lr, "edge_lr": e, "step": step, "seed": seed,
                                 "anneal": an, "status": "ok", "final_loss_path": loss, "initial_loss": 2.3,
                                 "max_rise": 0.01 if rise else 0.0, "end_rise": 0.01 if rise and an == 0 else 0.0,
                                 "normalized_distance": float(np.exp(rng.normal(1 + rise))), "gauss_length": 1.5 + rng.random(),
                                 "cert@0.001": "non_monotone" if rise else "monotone", "witness@0.001": "0.99,1" if rise else "",
                                 "cert@0": "non_monotone" if rise else "monotone", "witness@0": "0.99,1" if rise else "",
                                 "env_torch": "t", "env_blas": "mkl", "env_cpu": "x", "env_simd": "AVX2", "threads": 1})
    push = [{**edge[0], "id": f"p{rho}{s}", "opt": "sgd_m", "min_distance": rho, "cert@0.001": "non_monotone" if rho * s % 7 > 5 else "monotone",
             "witness@0.001": "0.3,0.5"} for rho in (0.0, 1.0, 2.0, 4.0) for s in range(10)]
    threads = [dict(edge[0], final_loss_path=0.011), dict(edge[4], final_loss_path=0.2)]
    return {"pilot": [], "edge": edge, "push": push, "threads": threads}


def test_analysis_end_to_end_finds_a_planted_effect_and_writes_the_readme_block(mods, tmp_path):
    _, _, r3a = mods
    readme = tmp_path / "README.md"
    readme.write_text("x\n" + r3a.BEGIN + "\nOLD-BLOCK\n" + r3a.END + "\ny\n")
    s = r3a.analyse(_synthetic(0, adam_rate=0.6), str(tmp_path), label="full", readme=str(readme))
    t = {x["key"]: x for x in s["tests"]}
    assert t["2"]["verdict"] == "supported" and t["2"]["effect"] > 0.3
    assert t["4a"]["effect"] > 0 and t["6"]["verdict"] == "supported"  # end rises only in constant twins
    assert all(x["p_holm"] >= x["p"] for x in s["tests"])
    assert s["threads"]["compared"] == 2 and len(s["threads"]["changed"]) == 1  # converged → not converged
    text = readme.read_text()
    assert text.startswith("x\n") and text.endswith("y\n") and "OLD-BLOCK" not in text and "**supported**" in text
    for name in ("tables.md", "summary.json", "edge_cells.png", "push_trend.png", "distance_within_cells.png", "gauss_within_cells.png"):
        assert (tmp_path / name).is_file(), name
    null = r3a.analyse(_synthetic(1, adam_rate=0.05), str(tmp_path), label="full", readme=None)
    assert {x["key"]: x for x in null["tests"]}["2"]["verdict"] != "supported"


def test_run_states_and_witness_kinds(mods):
    _, _, r3a = mods
    base = {"status": "ok", "initial_loss": 2.3, "cert@0.001": "non_monotone"}
    assert r3a.state({**base, "final_loss_path": 0.01}) == "converged"
    assert r3a.state({**base, "final_loss_path": 0.5}) == "not_converged"
    assert r3a.state({**base, "final_loss_path": 2.4}) == "diverged"
    assert r3a.state({"status": "diverged"}) == "diverged"
    assert r3a.kind({**base, "final_loss_path": 0.01, "witness@0.001": "0.97,0.98"}) == "end"
    assert r3a.kind({**base, "final_loss_path": 0.01, "witness@0.001": "0.2,0.4"}) == "interior"
    assert r3a.kind({**base, "final_loss_path": 0.5, "witness@0.001": "0.2,0.4"}) is None


def test_a_later_certificate_takes_the_primary_outcome_and_the_first_stays_for_sensitivity(mods):
    _, r3, r3a = mods
    row = {"status": "ok", "initial_loss": 2.3, "final_loss_path": 0.01, "anneal": 0.0, "cert@0.001": "unknown",
           "witness@0.001": "", "cert@0": "monotone"}
    assert r3.needs_recertificate(row, "edge") and r3.needs_recertificate(row, "push") and r3.needs_recertificate(row, "scale")
    assert not r3.needs_recertificate(row, "threads")  # compared with its 1-thread twin's first certificate
    assert not r3.needs_recertificate({**row, "anneal": 0.25}, "edge")
    assert not r3.needs_recertificate({**row, "final_loss_path": 0.5}, "edge")  # not converged: never certified
    assert not r3.needs_recertificate({**row, "env_library": "abc"}, "edge")  # certified by a later library already
    later = {**row, "recert@0.001": "non_monotone", "recert_witness@0.001": "0.2,0.4"}
    assert not r3.needs_recertificate(later, "edge")
    assert r3a.status(later) == "non_monotone" and r3a.status(later, first=True) == "unknown"
    assert r3a.y(later) and not r3a.y(later, first=True) and r3a.kind(later) == "interior"
    assert r3a.status(later, 0.0) == "monotone"  # other tolerances keep the sweep's certificate
    assert r3a.certifier([later, row]) == "? 1, d183bf2 1" and r3a.certifier([{**later, "recert_library": "f00"}]) == "f00"
    assert r3a.certifier([{**row, "env_library": "abc"}]) == "abc" and r3a.certifier([]) == "–"
    assert r3a.recertifications([later, row]) == [["?", 1, 1, 1, 0]]


def test_recertifying_with_the_sweeps_own_library_reproduces_its_certificate(mods, tmp_path):
    """A run certified by the sweep, stripped to look like a d183bf2 row, certified again by
    ``recertify``: the same library, budget and curve give the same verdict."""
    import json

    from mli_theory.runs import TrainConfig
    from mli_theory.runs.sweep import run_sweep

    _, r3, _ = mods
    cfg = TrainConfig(arch="mlp:64-16-10", data="sklearn:digits", loss="ce", optimizer="adam", lr=0.01, epochs=3, batch_size=64, seed=0)
    rows = run_sweep([cfg], str(tmp_path / "edge"), jobs=1, geometry=False, tols=(1e-3,), certify_below=0.5, certify_budget=30.0)
    assert rows[0]["cert@0.001"] in ("monotone", "non_monotone"), rows[0]
    folder = tmp_path / "edge" / "runs" / rows[0]["id"]
    stored = json.loads((folder / "result.json").read_text())
    stored.pop("env_library")
    (folder / "result.json").write_text(json.dumps(stored))
    row = {**stored, "final_loss_path": 0.01}  # converged by the round's rule, whatever 3 epochs reach
    got = {"edge": [row]}
    assert r3.recertify(got, str(tmp_path), jobs=1) == 1
    new = got["edge"][0]
    assert new["recert@0.001"] == rows[0]["cert@0.001"] and new["recert_library"]
    assert json.loads((folder / "result.json").read_text())["recert@0.001"] == new["recert@0.001"]
    assert r3.recertify(got, str(tmp_path), jobs=1) == 0  # done once


def test_events_in_one_cell_are_named_an_interaction(mods):
    _, _, r3a = mods
    base = {"status": "ok", "initial_loss": 2.3, "final_loss_path": 0.01}

    def run(opt, b, hit):
        return {**base, "opt": opt, "batchnorm": b, "cert@0.001": "non_monotone" if hit else "monotone"}

    one = [run("adam", True, True), run("adam", True, False), run("adam", False, False), run("sgd", True, False)]
    rows, text = r3a.events_by_cell(one)
    assert rows == [("SGD + BN", 0, 1), ("Adam", 0, 1), ("Adam + BN", 1, 2)]
    assert "Adam + BN 1/2" in text and "interaction" in text
    _, text = r3a.events_by_cell(one + [run("sgd", True, True)])
    assert "SGD + BN 1/2" in text and "interaction" not in text
    _, text = r3a.events_by_cell([run("sgd", False, False)])
    assert text.startswith("No converged")
