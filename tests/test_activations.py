"""The learnable activations: values against independent formulas, gradients, inits, numerics, memory."""

import math

import numpy as np
import pytest
import torch
from numpy.polynomial import hermite_e

import lit_ortho as L
from _families import BUILTIN_FAMILIES
from lit_ortho.activations import FOURIER_C



def _np(t):
    return t.detach().double().numpy()


# ---- values computed another way --------------------------------------------------------------------
def reference(module, x: np.ndarray) -> np.ndarray:
    """F(x) from the formulas in ACTIVATIONS.md, in numpy, for a shared-coefficient module."""
    v = {k: _np(t) for k, t in module.shared_values().items()}
    if module.family == "hermite":
        fact = np.array([math.factorial(k) for k in range(module.degree + 1)], dtype=float)
        return hermite_e.hermeval(x, v["coefficients"] / fact)
    if module.family == "fourier":
        k = np.arange(1, module.degree + 1)
        fact = np.array([math.factorial(i) for i in k], dtype=float)
        z = np.outer(x, v["frequencies"]) - v["phases"]
        return v["bias"][0] + (v["amplitudes"] * np.cos(z) / fact).sum(1)
    if module.family == "tropical":
        k = np.arange(module.degree + 1)
        return float(v["scale"]) * (np.outer(x, k) + v["intercepts"]).max(1)
    num = (np.outer(x, v["num_slopes"]) + v["num_intercepts"]).max(1)
    den = (np.outer(x, v["den_slopes"]) + v["den_intercepts"]).max(1)
    return num - den


@pytest.mark.parametrize("family", BUILTIN_FAMILIES)
@pytest.mark.parametrize("degree", [1, 3, 6])
def test_values_match_the_formulas(family, degree):
    torch.manual_seed(degree)
    module = L.build_activation({"name": family, "degree": degree, "init": "unit"})
    with torch.no_grad():  # random coefficients, so nothing special about the init is relied on
        for p in module.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.linspace(-4, 4, 1001, dtype=torch.float64)
    np.testing.assert_allclose(_np(module(x)), reference(module, _np(x)), rtol=1e-9, atol=1e-9)


# ---- gradients --------------------------------------------------------------------------------------
def _random_coefficients(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("family", BUILTIN_FAMILIES)
@pytest.mark.parametrize("degree", [1, 2, 4])
@pytest.mark.parametrize("per_channel,channel_dim,shape", [(None, -1, (3, 7)), (4, -1, (3, 4)), (3, 1, (2, 3, 5))])
def test_gradcheck_float64(family, degree, per_channel, channel_dim, shape):
    module = L.build_activation(
        {"name": family, "degree": degree, "init": "unit", "per_channel": per_channel, "channel_dim": channel_dim}
    ).double()
    _random_coefficients(module, seed=degree)
    x = (torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2).requires_grad_()
    learnable = dict(module.named_parameters())
    values = [getattr(module, n).detach().clone().requires_grad_(n in learnable) for n in module.value_names]
    fn = lambda x, *v: module.function(x, *v, channel_dim=channel_dim)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, *values), eps=1e-6, atol=1e-6)


def test_per_channel_coefficients_act_per_channel():
    module = L.HermiteActivation(3, init="paper", per_channel=4, channel_dim=1)
    with torch.no_grad():
        module.coefficients[2].mul_(-2.0)
    x = torch.randn(2, 4, 5, 5)
    shared = L.HermiteActivation(3, init="paper")
    y, y_shared = module(x), shared(x)
    torch.testing.assert_close(y[:, [0, 1, 3]], y_shared[:, [0, 1, 3]])
    torch.testing.assert_close(y[:, 2], -2.0 * y_shared[:, 2])


def test_per_channel_size_mismatch_names_the_shapes():
    module = L.build_activation("fourier(degree=3, per_channel=8)")
    with pytest.raises(ValueError, match="per_channel=8.*size 5"):
        module(torch.randn(2, 5))


# ---- initialisation -----------------------------------------------------------------------------------
def _gauss_hermite_gains(module, nodes=200):
    """E[F^2], E[F'^2] under N(0,1) by Gauss-Hermite quadrature (for the smooth families)."""
    x, w = hermite_e.hermegauss(nodes)
    w = w / math.sqrt(2 * math.pi)
    xt = torch.tensor(x, requires_grad=True)
    y = module.double()(xt)
    (dy,) = torch.autograd.grad(y.sum(), xt)
    return float((w * _np(y) ** 2).sum()), float((w * _np(dy) ** 2).sum())


def _monte_carlo_gains(module, n=2_000_000):
    x = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    y = module.double()(x)
    (dy,) = torch.autograd.grad(y.sum(), x)
    return float((y * y).mean().detach()), float((dy * dy).mean())


@pytest.mark.parametrize("degree", [3, 5, 8])
def test_hermite_paper_init_gains(degree):
    expected = sum(1 / math.factorial(j) for j in range(degree)) / math.e  # 0.9197 at n = 3
    fwd, bwd = _gauss_hermite_gains(L.HermiteActivation(degree))
    assert fwd == pytest.approx(expected, rel=1e-6) and bwd == pytest.approx(expected, rel=1e-6)  # float32 coefficients


@pytest.mark.parametrize("family", ["hermite", "fourier"])
@pytest.mark.parametrize("degree", [2, 3, 5])
def test_unit_init_gains_by_gauss_hermite_quadrature(family, degree):
    fwd, bwd = _gauss_hermite_gains(L.build_activation({"name": family, "degree": degree, "init": "unit"}))
    assert fwd == pytest.approx(1.0, abs=1e-5) and bwd == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("spec", ["tropical(degree=3, init=unit)", "tropical(degree=5, init=unit)",
                                  "tropical(degree=5, init=paper)", "tropical_rational(degree=4, init=unit)"])
def test_unit_gain_piecewise_linear_by_monte_carlo(spec):
    fwd, bwd = _monte_carlo_gains(L.build_activation(spec))
    assert fwd == pytest.approx(1.0, abs=0.01) and bwd == pytest.approx(1.0, abs=0.01)


def test_fourier_paper_init_fixes_half_energy_under_uniform_input():
    """The theory's setting: x uniform on one period. Paper init hits the sin-cos formula; torchortho's half."""
    n = 5
    x = (torch.rand(2_000_000, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2 - 1) * math.pi
    x.requires_grad_()
    c2 = FOURIER_C**2
    expected_fwd = c2 * (1 - 1 / math.factorial(n) ** 2 + sum(1 / math.factorial(k) ** 2 for k in range(1, n + 1)))
    expected_bwd = c2 * sum(1 / math.factorial(k - 1) ** 2 for k in range(1, n + 1))
    gains = {}
    for init in ("paper", "torchortho"):
        y = L.FourierActivation(n, init=init).double()(x)
        (dy,) = torch.autograd.grad(y.sum(), x)
        gains[init] = (float((y * y).mean().detach()), float((dy * dy).mean()))
    assert gains["paper"][0] == pytest.approx(expected_fwd, rel=5e-3)
    assert gains["paper"][1] == pytest.approx(expected_bwd, rel=5e-3)
    assert gains["torchortho"][1] == pytest.approx(expected_bwd / 2, rel=5e-3)  # the documented slip


@pytest.mark.parametrize("degree", [2, 3, 5, 8])
def test_tropical_unit_init_leaves_no_dead_piece(degree):
    module = L.TropicalActivation(degree, init="unit")
    x = torch.linspace(-3, 3, 10001)
    lines = x[:, None] * torch.arange(degree + 1) + module.intercepts.detach()
    winners = set(lines.argmax(1).tolist())
    assert winners == set(range(degree + 1))
    paper_winners = set((x[:, None] * torch.arange(degree + 1) + L.TropicalActivation(degree).intercepts.detach()).argmax(1).tolist())
    assert len(paper_winners) == 2  # the paper's equal intercepts: only the first and last piece ever win


def test_inits_are_deterministic_and_leave_the_rng_alone():
    state = torch.get_rng_state()
    a = L.build_activation("tropical_rational:5")
    b = L.build_activation("fourier(degree=4, init=gelu)")
    assert torch.equal(state, torch.get_rng_state())
    torch.testing.assert_close(a.num_slopes, L.build_activation("tropical_rational:5").num_slopes, rtol=0, atol=0)
    torch.testing.assert_close(b.amplitudes, L.build_activation("fourier(degree=4, init=gelu)").amplitudes, rtol=0, atol=0)


# ---- parity with the reference library ------------------------------------------------------------------
torchortho = pytest.importorskip("torchortho")


@pytest.mark.parametrize("degree", [2, 3, 5, 8])
def test_torchortho_parity_hermite_fourier_tropical(degree):
    x = torch.linspace(-3, 3, 2001)
    pairs = [
        (torchortho.HermiteActivation(degree), L.HermiteActivation(degree, init="torchortho")),
        (torchortho.FourierActivation(degree), L.FourierActivation(degree, init="torchortho")),
        (torchortho.TropicalActivation(degree), L.TropicalActivation(degree, init="torchortho")),
    ]
    for theirs, ours in pairs:
        with torch.no_grad():
            torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


def test_torchortho_parity_tropical_rational_same_seed():
    torch.manual_seed(123)
    theirs = torchortho.TropicalRationalActivation(6)
    torch.manual_seed(123)
    ours = L.TropicalRationalActivation(6, init="torchortho")
    x = torch.linspace(-5, 5, 1001)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-6, atol=1e-6)


def test_hermite_gradient_at_zero_is_right_where_torchortho_is_not():
    x = torch.zeros(1, requires_grad=True)
    L.HermiteActivation(3)(x).sum().backward()
    # F'(0) = a1 P0 + a2 P1(0) + a3 P2(0) = e^-1/2 (1 - 1/2) = 0.3033
    assert float(x.grad) == pytest.approx(math.exp(-0.5) * 0.5, rel=1e-6)


# ---- fitting --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec,target,max_error", [
    ("hermite(degree=8, init=gelu)", "gelu", 0.005),
    ("hermite(degree=5, init=silu)", "silu", 0.06),
    ("fourier(degree=5, init=gelu)", "gelu", 0.005),
    ("tropical(degree=5, init=gelu)", "gelu", 0.15),
    ("tropical_rational(degree=6, init=gelu)", "gelu", 0.08),
])
def test_fit_max_error_on_minus3_to_3(spec, target, max_error):
    module = L.build_activation(spec)
    x = torch.linspace(-3, 3, 3001, dtype=torch.float64)
    target_module = L.build_activation(target).double()
    with torch.no_grad():
        err = float((module.double()(x) - target_module(x)).abs().max())
    assert err < max_error


def test_hermite_fit_is_the_least_squares_solution():
    """Perturbing the closed-form solution in any direction must not lower the fit objective."""
    from lit_ortho.activations.init import FIT_RANGE, FIT_SIGMA

    module = L.build_activation("hermite(degree=5, init=gelu)").double()
    x = torch.linspace(-FIT_RANGE, FIT_RANGE, 801, dtype=torch.float64, requires_grad=True)
    w = torch.exp(-0.5 * (x.detach() / FIT_SIGMA) ** 2)
    gx = torch.nn.functional.gelu(x)
    (dg,) = torch.autograd.grad(gx.sum(), x)

    def objective(coefficients):
        y = module.function(x, coefficients)
        (dy,) = torch.autograd.grad(y.sum(), x, create_graph=True)
        return float((w * ((y - gx.detach()) ** 2 + (dy - dg) ** 2)).sum().detach())

    best = module.coefficients.detach().clone()
    base = objective(best)
    for i in range(best.numel()):
        for step in (1e-3, -1e-3):
            probe = best.clone()
            probe[i] += step
            assert objective(probe) > base


# ---- numerics -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", BUILTIN_FAMILIES)
def test_bf16_autocast_keeps_float32_coefficients_and_computes_in_float32(family):
    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 32)
    act = L.build_activation({"name": family, "degree": 3})
    x = torch.randn(8, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = linear(x)
        y = act(h)
    assert h.dtype == torch.bfloat16 and y.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in act.parameters())
    with torch.no_grad():
        expected = act(h.float()).to(torch.bfloat16)  # float32 math on the same bf16 input, rounded once
    assert torch.equal(y.detach(), expected)
    y.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in act.parameters())


@pytest.mark.parametrize("spec", ["hermite:3", "hermite:8", "hermite:32", "hermite(degree=32, init=gelu)",
                                  "fourier:32", "tropical:32", "tropical_rational:8"])
def test_no_nan_for_inputs_up_to_1e3(spec):
    module = L.build_activation(spec)
    x = torch.cat([torch.linspace(-1e3, 1e3, 20001), torch.tensor([-1e3, 1e3])]).requires_grad_()
    y = module(x)
    y.sum().backward()
    assert not torch.isnan(y).any() and not torch.isnan(x.grad).any()
    assert all(not torch.isnan(p.grad).any() for p in module.parameters())


# ---- memory: autograd keeps only what GELU keeps --------------------------------------------------------
def saved_bytes(module, x):
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    return total


@pytest.mark.parametrize("spec", ["hermite:3", "hermite:8", "fourier:5", "tropical:5", "tropical_rational:6",
                                  "hermite(degree=3, per_channel=256)"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_saved_for_backward_is_at_most_1_1x_gelu(spec, dtype):
    x = torch.randn(512, 256, dtype=dtype, requires_grad=True)  # coefficients: a few KB on top
    gelu = saved_bytes(torch.nn.GELU(), x)
    ours = saved_bytes(L.build_activation(spec), x)
    assert gelu == x.numel() * x.element_size()
    assert ours <= 1.1 * gelu


def test_statistics_accumulate_only_when_asked():
    module = L.build_activation("hermite:3")
    x = torch.randn(1000)
    module(x)
    assert float(module.statistics.abs().sum()) == 0.0
    module.record_statistics = True
    y = module(x)
    module(x)
    stats = {k: float(v) for k, v in module.recorded_statistics().items()}
    assert stats["count"] == 2000 and stats["output_nonfinite"] == 0
    yd = y.detach().double()
    assert stats["input_sum"] == pytest.approx(2 * float(x.double().sum()), rel=1e-9)
    assert stats["output_sum_of_squares"] == pytest.approx(2 * float((yd**2).sum()), rel=1e-6)
    assert stats["output_sum_of_fourth_powers"] == pytest.approx(2 * float((yd**4).sum()), rel=1e-6)
    assert stats["output_absmax"] == float(yd.abs().max())  # a running maximum, not a sum
    module.reset_statistics()
    assert float(module.statistics.abs().sum()) == 0.0


# ---- Hermite is exact wherever float32 holds the value, and the correctly signed infinity elsewhere -----------
def _hermite_exact(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """sum_k a_k He_k(x)/k! in exact rational arithmetic, rounded to float64 (inf where float64 overflows)."""
    from fractions import Fraction

    out = []
    coeffs = [Fraction(float(c)) for c in a]
    for value in x.double().tolist():
        xv = Fraction(value)
        he_prev, he, total = Fraction(1), xv, coeffs[0] + coeffs[1] * xv if len(coeffs) > 1 else coeffs[0]
        fact = 1
        for k in range(1, len(coeffs) - 1):
            he_prev, he = he, xv * he - k * he_prev
            fact *= k + 1
            total += coeffs[k + 1] * he / fact
        try:
            out.append(float(total))
        except OverflowError:
            out.append(math.copysign(math.inf, total))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("degree", range(1, 33))
def test_hermite_matches_exact_arithmetic_over_1e4(degree):
    gen = torch.Generator().manual_seed(degree)
    a = torch.randn(degree + 1, generator=gen)
    x = torch.cat([torch.linspace(-1e4, 1e4, 401), torch.linspace(-6, 6, 241), torch.tensor([-2000.0, 2160.0, 537.0, 320.0])])
    y = L.build_activation(f"hermite:{degree}").function(x, a)
    exact = _hermite_exact(x, a)
    fits = exact.abs() < torch.finfo(torch.float32).max
    # condition-aware bound: a few float32 roundings of the largest term |a_k P_k(x)| of the sum
    from lit_ortho.activations.hermite import hermite_basis

    xd = x.double()
    basis = torch.stack([torch.ones_like(xd), xd, *hermite_basis(xd, degree)][: degree + 1])
    terms = (a.double()[:, None] * basis).abs().amax(0)
    error = (y.double() - exact).abs()
    assert (error[fits] <= 2e-5 * terms[fits] + 1e-6).all(), (x[fits][error[fits].argmax()], error[fits].max())
    assert torch.isinf(y[~fits]).all() and (torch.sign(y[~fits]) == torch.sign(exact[~fits])).all()
    assert not torch.isnan(y).any()
    from lit_ortho.activations.hermite import clenshaw  # the saturating form torch.compile traces: the same values

    assert torch.equal(clenshaw(x, list(a), saturate=True), y)


def test_saturating_clenshaw_equals_the_exact_sign_branch_on_huge_inputs():
    """The compiled path's saturating recurrence against the eager exact branch: bitwise, infinities and their
    signs included, for 300 random coefficient sets spanning ~8 decades (tiny leading coefficients too) at
    |x| up to float32's range and beyond (inf)."""
    from lit_ortho.activations.hermite import clenshaw

    gen = torch.Generator().manual_seed(1)
    finite_overflows = 0
    for _ in range(300):
        degree = int(torch.randint(1, 33, (1,), generator=gen))
        a = torch.randn(degree + 1, generator=gen) * torch.exp(3 * torch.randn(degree + 1, generator=gen))
        x = torch.exp(100 * torch.rand(200, generator=gen)) * torch.sign(torch.randn(200, generator=gen))
        exact, saturated = clenshaw(x, list(a), saturate=False), clenshaw(x, list(a), saturate=True)
        assert torch.equal(saturated, exact), (degree, a)
        finite_overflows += int((torch.isinf(exact) & torch.isfinite(x)).sum())
    assert finite_overflows > 10_000  # finite inputs whose value overflows: the case the two forms handle differently


@pytest.mark.parametrize("degree", [3, 8, 16, 32])
def test_hermite_gradients_never_nan_at_huge_inputs(degree):
    act = L.build_activation(f"hermite:{degree}")
    x = torch.tensor([-3e5, -2000.0, -1.0, 0.0, 1.0, 2000.0, 3e5, 1e30, -1e30], requires_grad=True)
    y = act(x)
    y.sum().backward()
    assert not torch.isnan(y).any() and not torch.isnan(x.grad).any()
    assert not torch.isnan(act.coefficients.grad).any()
    a = act.coefficients.detach()
    lead = torch.sign(a[-1]) * torch.tensor([1.0, (-1.0) ** degree])  # sign of a_n x^n at +inf and -inf
    assert torch.equal(act(torch.tensor([float("inf"), -float("inf")])), lead * torch.inf)


@pytest.mark.parametrize("spec", ["hermite:3", "fourier:3", "tropical:3", "tropical_rational:3",
                                  "hermite(degree=4, per_channel=3, channel_dim=1)", "fourier(degree=2, per_channel=3, channel_dim=1)"])
def test_float64_module_gradcheck_for_inputs_and_parameters(spec):
    """A .double() module computes in float64 with its float64 parameters as they are."""
    module = L.build_activation(spec).double()
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in module.named_parameters()]
    x = (torch.randn(2, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 1.5).requires_grad_()

    def f(x, *ps):
        return torch.func.functional_call(module, dict(zip(names, ps)), (x,))

    assert f(x, *params).dtype == torch.float64
    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-5)
