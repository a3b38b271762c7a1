"""The MSE conditions proven by enclosures on trained smooth networks: how many, and at what cost.

    python benchmarks/condition_proofs.py [--seeds 6] [--threads 2]

Trains (full-batch gradient descent, :func:`mli_theory.testing.strategies.build_problem`) tanh and
GELU MLPs 8-32-32-3 on 64 teacher examples (MSE), from θ0 at scale 1 and 2, for 400 and 3000 steps,
``--seeds`` seeds each, and proves every condition of :data:`mli_theory.certify.conditions.PROVERS`
on each path (after the differential validation, as ``check --certify`` does). Prints per condition
how often it was proven, disproven and left undecided, with the seconds, and, for (f) ``two_phase``,
how often its simple form alone (‖r‖ ≤ cos G·‖z(1) − z(c)‖ on the 32-cell tube: what the library
proved before the full form) would have proven it. Also prints the certificate's status of each path
(`monotone` by the first-order partition) so the conditions can be read against it. Load average
before and after: take the figures on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch

    import mli_theory as mt
    from mli_theory.certify import conditions as C
    from mli_theory.certify.partition import decide_by_enclosures, prepare
    from mli_theory.path import BNPolicy
    from mli_theory.testing.strategies import build_problem

    torch.set_num_threads(args.threads)
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    grid = [i / 49 for i in range(50)]
    counts: Counter = Counter()
    seconds: Counter = Counter()
    simple_only = full = paths = 0
    mono = Counter()
    for act in ("tanh", "gelu"):
        for scale in (1.0, 2.0):
            for steps in (400, 3000):
                for seed in range(args.seeds):
                    p = build_problem([8, 32, 32, 3], 64, seed, scale, "trained", activation=act, steps=steps)
                    line = mt.make_line(p.model, p.init, p.final, dtype=torch.float64)
                    paths += 1
                    v = decide_by_enclosures(line, p.data, tol=0.0, bn=BNPolicy.FROZEN, deadline=time.perf_counter() + 60)
                    mono[v.status] += 1
                    t = time.perf_counter()
                    verdicts, _ = C.prove_by_enclosures(line, p.data, grid, bn=BNPolicy.FROZEN)
                    seconds["all conditions"] += time.perf_counter() - t
                    for name, verdict in verdicts.items():
                        counts[(name, {True: "proven", False: "disproven", None: "undecided"}[verdict])] += 1
                    # the simple form alone, as before the full form (32 cells, smallest split with L″ ≥ 0)
                    problem = prepare(line, p.data, BNPolicy.FROZEN)
                    lo1, hi1 = C.enclose(problem, [1.0], [1.0])[0][0]
                    tube = C._tube(problem, C.SPLIT_CELLS, None, pairs=False)
                    ok_from = C._convex_from(tube)
                    old = hi1 <= 0 and ok_from < tube.k and (ok_from == 0 or C._two_phase_simple(problem, tube, ok_from, None))
                    simple_only += bool(old)
                    full += verdicts.get("two_phase") is True
                    print(f"{act} scale {scale} steps {steps} seed {seed}: certificate {v.status}; "
                          + ", ".join(f"{n} {verdicts[n]}" for n in verdicts), flush=True)
    print(f"\n{paths} paths (tanh and GELU 8-32-32-3, 64 teacher examples, MSE); certificates at T = 0: {dict(mono)}")
    print("| condition | proven | disproven | undecided |\n|---|---|---|---|")
    for name in C.PROVERS:
        print(f"| {name} | {counts[(name, 'proven')]} | {counts[(name, 'disproven')]} | {counts[(name, 'undecided')]} |")
    print(f"\ntwo_phase: full form {full}/{paths} proven, the simple form alone {simple_only}/{paths}")
    print(f"every condition on all paths: {seconds['all conditions']:.1f} s ({seconds['all conditions'] / paths:.2f} s per path, "
          f"validation included)")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
