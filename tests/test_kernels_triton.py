"""The Triton kernels against the eager path: forward, input gradient and coefficient gradients.

Runs on a CUDA GPU when there is one; otherwise on CPU tensors under the Triton interpreter, which
must be switched on before triton is imported: ``tests/test_kernels.py`` runs this file in a
subprocess with ``TRITON_INTERPRET=1``, and in a plain run (no GPU, no interpreter) it is skipped.
Interpreted kernels are slow, so inputs have a few thousand elements at most; the interpreter's
launch configuration uses small tiles so that masks, several programs and the grid-stride loop of
the backward kernels are all exercised.
"""

import pytest
import torch

import lit_ortho as L
from _families import BUILTIN_FAMILIES
from lit_ortho.activations import backends, kernels

if not kernels.TRITON_AVAILABLE or not (kernels.INTERPRET or torch.cuda.is_available()):
    pytest.skip("Triton kernels need a CUDA GPU or TRITON_INTERPRET=1 (tests/test_kernels.py runs this file "
                "under the interpreter in a subprocess)", allow_module_level=True)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# float32: both paths round differently inside (a GPU contracts w x - phi into one FMA, the eager path
# rounds twice), so allow a few units of float32 rounding of the intermediate values.
EPS = {torch.float32: 4e-6, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}


def pair(spec, seed=0):
    """(triton module, eager module) with the same random coefficients."""
    torch.manual_seed(seed)
    ours = L.build_activation(spec)
    with torch.no_grad():  # random coefficients, so no property of an init is relied on
        for p in ours.parameters():
            p.add_(0.25 * torch.randn_like(p))
    ref = L.build_activation(spec)
    ref.load_state_dict(ours.state_dict())
    ours.backend, ref.backend = "triton", "eager"
    return ours.to(DEVICE), ref.to(DEVICE)


def run(module, x, grad):
    x = x.detach().requires_grad_(x.requires_grad)  # same strides as given
    module.zero_grad(set_to_none=True)
    y = module(x)
    y.backward(grad)
    grads = {n: p.grad for n, p in module.named_parameters()}
    return y, x.grad, grads


def assert_match(ours, ref, x, grad, coef_rtol=2e-4, tol=None):
    y, gx, g = run(ours, x, grad)
    y_ref, gx_ref, g_ref = run(ref, x, grad)
    assert y.dtype == x.dtype and y.shape == x.shape and y.stride() == y_ref.stride()
    # Both compute in float32 and round once to x's dtype: at most an ulp or two apart.
    tol = 4 * EPS[x.dtype] if tol is None else tol
    scale = y_ref.detach().float().abs().max().item() + 1.0
    torch.testing.assert_close(y.float(), y_ref.float(), rtol=tol, atol=tol * scale)
    if x.requires_grad:
        assert gx.dtype == x.dtype
        gscale = gx_ref.float().abs().max().item() + 1.0
        torch.testing.assert_close(gx.float(), gx_ref.float(), rtol=tol, atol=tol * gscale)
    for name, g_ref_p in g_ref.items():
        if g_ref_p is None:
            assert g[name] is None
            continue
        assert g[name].dtype == torch.float32 and g[name].shape == g_ref_p.shape
        # float32 sums of the same products in another order
        torch.testing.assert_close(g[name], g_ref_p, rtol=coef_rtol, atol=coef_rtol * (g_ref_p.abs().max().item() + 1.0))


def inputs(shape, dtype, seed=1, scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen) * scale).to(dtype).to(DEVICE).requires_grad_()
    grad = torch.randn(shape, generator=gen).to(dtype).to(DEVICE)
    return x, grad


SPECS = {
    "hermite": "hermite:3",
    "fourier": "fourier:5",
    "tropical": "tropical:5",
    "tropical_rational": "tropical_rational:6",
}


@pytest.mark.parametrize("family", BUILTIN_FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_shared_coefficients_match_eager(family, dtype):
    ours, ref = pair(SPECS[family])
    x, grad = inputs((37, 61), dtype)  # 2257 elements: not a multiple of any tile
    assert_match(ours, ref, x, grad)


@pytest.mark.parametrize("family", BUILTIN_FAMILIES)
def test_per_channel_last_dim_matches_eager(family):
    C = 40  # not a power of two: masked channel columns
    ours, ref = pair(f"{SPECS[family].replace(':', '(degree=')}, per_channel={C})")
    x, grad = inputs((3, 11, C), torch.bfloat16)
    assert_match(ours, ref, x, grad)


@pytest.mark.parametrize("family", BUILTIN_FAMILIES)
def test_per_channel_nchw_matches_eager(family):
    spec = f"{SPECS[family].replace(':', '(degree=')}, per_channel=6, channel_dim=1)"
    ours, ref = pair(spec)
    x, grad = inputs((2, 6, 9, 7), torch.float32)
    assert_match(ours, ref, x, grad)
    # channels_last memory: the output keeps the input's strides
    x_cl = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    assert_match(ours, ref, x_cl, grad)


@pytest.mark.parametrize("family", BUILTIN_FAMILIES)
def test_non_contiguous_and_strided_inputs(family):
    ours, ref = pair(SPECS[family])
    x, grad = inputs((30, 50), torch.float32)
    assert_match(ours, ref, x.detach().t().requires_grad_(), grad.t())  # dense, transposed
    assert_match(ours, ref, x.detach()[:, ::3].requires_grad_(), grad[:, ::3])  # not dense
    expanded = torch.ones((), device=DEVICE).expand(30, 50)  # y.sum().backward()'s stride-0 gradient
    assert_match(ours, ref, x, expanded)


@pytest.mark.parametrize("spec", ["hermite:1", "hermite(degree=12, init=unit)", "fourier:1", "fourier:7",
                                  "tropical:1", "tropical_rational:2", "tropical(degree=8, init=unit)"])
def test_other_degrees(spec):
    ours, ref = pair(spec)
    x, grad = inputs((1500,), torch.float32)
    assert_match(ours, ref, x, grad)


def test_large_inputs_and_fourier_range_reduction():
    """|w x| up to ~2000: the sin/cos range reduction; Hermite-32's saturation; no NaN anywhere."""
    x = torch.linspace(-300, 300, 701, device=DEVICE)
    grad = torch.ones_like(x)
    for spec in ["fourier:7", "hermite:32", "tropical:32"]:
        ours, ref = pair(spec)
        y, gx, g = run(ours, x.requires_grad_(), grad)
        assert torch.isfinite(y).all() and torch.isfinite(gx).all()
        assert all(torch.isfinite(t).all() for t in g.values())
        if spec.startswith("fourier"):  # |z| ~ 2000 carries float32 rounding of ~1e-4 in either path
            assert_match(ours, ref, x, grad, coef_rtol=1e-3, tol=1e-4)


def test_only_the_gradients_asked_for():
    ours, ref = pair("fourier:3")
    x, grad = inputs((500,), torch.float32)
    # frozen input: coefficient gradients only
    x_frozen = x.detach()
    assert_match(ours, ref, x_frozen, grad)
    # frozen coefficients: input gradient only
    for m in (ours, ref):
        m.requires_grad_(False)
    y = ours(x)
    (gx,) = torch.autograd.grad(y, x, grad)
    y_ref = ref(x)
    (gx_ref,) = torch.autograd.grad(y_ref, x, grad)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-5, atol=1e-5)


def test_backward_is_deterministic():
    ours, _ = pair("hermite(degree=3, per_channel=24)")
    x, grad = inputs((50, 24), torch.float32)
    _, gx1, g1 = run(ours, x, grad)
    _, gx2, g2 = run(ours, x, grad)
    assert torch.equal(gx1, gx2) and torch.equal(g1["coefficients"], g2["coefficients"])


def test_empty_input():
    ours, _ = pair("tropical:3")
    x = torch.empty(0, 5, device=DEVICE, requires_grad=True)
    y = ours(x)
    y.sum().backward()
    assert y.shape == (0, 5) and x.grad.shape == (0, 5)
    assert torch.equal(ours.intercepts.grad, torch.zeros_like(ours.intercepts))


def test_saves_only_the_input_for_backward():
    ours, _ = pair("fourier:5")
    x, _ = inputs((64, 32), torch.bfloat16)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        ours(x)
    big = [t for t in saved if t.numel() == x.numel()]
    assert len(big) == 1 and big[0].dtype == x.dtype  # x itself; the rest are the coefficients


@pytest.mark.parametrize("family", BUILTIN_FAMILIES)
def test_opcheck(family):
    """Schema, fake (meta) implementation, autograd registration, AOT dispatch with dynamic shapes."""
    from lit_ortho.activations.kernels import ops

    module = L.build_activation(f"{SPECS[family].replace(':', '(degree=')}, per_channel=8)").to(DEVICE)
    x = torch.randn(5, 8, device=DEVICE, requires_grad=True)
    values = [getattr(module, n).detach().float().requires_grad_(n in dict(module.named_parameters()))
              for n in module.value_names]
    torch.library.opcheck(ops.op(family), (x, *values, -1))
    shared = L.build_activation(SPECS[family]).to(DEVICE)
    values = [getattr(shared, n).detach().float().requires_grad_(n in dict(shared.named_parameters()))
              for n in shared.value_names]
    torch.library.opcheck(ops.op(family), (x.detach()[:, :6].requires_grad_(), *values, 1))


def test_torch_compile_fullgraph_traces_the_custom_ops():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 32), L.build_activation("hermite(degree=3, backend=triton)"),
        torch.nn.Linear(32, 32), L.build_activation("fourier(degree=3, backend=triton, per_channel=32)"),
        torch.nn.Linear(32, 32), L.build_activation("tropical(degree=4, backend=triton)"),
        torch.nn.Linear(32, 8), L.build_activation("tropical_rational(degree=3, backend=triton)"),
    ).to(DEVICE)
    x = torch.randn(20, 16, device=DEVICE)
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    y = compiled(x)
    y.square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    y_ref = model(x)
    y_ref.square().sum().backward()
    torch.testing.assert_close(y, y_ref)
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(g, p.grad)


def test_auto_selects_triton_for_these_inputs_only_on_cuda():
    x = torch.randn(4, 8, device=DEVICE)
    assert backends.use_triton("auto", x) == (DEVICE == "cuda")
    assert backends.use_triton("triton", x)


@pytest.mark.parametrize("family", BUILTIN_FAMILIES)
def test_double_backward_matches_eager(family):
    """create_graph=True (gradient penalties): the kernels' backward is not differentiable, so the op
    recomputes with the eager Function; the second-order gradients must match eager's."""
    ours, ref = pair(SPECS[family])
    x, _ = inputs((40, 7), torch.float32)

    def penalty_grads(module):
        xx = x.detach().requires_grad_()
        (gx,) = torch.autograd.grad(module(xx).sum(), xx, create_graph=True)
        if family == "tropical":  # F' = s * (winning slope): fixed, so nothing to differentiate
            assert not gx.requires_grad
            return [gx]
        params = list(module.parameters())
        grads = torch.autograd.grad(gx.square().sum(), [xx, *params], allow_unused=True)
        return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, [xx, *params])]

    for got, expected in zip(penalty_grads(ours), penalty_grads(ref)):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
