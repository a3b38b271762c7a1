"""In-place arithmetic in a forward (``out += identity``) against its fx trace, and what a forward returns.

fx traces ``out += y`` as ``out + y`` (a proxy has no in-place operators), so the trace runs
``aten.add`` where the forward runs ``aten.add_``. The two compute the same when nothing else reads
the memory the forward wrote; the comparison (:mod:`mli_theory.path.fidelity`) now accepts exactly
those (torchvision's BasicBlock writes its residual sum that way) and refuses every forward whose
in-place write is seen elsewhere: an alias, a view or a detached copy taken before the write, a slice
written into its base, a write into the input or the state, a dtype the in-place form keeps.

Each variant's verdict is checked against what it does: the refused ones compute other values when
run than when traced (checked here, so the refusal is needed), the accepted ones the same values.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from mli_theory import Dataset, check
from mli_theory.path.fidelity import trace_differs

F64 = torch.float64


class _Twin(nn.Module):
    """Two linear maps of the input and one of eight forwards that combine them, some in place."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.l1, self.l2 = nn.Linear(3, 4), nn.Linear(3, 4)

    def forward(self, x):  # noqa: C901 - one branch per variant
        how, out = self.how, self.l1(x)
        if how == "fresh":
            out += self.l2(x)
            return torch.relu(out)
        if how == "fresh, in-place ReLU":
            out += self.l2(x)
            return F.relu(out, inplace=True)
        if how == "chain":
            out *= 2.0
            out -= self.l2(x)
            out /= 3.0
            return out
        if how == "squared in place":  # the written tensor is its own argument, entry for entry
            out *= out
            return out
        if how == "memory swapped in":  # no operation: fx sets an attribute of a proxy
            out.data = self.l2(x)
            return out
        if how == "alias":  # the same tensor under a second name, read after the write
            keep = out
            out += self.l2(x)
            return out * keep
        if how == "view before":
            v = out[:, :2]
            out += self.l2(x)
            return out[:, :2] + v
        if how == "detached before":
            v = out.detach()
            out += self.l2(x)
            return out + v
        if how == "view detached after the write":  # a detached copy of a stale view is as stale
            v = out[:, :2]
            out += self.l2(x)
            return out[:, :2] + v.detach()
        if how == "overlapping views":  # not dense: torch cannot tell that they overlap, and adds entry by entry
            a, b = out[:, 1:], out[:, :-1]
            a += b
            return a
        if how == "slice written":
            s = out[:, :2]
            s += self.l2(x)[:, :2]
            return out
        if how == "input written":
            x += 1.0
            return self.l1(x) + self.l2(x)
        if how == "weight written":
            w = self.l2.weight
            w += 0.5
            return out + self.l2(x)
        if how == "float64 constant":
            out += torch.ones(4, dtype=F64)
            return out
        raise AssertionError(how)


ACCEPTED = ["fresh", "fresh, in-place ReLU", "chain", "squared in place"]
REFUSED = ["memory swapped in", "alias", "view before", "detached before", "view detached after the write", "overlapping views", "slice written", "input written", "weight written"]


def _state(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def _twin(how: str, dtype=F64) -> _Twin:
    torch.manual_seed(0)
    return _Twin(how).to(dtype)


def _run_and_trace(m: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        ran = torch.func.functional_call(m, _state(m), (x.clone(),))
        gm = torch.fx.symbolic_trace(m)
        held = gm.state_dict()  # (a layer the trace does not use is not in it)
        traced = torch.func.functional_call(gm, {k: v for k, v in _state(m).items() if k in held}, (x.clone(),))
    return ran, traced


@pytest.mark.parametrize("how", ACCEPTED)
def test_an_in_place_write_nothing_else_reads_is_its_trace(how):
    m, x = _twin(how), torch.randn(5, 3, dtype=F64)
    ran, traced = _run_and_trace(m, x)
    assert torch.equal(ran, traced)
    assert trace_differs(m, _state(m), x) is None


@pytest.mark.parametrize("how", REFUSED)
def test_an_in_place_write_read_through_another_tensor_is_refused(how):
    m, x = _twin(how), torch.randn(5, 3, dtype=F64)
    why = trace_differs(m, _state(m), x)
    assert why is not None and "trace" in why, why
    if how not in ("input written", "weight written"):  # those compute the same once, and change what a later call reads
        ran, traced = _run_and_trace(m, x)
        assert not torch.allclose(ran, traced)  # the refusal is needed: the trace computes something else


def test_the_dtype_an_in_place_form_keeps_is_compared():
    """float32 += float64: in place the sum stays float32, traced it is float64."""
    m, x = _twin("float64 constant", torch.float32), torch.randn(5, 3)
    ran, traced = _run_and_trace(m, x)
    assert ran.dtype == torch.float32 and traced.dtype == F64
    why = trace_differs(m, _state(m), x)
    assert why is not None and "trace" in why, why


class _Returns(nn.Module):
    """Computes a loss bump in a narrow window of α and returns it only when not traced (isinstance)."""

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2 = nn.Linear(2, 1), nn.Linear(1, 1)
        self.register_buffer("one", torch.ones(1, 1))

    def forward(self, x):
        out = self.l1(x)
        a = self.l2(self.one)  # moves from 0 to 1 along the line
        bump = torch.relu(1 - 300 * torch.relu(a - 0.537) - 300 * torch.relu(0.537 - a)) * 100
        bad = out + bump
        return bad if isinstance(x, torch.Tensor) else out


def test_a_forward_that_returns_another_of_its_results_when_not_traced_gets_no_certificate():
    """The same operations, another tensor returned: before, only the operations were compared, and
    this was certified monotone (bound 9e-17) where the curve rises by 10⁴ near α = 0.537."""
    m = _Returns().to(F64)
    zero = {"l1.weight": torch.zeros(1, 2), "l1.bias": torch.zeros(1), "l2.weight": torch.zeros(1, 1),
            "l2.bias": torch.zeros(1), "one": torch.ones(1, 1)}
    one = {**zero, "l1.weight": torch.tensor([[0.5, 0.4]]), "l2.weight": torch.ones(1, 1)}
    init, final = ({k: v.to(F64) for k, v in s.items()} for s in (zero, one))
    g = np.random.default_rng(0)
    x = torch.tensor(g.normal(size=(32, 2)))
    data = Dataset(x, x @ torch.tensor([[0.5], [0.4]], dtype=F64), "mse", "linear target")
    mid = {k: 0.463 * init[k] + 0.537 * final[k] for k in init}
    with torch.no_grad():
        peak = float(((torch.func.functional_call(m, mid, (x,)) - data.y) ** 2).mean())
    assert peak > 1e3  # the caller's curve rises there
    why = trace_differs(m, init, x)
    assert why is not None and "returns other tensors" in why, why
    r = check(m, init, final, data, alphas=11, tol=0.01, certify=True, dtype=F64, geometry=False, certify_budget=5.0)
    assert r.certificate.status != "monotone"


class _BasicBlock(nn.Module):
    """torchvision's BasicBlock: BN after each convolution, a projection shortcut where the shape
    changes, ``out += identity``, in-place ReLUs."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x
        if self.downsample is not None:
            identity = self.downsample(x)
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        out += identity
        return self.relu(out)


def _torchvision_style() -> nn.Module:
    return nn.Sequential(nn.Unflatten(1, (1, 4, 4)), nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(inplace=True),
                         _BasicBlock(3, 3, 1), _BasicBlock(3, 4, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))


def test_a_torchvision_basic_block_is_compared_and_certified():
    """Before, ``out += identity`` made every torchvision-style ResNet ``unknown`` (the forward runs
    add_, the trace add). A briefly trained one is now certified monotone at T = 0, and a dense
    plain-torch curve agrees."""
    torch.manual_seed(1)
    m = _torchvision_style().to(F64)
    init = _state(m)
    x = torch.rand(64, 16, dtype=F64)
    y = (x[:, :8].sum(1) > x[:, 8:].sum(1)).long()
    opt = torch.optim.Adam(m.parameters(), 0.005)
    for _ in range(60):  # BatchNorm in training mode: its statistics move too
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        opt.step()
    m.eval()
    final = _state(m)
    data = Dataset(x, y, "ce", "random 4x4 images")
    assert trace_differs(m, init, x) is None
    r = check(m, init, final, data, alphas=21, tol=0.0, certify=True, dtype=F64, geometry=False, bn="frozen",
              certify_budget=30.0)
    cert = r.certificate
    assert cert.status == "monotone", cert.reason

    def loss(a: float) -> float:  # BatchNorm frozen: θT's statistics throughout
        s = {k: (1 - a) * init[k] + a * final[k] if "running" not in k and init[k].is_floating_point() else final[k]
             for k in init}
        with torch.no_grad():
            return float(F.cross_entropy(torch.func.functional_call(m, s, (x,)), data.y))

    assert max(abs(loss(float(a)) - v) for a, v in zip(r.alphas, r.losses)) < 1e-12  # the curve check measured
    dense = np.array([loss(a) for a in np.linspace(0, 1, 2001)])
    assert float(np.max(dense - np.minimum.accumulate(dense))) <= cert.rise_bound + 1e-12  # the largest L(b) − L(a), a ≤ b


class _Evil(torch.Tensor):
    """A tensor subclass whose own code runs in every operation on it (here it only computes the
    operation, and returns plain tensors: what it returns shows nothing of it)."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **(kwargs or {}))


class _Reclassed(nn.Module):
    """Makes its output a subclass without any operation (``__class__`` assignment), when not traced."""

    def __init__(self, later: bool) -> None:
        super().__init__()
        self.later, self.lin = later, nn.Linear(2, 1)

    def forward(self, x):
        h = self.lin(x)
        if isinstance(h, torch.Tensor):
            h.__class__ = _Evil
        return h * 2.0 if self.later else h


@pytest.mark.parametrize("later", [False, True], ids=["returned", "operated on"])
def test_a_tensor_made_a_subclass_in_the_forward_is_refused(later):
    """A red team's false certificate: a forward that set ``h.__class__`` to a subclass whose
    ``__torch_function__`` moved the loss near one α was certified ``monotone`` (true rise 100): the
    subclass's code runs in the loss, outside the comparison. Returned or operated on, it is refused."""
    m = _Reclassed(later).to(F64)
    why = trace_differs(m, _state(m), torch.randn(4, 2, dtype=F64))
    assert why is not None and "_Evil" in why, why


# ----------------------------------------------------------------------------- random programs

_BINARY_IN_PLACE = ("{a} += {b}", "{a} -= {b}", "{a} *= {b}", "{a}.add_({b})", "{a}.mul_({b})", "{a}.copy_({b})",
                    "{a}.data = {b}", "{a} *= {a}")
_UNARY_IN_PLACE = ("{a} *= 2.0", "{a}.clamp_(-1.0, 1.0)", "{a}.relu_()", "F.relu({a}, inplace=True)", "{a}.zero_()")
_VIEWS = (("{a}", None), ("{a}.view(5, 4)", None), ("{a}[:]", None), ("{a}.detach()", None), ("{a}[:, :2]", (5, 2)),
          ("{a}[:, 2:]", (5, 2)), ("{a}[:, 1:3]", (5, 2)), ("{a}.t()", (4, 5)))


@st.composite
def _programs(draw) -> str:
    """The body of a forward: straight-line code over variables of known shape: two layer outputs
    (5×4), aliases, views and detached copies of them, arithmetic, and in-place operations through
    any of them (now and then on the input x itself), returning one or two variables. Aliasing
    followed by a write and a read of the other name is common: what the comparison must see."""
    lines = ["v0 = self.l1(x)", "v1 = self.l2(x)"]
    shapes = {"v0": (5, 4), "v1": (5, 4)}

    def pick() -> str:
        return "x" if draw(st.integers(0, 9)) == 0 else draw(st.sampled_from(sorted(shapes)))

    for i in range(2, 2 + draw(st.integers(1, 8))):
        name = f"v{i}"
        kind = draw(st.sampled_from(["view", "view", "in place", "in place", "in place", "unary", "arith", "layer"]))
        a = pick()
        shape_a = (5, 4) if a == "x" else shapes[a]
        if kind == "layer":
            lines.append(f"{name} = self.l{draw(st.integers(1, 2))}(x)")
            shapes[name] = (5, 4)
            continue
        if kind == "view":
            text, shape = draw(st.sampled_from(_VIEWS))
            if shape is not None and shape_a != (5, 4) or shape is None and text == "{a}.view(5, 4)" and shape_a != (5, 4):
                continue
            lines.append(f"{name} = {text.format(a=a)}")
            shapes[name] = shape or shape_a
            continue
        if kind == "unary":
            lines.append(draw(st.sampled_from(_UNARY_IN_PLACE)).format(a=a))
            continue
        same = sorted(k for k, s in shapes.items() if s == shape_a and k != a) or [a]
        b = draw(st.sampled_from(same))
        if kind == "arith":
            lines.append(f"{name} = {draw(st.sampled_from(['{a} + {b}', '{a} * 0.5', 'torch.relu({a})', '{a} * {b}'])).format(a=a, b=b)}")
            shapes[name] = shape_a
        else:
            lines.append(draw(st.sampled_from(_BINARY_IN_PLACE)).format(a=a, b=b))
    names = sorted(shapes)
    out = draw(st.sampled_from(names))
    twin = draw(st.sampled_from([None, *names]))
    lines.append(f"return {out}" if twin is None else f"return {out}, {twin}")
    return "\n".join(lines)


def _program_module(body: str) -> nn.Module:
    scope: dict = {"torch": torch, "F": F}
    exec("def forward(self, x):\n" + "\n".join("    " + line for line in body.splitlines()), scope)  # noqa: S102
    cls = type("Program", (nn.Module,), {"forward": scope["forward"]})
    m = cls()
    m.l1, m.l2 = nn.Linear(4, 4), nn.Linear(4, 4)
    return m.to(F64)


def _outputs(fn, x: torch.Tensor) -> tuple:
    out = fn(x.clone())
    return out if isinstance(out, tuple) else (out,)


@settings(max_examples=120)
@given(_programs())
def test_an_accepted_program_computes_what_its_trace_computes(body):
    """Soundness of the comparison on random straight-line programs with in-place operations,
    aliases and views: whenever it accepts a forward, the forward and its fx trace give the same
    outputs, bit for bit, with the same shapes and dtypes."""
    torch.manual_seed(0)
    m = _program_module(body)
    x = torch.randn(5, 4, dtype=F64)
    try:
        with torch.no_grad():
            ran = _outputs(m, x)
            traced = _outputs(torch.fx.symbolic_trace(m), x)
    except (RuntimeError, TypeError, AttributeError):
        assume(False)  # a program torch refuses (an in-place write that broadcasts, an overlap it sees)
    same = len(ran) == len(traced) and all(r.shape == t.shape and r.dtype == t.dtype and torch.equal(r, t)
                                           for r, t in zip(ran, traced))
    if trace_differs(m, _state(m), x) is not None:
        event("refused, " + ("computes the same" if same else "computes something else"))
        return
    event("accepted" + (" (with in-place code)" if "_" in body or "=" in body.replace(" = ", "") else ""))
    assert len(ran) == len(traced)
    for r, t in zip(ran, traced):
        assert r.shape == t.shape and r.dtype == t.dtype and torch.equal(r, t), body


def test_a_live_tensor_pointed_at_other_memory_loses_its_origin():
    """The record's own guard, below the function mode's refusal of ``.data =``: a live tensor whose
    memory, offset, shape or strides changed without an operation no longer answers to its origin."""
    from mli_theory.path.fidelity import _Recorder

    a = torch.randn(3, 2, dtype=F64)
    rec = _Recorder({"a": a})
    with rec:
        h = a * 2.0
        before = rec._origin(h)
        h.data = torch.zeros(2, 3, dtype=F64)  # (no function mode here: only the dispatch record)
        after = rec._origin(h)
    assert before == ("live", "op", 0, 0)
    assert after[:4] == before and "pointed at other memory since" in after


class _SharedBuffer(nn.Module):
    """Writes a narrow tent of α into one tensor and reads it through another over the same NumPy
    memory (two storages starting at different addresses), only when not traced; the trace makes two
    separate zero tensors. The tent is 0 at both α the comparison runs at."""

    def __init__(self) -> None:
        super().__init__()
        self.lin, self.fc = nn.Linear(1, 1), nn.Linear(2, 1)
        self.register_buffer("one", torch.ones(1, 1))

    def forward(self, x):
        a = self.lin(self.one)  # moves from 0 to 1 along the line
        w = F.relu(1 - 300 * F.relu(a - 0.537) - 300 * F.relu(0.537 - a))
        if isinstance(x, torch.Tensor):
            buf = np.zeros(2)
            first = torch.as_tensor(buf)[1:2].view(1, 1)
            second = torch.as_tensor(buf[1:]).view(1, 1)  # the same 8 bytes, through another storage
        else:  # (sizes from the input: graph nodes, not constants of the trace)
            first = torch.zeros((x.shape[1] - 1, 1), dtype=F64)
            second = torch.zeros((x.shape[1] - 1, 1), dtype=F64)
        first.add_(w)
        return self.fc(x) + 100 * second


def test_memory_shared_by_two_storages_is_live_memory():
    """A red team's false certificate: liveness was decided by a storage's start address, so the
    second storage over the written bytes was a constant, zero at both compared α; certified
    ``monotone`` (bound 1.2e-15) where the curve rises by about 10⁴ at α = 0.537."""
    from mli_theory import make_line
    from mli_theory.path.fidelity import PROBE_ALPHA, line_trace_differs

    m = _SharedBuffer().to(F64)
    s0 = _state(m)
    s0["lin.weight"].fill_(0.0)
    s0["lin.bias"].fill_(0.0)
    s1 = {**s0, "lin.weight": torch.ones(1, 1, dtype=F64)}
    x = torch.randn(4, 2, dtype=F64)
    gm = torch.fx.symbolic_trace(m)

    def both(a: float) -> tuple[torch.Tensor, torch.Tensor]:
        s = {k: (1 - a) * s0[k] + a * s1[k] for k in s0}
        with torch.no_grad():
            return torch.func.functional_call(m, s, (x,)), torch.func.functional_call(gm, s, (x,))

    for a in (PROBE_ALPHA, 1 - PROBE_ALPHA):
        assert torch.equal(*both(a))  # the two compared α see no difference in values
    ran, traced = both(0.537)
    assert (ran - traced).abs().max() > 50  # the window does
    why = line_trace_differs(make_line(m, s0, s1, dtype=F64), x)
    assert why is not None and ("memory it did not make" in why or "trace" in why), why


def test_a_storage_over_live_bytes_is_live_whatever_its_start():
    """The record's liveness by bytes (the write into NumPy's memory above is refused first; this is
    the net under it): a second storage over a live tensor's memory is live, by where it lies."""
    from mli_theory.path.fidelity import _Recorder

    buf = np.zeros(4)
    seed = torch.as_tensor(buf)
    rec = _Recorder({"w": seed})
    later = torch.as_tensor(buf[1:])  # starts 8 bytes in
    elsewhere = torch.as_tensor(np.zeros(4))
    assert rec.is_live(later) and not rec.is_live(elsewhere)
    assert rec._origin(later) == ("live", "memory of", "state", "w", None, 8, (3,), (1,), "torch.float64")


class _KeepsNumpyMemory(nn.Module):
    """Writes a narrow tent of α into memory it keeps (a tensor over a NumPy array it holds) and
    reads it back through NumPy, a read no torch mode sees; its trace writes into fresh zeros."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.lin = nn.Linear(1, 1)
        self.register_buffer("one", torch.ones(1, 1))
        self.arr = np.zeros((4, 1))
        self.buf = torch.from_numpy(self.arr)
        self.var = torch.zeros(1, dtype=F64)  # the batch variance of [t, t]: unchanged

    def forward(self, x):
        a = self.lin(self.one)
        t = torch.relu(1 - 300 * torch.relu(a - 0.537) - 300 * torch.relu(0.537 - a))
        if self.how == "in place":
            if isinstance(x, torch.Tensor):
                z = self.buf
                z.zero_()
            else:
                z = torch.zeros(x.shape, dtype=F64)
            z.add_(t)
        else:  # BatchNorm's statistics written into a kept tensor (the schema does not say it writes them)
            F.batch_norm(torch.cat([t, t]), self.buf[0], self.var, training=True, momentum=1.0)
        out = a * x
        return out + 100 if self.arr[0, 0] > 0 else out


@pytest.mark.parametrize("how", ["in place", "batch norm statistics"])
def test_moving_values_written_into_memory_the_forward_keeps_are_refused(how):
    """A red team's false certificate (the first form; older than this part): certified ``monotone``
    (bound 1.9e-29) where the curve reaches 10⁴ at α = 0.537. The write and the tent, 0 at both
    compared α, record the same in the forward and the trace; the NumPy read records nothing."""
    from mli_theory import make_line
    from mli_theory.path.fidelity import line_trace_differs

    m = _KeepsNumpyMemory(how)
    s0 = {k: torch.zeros_like(v, dtype=F64) for k, v in m.state_dict().items()}
    s0["one"] = torch.ones(1, 1, dtype=F64)
    s1 = {**s0, "lin.weight": torch.ones(1, 1, dtype=F64)}
    x = torch.linspace(-1, 1, 4, dtype=F64).reshape(4, 1)
    why = line_trace_differs(make_line(m, s0, s1, dtype=F64), x)
    assert why is not None and "memory it did not make" in why, why
    with torch.no_grad():  # (another instance: this one writes its array)
        peak = torch.func.functional_call(_KeepsNumpyMemory(how).double(), {k: 0.463 * s0[k] + 0.537 * s1[k] for k in s0}, (x,))
    assert float((peak - x).abs().max()) > 50  # the caller's curve jumps there


def _mapped(path: str) -> torch.Tensor:
    """A tensor over a file mapped shared: memory an operation makes, which another reader of the file sees."""
    return torch.from_file(path, True, 1, dtype=F64)


torch.fx.wrap("_mapped")  # the trace maps it on every run too


class _WritesAFile(nn.Module):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.lin = nn.Linear(1, 1)
        self.register_buffer("one", torch.ones(1, 1))

    def forward(self, x):
        a = self.lin(self.one)
        t = torch.relu(1 - 300 * torch.relu(a - 0.537) - 300 * torch.relu(0.537 - a)).reshape(-1)
        _mapped(self.path).copy_(t)
        out = a * x
        return out + 100 if np.fromfile(self.path)[0] > 0 else out  # read back past every torch mode


def test_moving_values_written_into_a_mapped_file_are_refused(tmp_path):
    """A red team's comparison miss (older than this part): memory from ``from_file(shared=True)`` is
    made by an operation of the call, but not by torch's allocator; written there, a value reached
    NumPy through the file, and the comparison accepted a forward whose curve reaches 10⁴ near α = 0.537."""
    from mli_theory import make_line
    from mli_theory.path.fidelity import line_trace_differs

    path = str(tmp_path / "mapped.bin")
    np.zeros(1).tofile(path)
    m = _WritesAFile(path)
    s0 = {k: torch.zeros_like(v, dtype=F64) for k, v in m.state_dict().items()}
    s0["one"] = torch.ones(1, 1, dtype=F64)
    s1 = {**s0, "lin.weight": torch.ones(1, 1, dtype=F64)}
    why = line_trace_differs(make_line(m, s0, s1, dtype=F64), torch.linspace(-1, 1, 4, dtype=F64).reshape(4, 1))
    assert why is not None and "the forward writes values" in why and "memory it did not make" in why, why
