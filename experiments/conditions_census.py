"""Census of the MSE sufficient conditions on the sweep (issue 16, theory round 2).

    python experiments/conditions_census.py --quick     # one run per experiment × arch of the quick grid, < 5 min
    python experiments/conditions_census.py             # every MSE run of the full sweep (~45 min, 2 cores)
    python experiments/conditions_census.py --tables-only   # rebuild tables.md from census.csv

Takes the MSE experiments of ``experiments/reproduce.py`` (digits autoencoder, diabetes tanh ± BatchNorm,
teacher, deep linear: every experiment whose loss is ``mse``), trains them with the sweep runner
(:func:`mli_theory.runs.sweep.run_sweep`, resumable, under ``experiments/out/conditions/``; its own
check runs without geometry, since the census check below recomputes it), then runs
:func:`mli_theory.check` on every trained run with geometry and ``certify`` (proof budget
``--certify-budget``, default 10 s; BatchNorm policy ``--bn``, default recompute). Each check is cached
in ``experiments/out/conditions/<mode>/census/<id>.json`` together with the settings and a fingerprint
of the library's source, and redone when either changes (or with ``--force``).

Writes ``experiments/results/conditions/[quick/]census.csv`` (one row per run: config, architecture
family, monotonicity on the grid and by certificate, and per condition its verdict ``holds`` /
``fails`` / ``undecided`` / ``n/a``, whether it was proven, its value and reason) and ``tables.md``:
per condition how often it applied, held (proven vs grid evidence), failed (and how often a grid
"holds" was withdrawn because the measured loss rose), was not applicable (most common reasons), by
architecture family; each verdict crossed with the run's monotonicity; two_phase against the others;
and, loudly, any condition that says ``holds`` on a run whose loss rises (there must be none).
Fractions carry Wilson 95 % intervals.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import subprocess
import sys
import time
from collections import Counter
from typing import Any, Iterable

from scipy.stats import binomtest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from reproduce import THRESHOLDS, experiments, md_table  # noqa: E402

# verdict categories of one condition on one run
HOLDS, FAILS, UNDECIDED, NA = "holds", "fails", "undecided", "n/a"
VERDICTS = (HOLDS, FAILS, UNDECIDED, NA)
FAMILIES = ("linear", "tanh", "relu", "batchnorm")
# the conditions of the first round, against which two_phase is compared
OLD_GEOMETRIC = ("zero_residual_gauss", "zero_residual_gauss_per_example", "acute_tangents", "acute_tangents_per_example",
                 "stationary_pairwise", "stationary_curvature")
# implied-by relations that every verdict should respect (A holds ⇒ B does not fail), see statements.py
IMPLICATIONS = (
    ("zero_residual_gauss_per_example", "acute_tangents_per_example"),
    ("acute_tangents_per_example", "acute_tangents"),
    ("stationary_curvature", "stationary_pairwise"),
)
CENSUS_VERSION = 1  # bump when the cached per-run record changes shape
# relative cost of one census check (the digits autoencoder's Gauss length dominates: 1797 × 64 outputs)
COST = {"deep_linear": 0, "diabetes": 1, "teacher": 1, "digits_ae": 9}


# ----------------------------------------------------------------------------- small helpers


def wilson(k: int, n: int) -> tuple[float, float]:
    """Wilson score 95 % interval for k successes in n trials (nan, nan for n = 0)."""
    if n <= 0:
        return math.nan, math.nan
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def frac(k: int, n: int) -> str:
    """'k/n = p [lo, hi]' with the Wilson 95 % interval."""
    if n == 0:
        return f"{k}/0"
    lo, hi = wilson(k, n)
    return f"{k}/{n} = {k / n:.2f} [{lo:.2f}, {hi:.2f}]"


def _f(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _b(v: Any) -> bool | None:
    """A bool from a row value that may have gone through CSV ('True', 'False', '')."""
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, str):
        return {"true": True, "false": False}.get(v.strip().lower())
    return bool(v)


def family(arch: str) -> str:
    """linear (linear / deep linear), batchnorm (any MLP with BatchNorm), else the MLP's activation."""
    from mli_theory.inputs.arch import parse_arch

    spec = parse_arch(arch)
    if spec.kind in ("linear", "deep_linear"):
        return "linear"
    if spec.batchnorm:
        return "batchnorm"
    return str(spec.activation or spec.kind)


def library_fingerprint() -> str:
    """sha1 of every .py file of the mli_theory package (path and content)."""
    from mli_theory.runs.sweep import library_fingerprint as fingerprint

    return fingerprint()


def git_state() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "mli_theory"], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        return f"{head}{' + uncommitted changes under mli_theory/' if dirty else ''}"
    except Exception:  # noqa: BLE001 - provenance only
        return "unknown"


def short_reason(reason: str | None) -> str:
    """A reason with numbers masked, for grouping (n.a. reasons and overrules)."""
    if not reason:
        return ""
    text = re.sub(r"[-+]?\d+(\.\d+)?(e[-+]?\d+)?", "#", reason)
    return text[:220]


# ----------------------------------------------------------------------------- the runs


def census_configs(quick: bool) -> dict[str, list]:
    """The MSE experiments of reproduce.py (quick: the first run of each experiment × arch of the quick grid)."""
    out = {}
    for name, cfgs in experiments(quick).items():
        cfgs = [c for c in cfgs if c.loss == "mse"]
        if not cfgs:
            continue
        if quick:
            seen, keep = set(), []
            for c in cfgs:
                key = c.arch
                if key not in seen and c.seed == 0:
                    seen.add(key)
                    keep.append(c)
            cfgs = keep
        out[name] = cfgs
    return out


def _census_check(task: tuple) -> dict[str, Any]:
    """Worker: the full check of one trained run (geometry + certify), written to ``out_json``."""
    folder, arch, data, loss, out_json, settings = task
    import torch

    torch.set_num_threads(1)
    from mli_theory.check import check
    from mli_theory.inputs.arch import build_model, parse_arch
    from mli_theory.inputs.checkpoint import load_state_dict
    from mli_theory.inputs.data import load_data

    record: dict[str, Any] = {"settings": settings, "folder": folder}
    t0 = time.perf_counter()
    try:
        result = check(
            build_model(parse_arch(arch)),
            load_state_dict(os.path.join(folder, "init.pt")),
            load_state_dict(os.path.join(folder, "final.pt")),
            load_data(data, loss),
            alphas=settings["alphas"],
            geometry=True,
            certify=True,
            certify_budget=settings["certify_budget"],
            bn=settings["bn"],
            dtype=torch.float32,
        ).to_dict()
        result.pop("accuracies", None)
        record.update(check_status="ok", result=result)
    except Exception as exc:  # recorded, never dropped
        record.update(check_status="failed", error=f"{type(exc).__name__}: {str(exc)[:500]}")
    record["check_seconds"] = round(time.perf_counter() - t0, 3)
    os.makedirs(os.path.dirname(out_json), exist_ok=True)
    tmp = out_json + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f)
    os.replace(tmp, out_json)
    return record


def _load_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def run_census(
    configs: dict[str, list], root: str, *, jobs: int = 2, budget: float = 10.0, bn: str = "recompute", alphas: int = 50,
    force: bool = False, only: list[str] | None = None, log=sys.stderr, train_only: bool = False, deadline_s: float | None = None,
) -> tuple[list[dict], dict]:
    """Train (sweep runner, ``root/<experiment>/``) and check (census check, cached in ``root/census/``)
    every run of ``configs`` (experiment -> TrainConfigs); return the census rows and timings.

    Checks run cheapest experiment first, and within one experiment seed by seed, in batches of
    ``3·jobs``; after ``deadline_s`` seconds no new batch starts (the rest is reported as not checked,
    and a rerun resumes from the cache)."""
    from mli_theory.runs.executors import ExecutorOptions, execute
    from mli_theory.runs.sweep import run_id, run_sweep

    fingerprint = library_fingerprint()
    settings = {"certify_budget": budget, "bn": bn, "alphas": alphas, "fingerprint": fingerprint, "version": CENSUS_VERSION}
    timing: dict[str, Any] = {"fingerprint": fingerprint}
    start = time.perf_counter()

    t0 = time.perf_counter()
    trained: list[tuple[str, Any, dict]] = []  # (experiment, config, sweep row)
    for name, cfgs in configs.items():
        if only and name not in only:
            continue
        # train (and a light check without geometry: the census check below computes it)
        rows = run_sweep(cfgs, os.path.join(root, name), jobs=jobs, alphas=alphas, geometry=False, log=log)
        by_id = {r["id"]: r for r in rows}
        for c in cfgs:
            trained.append((name, c, by_id.get(run_id(c), {"id": run_id(c), "status": "missing"})))
    timing["train_s"] = time.perf_counter() - t0
    if train_only:
        timing["check_s"] = 0.0
        return [census_row(name, c, row, None) for name, c, row in trained], timing

    t1 = time.perf_counter()
    tasks, records, order = [], {}, []
    for name, c, row in trained:
        folder = os.path.join(root, name, "runs", row["id"])
        out_json = os.path.join(root, "census", f"{row['id']}.json")
        cached = _load_json(out_json)
        if cached is not None and cached.get("settings") == settings and not force:
            records[row["id"]] = cached
            continue
        meta = _load_json(os.path.join(folder, "config.json")) or {}
        if not os.path.isfile(os.path.join(folder, "final.pt")) or meta.get("diverged", True):
            continue  # not trained, or diverged: no check
        tasks.append((folder, c.arch, c.data, c.loss, out_json, settings))
        order.append((COST.get(name, 1), c.seed, len(order)))
    tasks = [tasks[i] for *_, i in sorted(order)]
    if log:
        log.write(f"census checks: {len(trained)} runs, {len(records)} cached, {len(tasks)} to check on {jobs} process(es) "
                  f"(budget {budget:g} s, bn={bn}, library {fingerprint})\n")
    done, skipped, batch = 0, 0, max(1, 3 * jobs)
    for b in range(0, len(tasks), batch):
        if deadline_s is not None and time.perf_counter() - start > deadline_s:
            skipped = len(tasks) - b
            if log:
                log.write(f"census checks: deadline of {deadline_s:.0f} s passed; {skipped} runs left unchecked (rerun to resume)\n")
            break
        for task, rec in execute(_census_check, tasks[b:b + batch], ExecutorOptions("local", jobs=jobs), root):
            if isinstance(rec, BaseException):
                rec = {"settings": settings, "check_status": "failed", "error": f"lost: {type(rec).__name__}: {rec}"}
            records[os.path.basename(task[4])[:-5]] = rec
            done += 1
            if log:
                r = rec.get("result") or {}
                log.write(f"  [{done}/{len(tasks)}] {os.path.basename(task[0])} {task[1]}: {rec.get('check_status')} "
                          f"in {rec.get('check_seconds', 0):.1f} s, certificate {(r.get('certificate') or {}).get('status')}\n")
                log.flush()
    timing["check_s"] = time.perf_counter() - t1
    timing["unchecked_deadline"] = skipped

    rows = [census_row(name, c, row, records.get(row["id"])) for name, c, row in trained]
    return rows, timing


def census_row(experiment: str, config: Any, sweep_row: dict, record: dict | None) -> dict[str, Any]:
    """One flat census row from the sweep row and the census check record."""
    row: dict[str, Any] = {
        "id": sweep_row.get("id"),
        "experiment": experiment,
        "arch": config.arch,
        "family": family(config.arch),
        "optimizer": config.optimizer,
        "lr": config.lr,
        "seed": config.seed,
        "epochs": config.epochs,
        "train_loss": sweep_row.get("train_loss"),
        "train_status": sweep_row.get("status"),
    }
    tl = _f(sweep_row.get("train_loss"))
    row["converged"] = experiment in THRESHOLDS and sweep_row.get("status") in ("ok", "failed") and tl < THRESHOLDS[experiment]
    if record is None:
        if sweep_row.get("status") == "missing":
            row["check_status"] = "missing"
        elif sweep_row.get("status") == "diverged":
            row["check_status"] = "not checked (diverged)"
        else:
            row["check_status"] = "not checked (yet)"
        return row
    row["check_status"] = record.get("check_status")
    row["check_seconds"] = record.get("check_seconds")
    if record.get("check_status") != "ok":
        row["check_error"] = record.get("error")
        return row
    res = record["result"]
    info = res.get("info") or {}
    cert = res.get("certificate") or {}
    rise = _f(res.get("max_rise"))
    rounding = _f(info.get("rounding_level"))
    row.update(
        max_rise=rise,
        rounding_level=rounding,
        monotone_on_grid=res.get("monotone_on_grid"),
        grid=grid_class(rise, rounding),
        certificate=cert.get("status"),
        certificate_method=cert.get("method"),
        certified_rise=cert.get("rise"),
        rise_bound=cert.get("rise_bound"),
        certificate_reason=(cert.get("reason") or "")[:200],
        path_kind=info.get("path_kind"),
        bn_policy=info.get("bn"),
        gauss_length=res.get("gauss_length"),
        gauss_converged=info.get("gauss_converged"),
        curve_s=(info.get("timings") or {}).get("curve_s"),
        geometry_s=(info.get("timings") or {}).get("geometry_s"),
        certify_s=(info.get("timings") or {}).get("certify_s"),
        warnings=" | ".join(w[:160] for w in res.get("warnings") or []),
    )
    for c in res.get("conditions") or []:
        name = c["name"]
        row[f"c_{name}"] = verdict(c)
        row[f"c_{name}_proven"] = bool(c.get("proven"))
        row[f"c_{name}_value"] = c.get("value")
        row[f"c_{name}_note"] = note(c)
        row[f"c_{name}_reason"] = (c.get("reason") or "")[:300]
    return row


def verdict(c: dict) -> str:
    """``holds``/``fails`` from the proven verdict (``holds``) or, when there is none, from the grid
    evidence (``on_grid``); the ``_proven`` column tells them apart."""
    if not c.get("applicable", True):
        return NA
    found = c.get("holds") if c.get("holds") is not None else c.get("on_grid")
    return {True: HOLDS, False: FAILS}.get(found, UNDECIDED)


def note(c: dict) -> str:
    """How a verdict came about when the check overruled it."""
    reason = c.get("reason") or ""
    if reason.startswith("withdrawn"):
        return "withdrawn (grid rise)"
    if reason.startswith("disproven: the loss provably rises"):
        return "disproven (certificate non_monotone)"
    return ""


def grid_class(rise: float, rounding: float) -> str:
    """flat (Δ = 0), rounding (0 < Δ ≤ rounding level of the float32 evaluation), rises (above it)."""
    if not math.isfinite(rise):
        return "?"
    if rise <= 0:
        return "flat"
    if math.isfinite(rounding) and rise <= rounding:
        return "rounding"
    return "rises"


def rising(row: dict) -> bool:
    """The loss provably rises (certificate) or rises on the grid above rounding."""
    return row.get("certificate") == "non_monotone" or row.get("grid") == "rises"


# ----------------------------------------------------------------------------- tables


def condition_names(rows: list[dict]) -> list[str]:
    names = {k[2:] for r in rows for k in r if k.startswith("c_") and not k.endswith(("_proven", "_value", "_note", "_reason"))}
    try:
        from mli_theory.theory.statements import STATEMENTS

        order = list(STATEMENTS)
    except Exception:  # noqa: BLE001
        order = []
    return sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n))


def violations(rows: list[dict]) -> list[dict]:
    """(run, condition) pairs where the condition holds and the loss rises: must be empty."""
    out = []
    for r in checked(rows):
        if not rising(r):
            continue
        for name in condition_names([r]):
            if r.get(f"c_{name}") == HOLDS:
                out.append({"id": r["id"], "experiment": r["experiment"], "arch": r["arch"], "optimizer": r["optimizer"], "lr": r["lr"],
                            "seed": r["seed"], "condition": name, "proven": _b(r.get(f"c_{name}_proven")), "max_rise": r.get("max_rise"),
                            "rounding_level": r.get("rounding_level"), "certificate": r.get("certificate")})
    return out


def checked(rows: Iterable[dict]) -> list[dict]:
    return [r for r in rows if r.get("check_status") == "ok"]


def tabulate(rows: list[dict], meta: dict[str, Any] | None = None) -> str:
    """The markdown tables of the census (rows as produced by :func:`census_row`, or read back from CSV)."""
    meta = meta or {}
    ok = checked(rows)
    names = condition_names(ok)
    L: list[str] = ["# Census of the MSE sufficient conditions on the sweep", ""]
    if meta:
        L += ["Settings: " + "; ".join(f"{k} = {v}" for k, v in meta.items()) + ".", ""]
    L += [
        "Every MSE run of the sweep, checked with `check(geometry=True, certify=True)`. Verdicts: **holds** "
        "(proven, or on the α grid: evidence), **fails** (incl. a grid \"holds\" withdrawn because the measured "
        "loss rose, and all conditions of a proven non-monotone run), **undecided** (applicable, but no verdict: "
        "the exact method ran out of budget or the grid value was indeterminate), **n/a** (the traced model does "
        "not satisfy the condition's hypotheses). Grid: *flat* Δ = 0, *rounding* 0 < Δ ≤ the float32 rounding "
        "level, *rises* Δ above it. Fractions: k/n = p [Wilson 95 % interval].",
        "",
    ]

    # ---- overview
    status = Counter(r.get("check_status") for r in rows)
    L += ["## Runs", "", f"{len(rows)} runs; check status: " + ", ".join(f"{k}: {v}" for k, v in sorted(status.items(), key=str)) + ".", ""]
    ov = []
    for fam in FAMILIES + tuple(sorted({r.get('family') for r in ok} - set(FAMILIES), key=str)):
        rs = [r for r in ok if r.get("family") == fam]
        if not rs:
            continue
        exps = ", ".join(sorted({r["experiment"] for r in rs}))
        g = Counter(r.get("grid") for r in rs)
        ce = Counter(r.get("certificate") for r in rs)
        ov.append([fam, exps, len(rs), sum(bool(_b(r.get("converged"))) for r in rs), g["flat"], g["rounding"], g["rises"],
                   ce["monotone"], ce["non_monotone"], ce["unknown"]])
    g = Counter(r.get("grid") for r in ok)
    ce = Counter(r.get("certificate") for r in ok)
    ov.append(["**all**", "", len(ok), sum(bool(_b(r.get("converged"))) for r in ok), g["flat"], g["rounding"], g["rises"], ce["monotone"], ce["non_monotone"], ce["unknown"]])
    L += [md_table(["family", "experiments", "checked", "converged", "grid flat", "grid rounding", "grid rises", "cert. monotone", "cert. non-monotone", "cert. unknown"], ov), ""]
    secs = [_f(r.get("check_seconds")) for r in ok]
    secs = [s for s in secs if math.isfinite(s)]
    if secs:
        L += [f"Census check time: {sum(secs):.0f} s in total over {len(secs)} runs (median {sorted(secs)[len(secs) // 2]:.1f} s, "
              f"max {max(secs):.1f} s; one core each).", ""]

    # ---- violations: loud
    bad = violations(rows)
    L += ["## Soundness: conditions that hold on a run whose loss rises", ""]
    if bad:
        L += [f"**VIOLATION: {len(bad)} (run, condition) pairs say `holds` on a run whose loss rises "
              "(certificate non_monotone or grid rise above rounding). Every condition is sufficient for a "
              "non-increasing loss, so each is a bug.**", "",
              md_table(["run", "experiment", "arch", "optimizer", "lr", "seed", "condition", "proven", "grid Δ", "rounding", "certificate"],
                       [[b["id"], b["experiment"], b["arch"], b["optimizer"], b["lr"], b["seed"], b["condition"], b["proven"], _f(b["max_rise"]),
                         _f(b["rounding_level"]), b["certificate"]] for b in bad]), ""]
    else:
        n_rise = sum(rising(r) for r in ok)
        L += [f"**None.** No condition says `holds` on any of the {n_rise} runs whose loss rises (certificate non_monotone "
              "or grid rise above rounding).", ""]
    soft = [(r, n) for r in ok if r.get("grid") == "rounding" and r.get("certificate") != "non_monotone" for n in names if r.get(f"c_{n}") == HOLDS]
    if soft:
        L += [f"Holds on a run whose grid rise is within float32 rounding (not a contradiction; listed for completeness): "
              f"{len(soft)} pairs on {len({r['id'] for r, _ in soft})} runs ("
              + ", ".join(f"{n}: {c}" for n, c in Counter(n for _, n in soft).most_common()) + ").", ""]
    contra = [r for r in ok if r.get("certificate") == "monotone" and r.get("grid") == "rises"]
    if contra:
        L += [f"**Certificate monotone but grid rise above rounding on {len(contra)} runs: "
              + ", ".join(f"{r['id']} (Δ = {_f(r['max_rise']):.3g})" for r in contra) + ".**", ""]

    # ---- per condition, all runs
    L += ["## Per condition (all checked runs)", ""]
    tab = []
    for n in names:
        v = Counter(r.get(f"c_{n}", "") for r in ok)
        proven_h = sum(r.get(f"c_{n}") == HOLDS and _b(r.get(f"c_{n}_proven")) for r in ok)
        proven_f = sum(r.get(f"c_{n}") == FAILS and _b(r.get(f"c_{n}_proven")) for r in ok)
        withdrawn = sum(r.get(f"c_{n}_note") == "withdrawn (grid rise)" for r in ok)
        by_cert = sum(r.get(f"c_{n}_note") == "disproven (certificate non_monotone)" for r in ok)
        app = v[HOLDS] + v[FAILS] + v[UNDECIDED]
        tab.append([n, len(ok), app, f"{v[HOLDS]} ({proven_h} / {v[HOLDS] - proven_h})", f"{v[FAILS]} ({proven_f} / {v[FAILS] - proven_f})",
                    withdrawn, by_cert, v[UNDECIDED], v[NA], v[""], frac(v[HOLDS], len(ok)), frac(v[HOLDS], app)])
    L += [md_table(["condition", "runs", "applicable", "holds (proven / grid)", "fails (proven / grid)", "of which: grid holds withdrawn",
                    "of which: by non-monotone cert.", "undecided", "n/a", "absent", "holds / runs", "holds / applicable"], tab), ""]
    L += ["*absent*: the check did not report the condition for that run (e.g. `linear_in_theta` only exists for affine paths).", ""]

    # ---- per condition × family
    L += ["## Per condition and architecture family: holds / applicable (n/a)", ""]
    fams = [f for f in FAMILIES if any(r.get("family") == f for r in ok)] + sorted({r.get("family") for r in ok} - set(FAMILIES), key=str)
    tab = []
    for n in names:
        line = [n]
        for fam in fams:
            rs = [r for r in ok if r.get("family") == fam]
            v = Counter(r.get(f"c_{n}", "") for r in rs)
            app = v[HOLDS] + v[FAILS] + v[UNDECIDED]
            line.append(f"{v[HOLDS]}/{app} ({v[NA]})" + (f", {v[UNDECIDED]} undec." if v[UNDECIDED] else ""))
        tab.append(line)
    L += [md_table(["condition"] + [f"{f} (n = {sum(r.get('family') == f for r in ok)})" for f in fams], tab), ""]

    # ---- converged only
    conv = [r for r in ok if _b(r.get("converged"))]
    if conv:
        L += [f"## Per condition, converged runs only (n = {len(conv)}; thresholds {THRESHOLDS})", ""]
        tab = []
        for n in names:
            v = Counter(r.get(f"c_{n}", "") for r in conv)
            app = v[HOLDS] + v[FAILS] + v[UNDECIDED]
            tab.append([n, app, v[HOLDS], v[FAILS], v[UNDECIDED], v[NA], frac(v[HOLDS], len(conv)), frac(v[HOLDS], app)])
        L += [md_table(["condition", "applicable", "holds", "fails", "undecided", "n/a", "holds / runs", "holds / applicable"], tab), ""]

    # ---- n/a reasons
    L += ["## Why not applicable (most common reasons, numbers masked as #)", ""]
    tab = []
    for n in names:
        reasons = Counter(short_reason(r.get(f"c_{n}_reason")) for r in ok if r.get(f"c_{n}") == NA)
        for reason, k in reasons.most_common(3):
            fams_r = Counter(r.get("family") for r in ok if r.get(f"c_{n}") == NA and short_reason(r.get(f"c_{n}_reason")) == reason)
            tab.append([n, k, ", ".join(f"{f}: {c}" for f, c in sorted(fams_r.items(), key=str)), reason.replace("|", "/")])
    L += [md_table(["condition", "runs", "families", "reason"], tab) if tab else "No condition was ever not applicable.", ""]

    # ---- crossed with monotonicity
    L += ["## Verdict × monotonicity", "",
          "Each cell: runs with that verdict and that monotonicity class (grid class | certificate).", ""]
    tab = []
    for n in names:
        for vv in VERDICTS:
            rs = [r for r in ok if r.get(f"c_{n}") == vv]
            if not rs:
                continue
            g = Counter(r.get("grid") for r in rs)
            ce = Counter(r.get("certificate") for r in rs)
            tab.append([n, vv, len(rs), g["flat"], g["rounding"], g["rises"], ce["monotone"], ce["non_monotone"], ce["unknown"]])
    L += [md_table(["condition", "verdict", "runs", "grid flat", "grid rounding", "grid rises", "cert. monotone", "cert. non-monotone", "cert. unknown"], tab), ""]

    # ---- two_phase against the others
    if "two_phase" in names:
        L += ["## two_phase against the other conditions", "",
              "Over runs where both are applicable: both hold / only two_phase / only the other / neither holds "
              "(undecided counts as not holding).", ""]
        tab = []
        for n in names:
            if n == "two_phase":
                continue
            both_app = [r for r in ok if r.get("c_two_phase") not in (NA, "", None) and r.get(f"c_{n}") not in (NA, "", None)]
            t = [r.get("c_two_phase") == HOLDS for r in both_app]
            o = [r.get(f"c_{n}") == HOLDS for r in both_app]
            tab.append([n, len(both_app), sum(a and b for a, b in zip(t, o)), sum(a and not b for a, b in zip(t, o)),
                        sum(b and not a for a, b in zip(t, o)), sum(not a and not b for a, b in zip(t, o))])
        L += [md_table(["other condition", "both applicable", "both hold", "only two_phase", "only other", "neither"], tab), ""]
        old = [n for n in OLD_GEOMETRIC if n in names]
        mono = [r for r in ok if r.get("certificate") == "monotone" or (r.get("certificate") != "non_monotone" and r.get("grid") == "flat")]

        def any_holds(r: dict, conds: Iterable[str]) -> bool:
            return any(r.get(f"c_{c}") == HOLDS for c in conds)

        tp_only = [r for r in ok if r.get("c_two_phase") == HOLDS and not any_holds(r, old)]
        L += [f"two_phase holds on {sum(r.get('c_two_phase') == HOLDS for r in ok)} runs; on {len(tp_only)} of them none of the "
              f"first-round conditions ({', '.join(old)}) holds"
              + (" (" + ", ".join(f"{k}: {c}" for k, c in sorted(Counter(r['family'] for r in tp_only).items())) + ")" if tp_only else "") + ".", ""]
        cov = []
        for label, conds in (("first-round conditions (a)–(c)", old), ("(a)–(c) + two_phase", old + ["two_phase"]),
                             ("two_phase alone", ["two_phase"]), ("grid_slope alone", ["grid_slope"]),
                             ("any condition", names)):
            line = [label]
            for fam in fams + ["all"]:
                rs = [r for r in mono if fam == "all" or r.get("family") == fam]
                line.append(frac(sum(any_holds(r, conds) for r in rs), len(rs)))
            cov.append(line)
        L += ["Coverage: of the monotone runs (certificate monotone, or grid flat and not certified non-monotone), the fraction "
              "explained by at least one holding condition of each set:", "",
              md_table(["conditions"] + fams + ["all"], cov), ""]

    # ---- implications
    imp = []
    for a, b in IMPLICATIONS:
        if a in names and b in names:
            k = [r["id"] for r in ok if r.get(f"c_{a}") == HOLDS and r.get(f"c_{b}") == FAILS]
            imp.append([f"{a} ⇒ {b}", sum(r.get(f"c_{a}") == HOLDS for r in ok), len(k), ", ".join(k[:5])])
    if imp:
        L += ["## Implications between conditions (A holds but B fails would contradict statements.py)", "",
              md_table(["implication", "A holds", "A holds, B fails", "runs (first 5)"], imp), ""]
    return "\n".join(L)


# ----------------------------------------------------------------------------- I/O


def write_rows(rows: list[dict], path: str) -> None:
    from mli_theory.runs.sweep import write_csv

    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_csv(rows, path)


def read_rows(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return [dict(r) for r in csv.DictReader(f)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one run per experiment × arch of the quick grid (< 5 min)")
    ap.add_argument("--jobs", type=int, default=2, help="parallel processes (default 2)")
    ap.add_argument("--certify-budget", type=float, default=None, help="seconds of proof work per check (default 10; quick: 5)")
    ap.add_argument("--bn", default="recompute", help="BatchNorm policy of the check (default recompute)")
    ap.add_argument("--alphas", type=int, default=50, help="α grid of the check (default 50, as the sweep)")
    ap.add_argument("--only", nargs="*", help="only these experiments")
    ap.add_argument("--force", action="store_true", help="redo every census check (training is still resumed)")
    ap.add_argument("--tables-only", action="store_true", help="rebuild tables.md from an existing census.csv")
    ap.add_argument("--train-only", action="store_true", help="only train (sweep runner); no census check, no tables")
    ap.add_argument("--deadline-min", type=float, default=None, help="start no new batch of checks after this many minutes")
    ap.add_argument("--out", default=None, help="results folder (default experiments/results/conditions[/quick])")
    args = ap.parse_args(argv)
    out = args.out or os.path.join(HERE, "results", "conditions", *(["quick"] if args.quick else []))
    csv_path, md_path = os.path.join(out, "census.csv"), os.path.join(out, "tables.md")
    if args.tables_only:
        rows = read_rows(csv_path)
        meta = {}
    else:
        budget = args.certify_budget if args.certify_budget is not None else (5.0 if args.quick else 10.0)
        t0 = time.perf_counter()
        root = os.path.join(HERE, "out", "conditions", "quick" if args.quick else "full")
        rows, timing = run_census(census_configs(args.quick), root, jobs=args.jobs, budget=budget, bn=args.bn, alphas=args.alphas,
                                  force=args.force, only=args.only, train_only=args.train_only,
                                  deadline_s=None if args.deadline_min is None else 60 * args.deadline_min)
        wall = time.perf_counter() - t0
        if args.train_only:
            print(f"trained {len(rows)} runs in {wall:.0f} s", file=sys.stderr)
            return 0
        meta = {"mode": "quick" if args.quick else "full", "certify budget": f"{budget:g} s", "bn": args.bn, "α grid": args.alphas,
                "dtype": "float32", "library": f"git {git_state()}, source fingerprint {timing['fingerprint']}",
                "wall time of this invocation": f"{wall:.0f} s (training {timing['train_s']:.0f} s, checks {timing['check_s']:.0f} s, {args.jobs} process(es))"}
        if timing.get("unchecked_deadline"):
            meta["unchecked (deadline)"] = f"{timing['unchecked_deadline']} runs"
        if library_fingerprint() != timing["fingerprint"]:
            meta["warning"] = "the library source changed while the census ran (some runs may have been checked with the newer code)"
        write_rows(rows, csv_path)
        with open(os.path.join(out, "meta.json"), "w") as f:
            json.dump(meta, f, indent=1)
    if args.tables_only and os.path.isfile(os.path.join(out, "meta.json")):
        meta = _load_json(os.path.join(out, "meta.json")) or {}
    text = tabulate(rows, meta)
    with open(md_path, "w") as f:
        f.write(text + "\n")
    print(text)
    bad = violations(rows)
    if bad:
        print(f"\n!!! VIOLATION: {len(bad)} (run, condition) pairs hold on a run whose loss rises; see {md_path}", file=sys.stderr)
    print(f"\nwrote {csv_path} and {md_path}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
