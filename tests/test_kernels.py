"""Backend selection, the compile-friendly eager formulation, torch.compile on CPU, and (in a
subprocess, under TRITON_INTERPRET=1) the Triton kernels of tests/test_kernels_triton.py."""

import functools
import math
import re
import shutil
import warnings

import pytest
import torch

import lit_ortho as L
from _families import BUILTIN_FAMILIES
from launch import TESTS, python, run
from lit_ortho.activations import backends, kernels
from lit_ortho.activations import BACKENDS
from lit_ortho.activations import FAMILIES, fourier

SPECS = {"hermite": "hermite:3", "fourier": "fourier:5", "tropical": "tropical:5", "tropical_rational": "tropical_rational:6"}
LAYOUTS = [  # (per_channel, channel_dim, input shape)
    (None, -1, (6, 50)),
    (7, -1, (3, 5, 7)),
    (4, 1, (2, 4, 3, 5)),
]


def _module(family, per_channel=None, channel_dim=-1, seed=0, **kw):
    spec = {"name": family, "degree": int(SPECS[family].split(":")[1]), "init": "unit",
            "per_channel": per_channel, "channel_dim": channel_dim, **kw}
    module = L.build_activation(spec)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.25 * torch.randn(p.shape, generator=gen))
    return module


def _fwd_bwd(module, x, grad):
    x = x.detach().requires_grad_()
    module.zero_grad(set_to_none=True)
    y = module(x)
    y.backward(grad)
    return y.detach(), x.grad, [p.grad.clone() for p in module.parameters()]


def _assert_same(a, b, rtol, atol):
    for t, u in zip(a[:2], b[:2]):
        torch.testing.assert_close(t, u, rtol=rtol, atol=atol)
    for t, u in zip(a[2], b[2]):
        torch.testing.assert_close(t, u, rtol=rtol, atol=atol * (1 + u.abs().max().item()))


# ---- backend option ------------------------------------------------------------------------------
def test_backend_choices_and_spec_round_trip():
    assert BACKENDS == ("auto", "eager", "triton")
    module = L.build_activation("hermite(degree=3, backend=triton)")
    assert module.backend == "triton" and L.spec_of(module)["backend"] == "triton"
    assert repr(L.build_activation(L.spec_of(module))) == repr(module)
    with pytest.raises(ValueError, match="valid choices: auto, eager, triton"):
        L.build_activation("hermite(degree=3, backend=cuda)")


def test_auto_is_eager_off_the_gpu():
    x = torch.randn(4, 8)
    assert not backends.use_triton("auto", x)
    assert not backends.use_triton("eager", x)
    assert not backends.use_triton("auto", x.double())
    auto, eager = _module("fourier"), _module("fourier", backend="eager")
    torch.testing.assert_close(auto(x), eager(x), rtol=0, atol=0)


def test_auto_picks_triton_for_cuda_inputs_by_dtype():
    """Decided from device and dtype alone: checked on fake CUDA tensors, no GPU needed."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            x = torch.empty(4, 8, dtype=dtype, device="cuda")
            assert backends.use_triton("auto", x) == kernels.TRITON_AVAILABLE
            assert not backends.use_triton("eager", x)
        assert not backends.use_triton("auto", torch.empty(4, 8, dtype=torch.float64, device="cuda"))


@pytest.mark.skipif(kernels.INTERPRET or torch.cuda.is_available(), reason="triton can run CPU tensors here")
def test_triton_backend_says_why_it_cannot_run():
    module = L.build_activation("tropical(degree=3, backend=triton)")
    with pytest.raises(RuntimeError, match="CUDA tensors.*TRITON_INTERPRET=1.*backend='auto'"):
        module(torch.randn(3, 4))
    with pytest.raises(TypeError, match="float32, bfloat16 or float16.*float64"):
        module.double()(torch.randn(3, 4, dtype=torch.float64))


# ---- the compile-friendly formulation, run eagerly -------------------------------------------------
def test_sincos_pi_polynomials_match_float64_to_float32_rounding():
    """sin(pi u) and cos(pi u) in half turns: u - round(u) is exact for every float32 |u| < 2**22, so the error is
    the polynomials' alone, at any u in that range (|w x - phi| < 1.3e7)."""
    u = torch.cat([torch.linspace(-1000, 1000, 400_001), torch.linspace(-4_000_000, 4_000_000, 400_001),
                   torch.arange(-64, 65) / 2, torch.tensor([2.0**22 - 0.5, -(2.0**22) + 1.5])]).float()
    s, c = fourier.sincos_pi(u)
    ud = u.double()
    assert (s.double() - (ud * math.pi).sin()).abs().max() < 2.5e-7
    assert (c.double() - (ud * math.pi).cos()).abs().max() < 2.5e-7
    assert torch.equal(fourier.cos_pi(u), c)
    s64, c64 = fourier.sincos_pi(ud)
    assert torch.equal(s64, (ud * math.pi).sin()) and torch.equal(c64, (ud * math.pi).cos())


@pytest.mark.parametrize("family", ["fourier", "tropical", "tropical_rational"])
@pytest.mark.parametrize("per_channel,channel_dim,shape", LAYOUTS)
def test_compiled_formulation_matches_eager(family, per_channel, channel_dim, shape):
    module = _module(family, per_channel, channel_dim)
    gen = torch.Generator().manual_seed(1)
    x, grad = torch.randn(shape, generator=gen) * 2, torch.randn(shape, generator=gen)
    values = [getattr(module, n).float() for n in module.value_names]

    def run(fn):
        xx = x.detach().requires_grad_()
        vs = [v.detach().requires_grad_(v.requires_grad) for v in values]
        y = fn(xx, *vs, channel_dim=channel_dim)
        y.backward(grad)
        return y.detach(), xx.grad, [v.grad for v in vs if v.requires_grad]

    _assert_same(run(FAMILIES[family].traced()), run(module.function), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["fourier", "tropical", "tropical_rational"])
@pytest.mark.parametrize("per_channel,channel_dim,shape", [(None, -1, (3, 5)), (3, 1, (2, 3, 4))])
def test_compiled_formulation_gradcheck_float64(family, per_channel, channel_dim, shape):
    module = _module(family, per_channel, channel_dim).double()
    x = (torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 2).requires_grad_()
    learnable = dict(module.named_parameters())
    values = [getattr(module, n).detach().clone().requires_grad_(n in learnable) for n in module.value_names]
    fn = lambda x, *v: FAMILIES[family].traced()(x, *v, channel_dim=channel_dim)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, *values), eps=1e-6, atol=1e-6)


def _ties_and_dead_lines(family):
    """Coefficients with lines that tie everywhere (duplicates), lines that never win, and crossings at floats
    that the inputs hit exactly; shared ([K]) and per channel (two channels, the second shifted)."""
    if family == "tropical":  # slopes 0..5; equal intercepts meet at x = 0; -9: line 2 never wins
        shared = [torch.tensor([0.0, 0.0, -9.0, 0.0, -1.0, -2.0]), torch.tensor(0.5)]
    else:  # lines 0 and 1 equal, line 3 dead, lines 4 and 5 equal, a slope repeated with other intercepts
        p = torch.tensor([1.0, 1.0, 0.5, 0.5, 2.0, 2.0, -1.0])
        c = torch.tensor([0.0, 0.0, 1.0, -8.0, -2.0, -2.0, 0.0])
        shared = [p, c, torch.tensor([0.0, 0.0, 1.0, 1.0, 3.0, -1.0, 0.5]), torch.tensor([0.0, -1.0, 0.0, 0.0, -4.0, 0.0, 1.0])]
    learnable = len(shared) if family == "tropical_rational" else 1  # Tropical's scale is a fixed buffer
    per_channel = [torch.stack([t, t + 0.5]) for t in shared[:learnable]] + shared[learnable:]
    return shared, per_channel


@pytest.mark.parametrize("family", ["tropical", "tropical_rational"])
@pytest.mark.parametrize("compiled", [False, True], ids=["traced", "inductor"])
def test_compiled_pieces_match_eager_at_ties_and_dead_lines(family, compiled):
    """The compiled twin finds each element's piece from the breakpoints of the max of lines (computed from the
    coefficients, not by comparing lines element by element): at exact ties, duplicate lines and lines that never
    win it picks eager's piece (the first maximal line), so dx and every coefficient gradient agree."""
    if compiled and not _have_cxx():
        pytest.skip("inductor's CPU backend needs a C++ compiler")
    grid = torch.arange(-48, 49) / 8.0  # every crossing of the coefficients above is a multiple of 1/8 in [-6, 6]
    gen = torch.Generator().manual_seed(4)
    shared, per_channel = _ties_and_dead_lines(family)
    for values, shape, cd in [(shared, (97,), -1), (per_channel, (2, 97), 0)]:
        x = grid.expand(shape).contiguous()
        grad = torch.randn(shape, generator=gen)
        fn = FAMILIES[family].traced()
        if compiled:
            torch._dynamo.reset()
            fn = torch.compile(fn, fullgraph=True, dynamic=False)

        def run(f):
            xx = x.clone().requires_grad_()
            vs = [v.clone().requires_grad_(v.dim() > 0) for v in values]  # all but Tropical's scalar scale
            f(xx, *vs, channel_dim=cd).backward(grad)
            return [xx.grad] + [v.grad for v in vs if v.requires_grad]

        expected, got = run(FAMILIES[family].eager), run(fn)
        assert len(got) == len(expected) == (2 if family == "tropical" else 5)
        torch.testing.assert_close(got[0], expected[0], rtol=1e-6, atol=1e-6)  # dx: the winning slope, exactly
        # The coefficient gradients are sums over each line's piece, which the compiled twin takes (for shared
        # coefficients) as differences of the sums above neighbouring breakpoints: float32 rounding of a few 1e-6
        # here. A wrong piece moves a sum by at least one element's g (or g x, x a nonzero multiple of 1/8): far more
        # than the tolerance.
        assert grad.abs().min() > 1e-3
        for a, b in zip(got[1:], expected[1:]):
            torch.testing.assert_close(a, b, rtol=0, atol=2e-5)


# ---- torch.compile on CPU: no graph breaks, same numbers -------------------------------------------
@pytest.mark.parametrize("family", BUILTIN_FAMILIES)
@pytest.mark.parametrize("per_channel,channel_dim,shape", [LAYOUTS[0], LAYOUTS[2]])
def test_eager_backend_has_no_graph_breaks(family, per_channel, channel_dim, shape):
    torch._dynamo.reset()  # a fresh recompile budget for LearnableActivation.forward, whatever ran before
    module = _module(family, per_channel, channel_dim)
    x = torch.randn(shape, requires_grad=True)
    explanation = torch._dynamo.explain(module)(x)  # traces forward and the autograd Function's backward
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.parametrize("family", BUILTIN_FAMILIES)
@pytest.mark.parametrize("shape", [(2, 4, 5, 6), (2, 4, 64, 97)], ids=["rows", "rows-above-4096"])
def test_compile_fullgraph_aot_eager_matches_eager(family, shape):
    """Per channel on dim 1: the traced sums go by rows of the dims after the channel (split into rows of at
    most ROW_SUM_LIMIT, 6208 = 2 x 3104 here), and give eager's numbers."""
    torch._dynamo.reset()
    module = _module(family, per_channel=4, channel_dim=1)
    gen = torch.Generator().manual_seed(3)
    x, grad = torch.randn(shape, generator=gen) * 2, torch.randn(shape, generator=gen)
    expected = _fwd_bwd(module, x, grad)
    got = _fwd_bwd(torch.compile(module, fullgraph=True, backend="aot_eager"), x, grad)
    _assert_same(got, expected, rtol=1e-5, atol=1e-5)


def _have_cxx() -> bool:
    return any(shutil.which(c) for c in ("g++", "c++", "clang++"))


# ---- "auto" on CPU: a lazily compiled kernel for large inputs ---------------------------------------------
@pytest.fixture
def compile_spy(monkeypatch):
    """Fresh lazily-compiled-kernel caches, and ``torch.compile`` wrapped to count what it builds and runs."""
    monkeypatch.setattr(backends, "_COMPILED", {})
    monkeypatch.setattr(backends, "_EAGER_ONLY", set())
    spy = {"compiled": 0, "calls": 0, "fail": False}
    real = torch.compile

    def counting_compile(fn, **kwargs):
        spy["compiled"] += 1
        if spy["fail"]:
            def broken(*args, **kw):
                raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found\nmore detail")
            return broken
        compiled = real(fn, **kwargs)

        def run(*args, **kw):
            spy["calls"] += 1
            return compiled(*args, **kw)
        return run

    monkeypatch.setattr(torch, "compile", counting_compile)
    torch._dynamo.reset()
    return spy


@pytest.mark.skipif(not _have_cxx(), reason="inductor's CPU backend needs a C++ compiler")
def _not_dense(t):
    """``t``'s values in a view with gaps between them: a layout the C++ kernels do not take (cpu.layout is None)."""
    return torch.stack([t, t], dim=-1)[..., 0]


def test_auto_compiles_large_cpu_inputs_once_and_matches_eager(compile_spy, monkeypatch):
    """From LIT_ORTHO_LAZY_COMPILE elements on, "auto" runs the family's compiled twin on CPU where its C++ kernels do
    not take the input (every family's take every dense layout: here a strided view), compiled on first use and
    reused; its values and gradients (input and coefficients) equal eager's. Smaller inputs, float64,
    backend="eager" and LIT_ORTHO_LAZY_COMPILE=off stay eager."""
    monkeypatch.setenv(backends.LAZY_COMPILE_ENV, "300")
    x, grad = _not_dense(torch.randn(6, 50)), torch.randn(6, 50)
    assert kernels.cpu.layout(x, False, -1) is None
    auto, eager = _module("hermite"), _module("hermite", backend="eager")
    _assert_same(_fwd_bwd(auto, x, grad), _fwd_bwd(eager, x, grad), rtol=1e-5, atol=1e-5)
    _fwd_bwd(auto, _not_dense(x * 2), grad)
    assert compile_spy == {"compiled": 1, "calls": 2, "fail": False}
    _fwd_bwd(auto, x[:, :49], grad[:, :49])  # 294 elements
    _fwd_bwd(eager, x, grad)
    _fwd_bwd(_module("hermite").double(), x.double(), grad.double())
    monkeypatch.setenv(backends.LAZY_COMPILE_ENV, "off")
    _fwd_bwd(auto, x, grad)
    assert compile_spy["calls"] == 2
    monkeypatch.setenv(backends.LAZY_COMPILE_ENV, "lots")
    with pytest.raises(ValueError, match=r"LIT_ORTHO_LAZY_COMPILE='lots': valid values are 'off', 'auto' or a number"):
        auto(x)
    monkeypatch.delenv(backends.LAZY_COMPILE_ENV)
    assert backends.lazy_compile_threshold() == backends.LAZY_COMPILE_MIN_ELEMENTS == 2**22


def test_auto_falls_back_to_eager_once_when_compiling_fails(compile_spy, monkeypatch):
    """No C++ compiler (or any compile error): one warning naming the reason and the way out, eager results,
    and no second attempt."""
    monkeypatch.setenv(backends.LAZY_COMPILE_ENV, "0")
    compile_spy["fail"] = True
    x, grad = _not_dense(torch.randn(6, 50)), torch.randn(6, 50)  # not for the C++ kernels: the compiled twin's
    auto, eager = _module("hermite"), _module("hermite", backend="eager")
    with pytest.warns(UserWarning, match=r"hermite: compiling the CPU kernel failed \(RuntimeError: InvalidCxxCompiler: "
                                         r"no working C\+\+ compiler found\); running eager.*LIT_ORTHO_LAZY_COMPILE=off"):
        first = _fwd_bwd(auto, x, grad)
    _assert_same(first, _fwd_bwd(eager, x, grad), rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _fwd_bwd(auto, x, grad)
    assert compile_spy["compiled"] == 1 and backends._EAGER_ONLY == {"hermite"}


@pytest.mark.skipif(not _have_cxx(), reason="inductor's CPU backend needs a C++ compiler")
@pytest.mark.parametrize("degree", [3, 8])
def test_compiled_hermite_keeps_eagers_signed_infinities(degree):
    """Compiled Hermite (the saturating recurrence) gives eager's values at huge inputs, the correctly signed
    infinities included, and gradients without NaN at huge finite inputs."""
    torch._dynamo.reset()
    module = L.build_activation(f"hermite:{degree}")
    x = torch.tensor([-1e30, -3e13, -3e5, -2000.0, -1.5, 0.0, 0.7, 2000.0, 3e5, 3e13, 1e30, float("inf"), -float("inf")])
    eager, compiled = module(x), torch.compile(module, fullgraph=True)(x)
    assert torch.isinf(eager).sum() >= 4
    torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=0)
    xg = x[:-2].clone().requires_grad_()  # finite inputs: an infinite one makes its coefficient sums inf - inf
    torch.compile(module, fullgraph=True)(xg).sum().backward()
    assert not torch.isnan(xg.grad).any() and not torch.isnan(module.coefficients.grad).any()


@pytest.mark.skipif(not _have_cxx(), reason="inductor's CPU backend needs a C++ compiler")
def test_compile_fullgraph_inductor_mlp_matches_eager():
    """A small MLP with the compile-only formulations (Fourier's polynomial sine/cosine, tropical's
    masked sums), compiled by inductor with fullgraph=True, forward and backward."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Sequential(  # tropical_rational uses tropical's building blocks (aot_eager test above)
        torch.nn.Linear(12, 32), _module("fourier"),
        torch.nn.Linear(32, 8), _module("tropical", per_channel=8),
    )
    x = torch.randn(64, 12)
    grad = torch.randn(64, 8)

    def step(m):
        m.zero_grad(set_to_none=True)
        y = m(x)
        y.backward(grad)
        return y.detach(), [p.grad.clone() for p in model.parameters()]

    y_ref, g_ref = step(model)
    y, g = step(torch.compile(model, fullgraph=True))
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * (1 + b.abs().max().item()))


def _generated_cpp(module, x) -> tuple[str, str]:
    """The C++ inductor writes for one forward and one backward of ``module`` compiled (fullgraph)."""
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    compiled_module = torch.compile(module, fullgraph=True)
    _, (forward, backward) = run_and_get_code(lambda: compiled_module(x).backward(torch.ones_like(x)))
    return forward, backward


def _generated_cpp_of(family: str, shape: tuple[int, ...], degree: int | None = None) -> tuple[str, str]:
    """:func:`_generated_cpp` of ``_module(family, degree=degree)`` on an input of ``shape``, compiled once for all
    the tests that read the same code (inductor compiles C++ for each: seconds on 2 cores). The compiled twin:
    ``backend="eager"`` (``"auto"`` runs Fourier's and Tropical-rational's C++ kernels on CPU; the twin where they
    cannot be built)."""
    return _cached_cpp(family, tuple(shape), degree or int(SPECS[family].split(":")[1]))


@functools.lru_cache(maxsize=None)
def _cached_cpp(family: str, shape: tuple[int, ...], degree: int) -> tuple[str, str]:
    return _generated_cpp(_module(family, degree=degree, backend="eager"), torch.randn(shape, requires_grad=True))


def _passes(code: str, rows: int, cols: int) -> int:
    """Loops in inductor's generated C++ that walk all rows x cols elements: flat (x0 over every
    element) or row by row (an inner x1 loop over the cols of each row)."""
    flat = re.findall(rf"for\(int64_t x0=static_cast<int64_t>\(0L\); x0<static_cast<int64_t>\({rows * cols}L\)", code)
    by_row = re.findall(rf"for\(int64_t x1=static_cast<int64_t>\(0L\); x1<static_cast<int64_t>\({cols}L\)", code)
    return len(flat) + len(by_row)


@pytest.mark.skipif(not _have_cxx(), reason="inductor's CPU backend needs a C++ compiler")
@pytest.mark.parametrize("family", ["fourier", "tropical"])
@pytest.mark.parametrize("shape", [(64, 96), (25600,), (4, 64, 16, 16)], ids=["2-D", "flat", "NCHW"])
@pytest.mark.codegen
def test_inductor_makes_one_pass_over_the_elements_each_way(family, shape):
    """The CPU cost of the compiled activation is set by how often it walks the tensor: forward one
    pass; backward one pass computing dx and every coefficient sum together (for Fourier-5: five
    sine/cosine pairs and 16 sums; for Tropical-5: the piece from five compares and 6 sums), not a second
    pass for dx. The sums go row by row (the longest rows of at most 4096 elements that the input splits
    into, whatever its shape: 2 x 3072 and 8 x 3200 here; NCHW's last two dims, 256), so inductor needs no
    cascade-summation helper (a memory update per vector and sum). Rows of 4096 for NCHW would split its channel
    dim, and inductor then copied dx back to x's shape in a scalar loop (index arithmetic: div_floor)."""
    forward, backward = _generated_cpp_of(family, shape)  # above inductor's 4096 elements for the helper
    rows, cols = {(64, 96): (2, 3072), (25600,): (8, 3200), (4, 64, 16, 16): (256, 256)}[shape]  # the backward's pass
    assert (_passes(forward, 1, math.prod(shape)), _passes(backward, rows, cols)) == (1, 1)
    assert "CascadeSumHelper" not in backward and "div_floor" not in backward


@pytest.mark.skipif(not _have_cxx(), reason="inductor's CPU backend needs a C++ compiler")
@pytest.mark.parametrize("family,degree", [("tropical", 3), ("tropical", 5), ("tropical_rational", 6)])
@pytest.mark.codegen
def test_inductor_loads_the_breakpoints_in_the_element_loop(family, degree):
    """The breakpoints are a few coefficients' worth of work, done once a call; the loop over the elements loads
    them. Inductor inlines reductions over at most 8 elements, and without a buffer between the breakpoints and
    that loop it recomputed them for every vector (Tropical-3 at 6.3 M elements: 20x eager GELU, against 0.6x)."""
    _, backward = _generated_cpp_of(family, (25600,), degree=degree)  # rows of 3200
    loops = re.split(r"x0<static_cast<int64_t>\(25600L\)|x1<static_cast<int64_t>\(3200L\)", backward)[1:]
    assert len(loops) == (1 if family == "tropical" else 2), backward  # Tropical-rational's 26 sums: two passes
    for body in loops:
        body = body.split("tmp_acc")[0]  # the loop's work up to its first accumulation
        assert "propagate_nan" not in body and "nextafter" not in body, body


@pytest.mark.skipif(not _have_cxx(), reason="inductor's CPU backend needs a C++ compiler")
@pytest.mark.codegen
def test_inductor_loads_fouriers_term_coefficients_in_the_element_loop():
    """The per-term products of coefficients (c_k / k!, w_k / pi, -phi_k / pi, -c_k w_k / k!) are computed once a
    call into one buffer; the loop over the elements only loads them. Inductor otherwise recomputes them for
    every vector of x, as scalar arithmetic in the loop (Fourier-5's forward at 6.3 M elements: 2.1 ms with a
    scalar division per term and vector, 1.6 ms loaded, against GELU's 1.2 ms)."""
    forward, backward = _generated_cpp_of("fourier", (25600,))  # rows of 3200 in the backward
    scalar_arithmetic = re.compile(r"= float\(tmp\d+ [*/] tmp\d+\)|= decltype\(tmp\d+\)\(-tmp\d+\)")  # a * b, a / b, -a
    forward_loop = forward.split("x0<static_cast<int64_t>(25600L)")[1].split(".store(")[0]
    backward_loop = backward.split("x1<static_cast<int64_t>(3200L)")[1].split("tmp_acc")[0]
    assert not scalar_arithmetic.search(forward_loop), forward_loop
    assert len(scalar_arithmetic.findall(backward_loop)) <= 1, backward_loop  # the row tie's x[row, 0] * 0


@pytest.mark.skipif(not _have_cxx(), reason="inductor's CPU backend needs a C++ compiler")
@pytest.mark.parametrize("family", ["hermite", "tropical"])
@pytest.mark.codegen
def test_inductor_sums_per_channel_gradients_by_rows(family):
    """Per channel on dim 1 of (8, 8, 6, 96): the coefficient sums go along contiguous rows of the 576 elements
    after the channel, then over the 8 x 8 row sums. As one reduction over dims (0, 2, 3), 8 x 576 elements per
    channel, inductor summed with its cascade-summation helper, a memory update per vector and sum (1.6x
    compiled GELU at 256x160x16x16 against 1.1x by rows), and dx is computed in the same pass. A sum that reads no
    per-channel value (Hermite's sums of g P_k; a total of g that Tropical once differenced from) is looped unlike
    dx and split it off: Hermite-3 1.20x against 1.01x at 256x160x16x16, Tropical-5 1.9x against 1.25x at
    128x56x56x96. The compiled twin (backend='eager'): "auto" runs Tropical's C++ kernels there, and the twin where
    they cannot be built."""
    x = torch.randn(8, 8, 6, 96, requires_grad=True)
    _, backward = _generated_cpp(_module(family, per_channel=8, channel_dim=1, backend="eager"), x)
    row_loops = re.findall(r"x\d<static_cast<int64_t>\(576L\)", backward)
    assert len(row_loops) == 1 and "CascadeSumHelper" not in backward, backward  # dx in the sums' pass


@pytest.mark.skipif(not _have_cxx(), reason="inductor's CPU backend needs a C++ compiler")
@pytest.mark.parametrize("family", ["hermite", "fourier", "tropical", "tropical_rational"])
@pytest.mark.codegen
def test_inductor_vectorises_per_channel_coefficients(family):
    """Per-channel [C, K] coefficients along the last dim, compiled twin (backend='eager'; "auto" runs the C++ kernels
    there, and the twin where they cannot be built): each column must reach the loop as a contiguous [C] vector. A
    strided column makes inductor fall back to a scalar loop (one element per step), several times slower."""
    forward, _ = _generated_cpp(_module(family, per_channel=96, backend="eager"), torch.randn(64, 96, requires_grad=True))
    steps = re.findall(r"for\(int64_t x1=static_cast<int64_t>\(0L\); x1<static_cast<int64_t>\(96L\); "
                       r"x1\+=static_cast<int64_t>\((\d+)L\)", forward)
    assert steps and all(int(step) > 1 for step in steps), steps


# ---- the Triton kernels, interpreted on CPU ---------------------------------------------------------
@pytest.mark.skipif(not kernels.TRITON_AVAILABLE, reason="triton is not installed")
@pytest.mark.skipif(kernels.INTERPRET or torch.cuda.is_available(),
                    reason="tests/test_kernels_triton.py runs in this process (GPU or interpreter)")
@pytest.mark.slow
def test_triton_kernels_under_the_interpreter(tmp_path):
    """TRITON_INTERPRET must be set before triton is imported, so the kernel tests run in a fresh
    interpreter process: forward, input gradient and coefficient gradients against eager."""
    result = run(python("-m", "pytest", "-q", "-p", "no:cacheprovider", TESTS / "test_kernels_triton.py"), tmp_path,
                 timeout=900, tag="triton_interpret", TRITON_INTERPRET="1")  # fmt: skip
    report = result.output(0, tail=9000)
    assert result.ok, report
    assert " passed" in report and " skipped" not in report, report


# ---- the Triton kernels compile for an H100 (sm_90), no GPU needed ----------------------------------
def _aot_compile(kernel, dtype: str, constexprs: dict):
    """triton.compile for sm_90 with the divisibility hints the JIT gives 16-aligned arguments."""
    import inspect

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    params = inspect.signature(kernel.fn).parameters
    signature = {}
    for name, p in params.items():
        if p.annotation is not inspect.Parameter.empty:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = f"*{dtype}" if name in ("x_ptr", "g_ptr", "y_ptr", "dx_ptr") else "*fp32"
        else:
            signature[name] = "i32"
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(signature)
             if signature[n].startswith("*") or n in ("numel", "width")}
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})


@pytest.mark.skipif(not kernels.TRITON_AVAILABLE or kernels.INTERPRET, reason="needs triton, not interpreted")
@pytest.mark.parametrize("family", BUILTIN_FAMILIES)
@pytest.mark.codegen
def test_kernels_compile_for_sm90(family):
    """Lowering to PTX and SASS, which the interpreter never does: bf16 forward with shared
    coefficients (Fourier: the MUFU sin/cos path) and float32 per-channel backward."""
    try:
        import triton  # noqa: F401
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401
    except ImportError as exc:  # another triton layout
        pytest.skip(f"triton's ahead-of-time API is not available: {exc}")
    import importlib

    from lit_ortho.activations.kernels import triton_common as T

    kernels_of = importlib.import_module(FAMILIES[family].triton)

    degree = {"hermite": 3, "fourier": 5, "tropical": 5, "tropical_rational": 6}[family]
    K = degree if family == "fourier" else degree + 1
    size = {"N": K} if family == "fourier" else {"K": K}
    extra = {"hermite": {"CLAMP": False}, "fourier": {"FAST_TRIG": True}}.get(family, {})
    cfg = T.CONFIG
    fwd = dict(size, **extra, PER_CHANNEL=False, BLOCK_C=cfg["shared_width"],
               BLOCK_R=cfg["fwd_tile"] // cfg["shared_width"], INT64=False)
    extra_bwd = {"hermite": {"CLAMP": False}, "fourier": {"FAST_TRIG": False}}.get(family, {})
    pad = {"NP": 8} if family == "fourier" else {"KP": 8}
    bwd = dict(size, **extra_bwd, **pad, NEED_X=True, NEED_COEF=True, PER_CHANNEL=True,
               BLOCK_C=cfg["channel_block"], BLOCK_R=cfg["bwd_tile"] // cfg["channel_block"], INT64=False)
    try:
        compiled_fwd = _aot_compile(getattr(kernels_of, f"_{family}_fwd_kernel"), "bf16", fwd)
        compiled_bwd = _aot_compile(getattr(kernels_of, f"_{family}_bwd_kernel"), "fp32", bwd)
    except (FileNotFoundError, PermissionError) as exc:  # no bundled ptxas
        pytest.skip(f"cannot run ptxas here: {exc}")
    for k in (compiled_fwd, compiled_bwd):
        assert k.asm["cubin"] and ".target sm_90" in k.asm["ptx"]
    ptx = compiled_fwd.asm["ptx"]
    assert "ld.global.v4" in ptx  # 16-byte loads of the bf16 input
    if family == "fourier":
        assert "cos.approx" in ptx
