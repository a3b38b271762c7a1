from hypothesis import given
from hypothesis import strategies as st
from mli_theory.testing.strategies import rises

from mli_theory.path import max_rise


def max_rise_bruteforce(values):
    """O(K²) reference for max_rise: the definition, literally."""
    vals = [float(v) for v in values]
    return max([0.0] + [vals[j] - vals[i] for i in range(len(vals)) for j in range(i + 1, len(vals))])


@given(rises())
def test_max_rise_equals_bruteforce(values):
    r = max_rise(values)
    assert r.value == max_rise_bruteforce(values)
    if r.value > 0:
        assert r.start < r.end
        assert values[r.end] - values[r.start] == r.value


@given(rises())
def test_non_increasing_sequence_has_zero_rise(values):
    seq = sorted(values, reverse=True)
    r = max_rise(seq)
    assert r.value == 0.0 and r.start is None and r.end is None


@given(st.lists(st.integers(-1000, 1000), min_size=1, max_size=40), st.integers(-10**6, 10**6))
def test_invariant_to_adding_a_constant(values, c):
    # integers keep the arithmetic exact, so the invariance is exact too
    assert max_rise([float(v + c) for v in values]).value == max_rise([float(v) for v in values]).value


def test_rise_in_the_last_step_only_counts():
    r = max_rise([5.0, 4.0, 3.0, 2.0, 2.5])
    assert r.value == 0.5 and (r.start, r.end) == (3, 4)


def test_worst_rise_is_over_the_whole_grid_not_one_bump():
    # two bumps: the largest rise spans a dip and a later, higher peak
    r = max_rise([3.0, 1.0, 2.0, 0.5, 2.5])
    assert r.value == 2.0 and (r.start, r.end) == (3, 4)
    assert max_rise([1.0, 0.0, 0.5, 0.4, 0.9]).value == 0.9
