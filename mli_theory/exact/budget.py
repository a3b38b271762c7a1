"""Time budgets for proof work: one deadline shared by everything a ``check`` proves."""

from __future__ import annotations

import time


class BudgetExceeded(RuntimeError):
    """The proof work ran past its time budget."""


def deadline_after(seconds: float | None) -> float | None:
    """The ``time.perf_counter()`` value ``seconds`` from now (None: no limit)."""
    return None if seconds is None else time.perf_counter() + seconds


def expired(deadline: float | None) -> bool:
    """Whether ``deadline`` has passed."""
    return deadline is not None and time.perf_counter() > deadline


def check_deadline(deadline: float | None) -> None:
    """Raise :class:`BudgetExceeded` once ``deadline`` has passed."""
    if expired(deadline):
        raise BudgetExceeded("the proof work ran past its time budget (certify_budget)")
