"""The C++ CPU kernels for per-channel coefficients on the innermost dim of memory (kernels/cpu):
their numbers against float64 eager autograd, the dispatch that picks them (eager and under torch.compile), their
custom ops, and how they are built and cached (a missing compiler, an unwritable cache, a build killed midway)."""

import contextlib
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings

import pytest
import torch

import lit_ortho as L
from _families import BUILTIN_FAMILIES
from lit_ortho.activations import FAMILIES, backends, fourier, tropical
from lit_ortho.activations.kernels import cpu, ops
from test_kernels import _have_cxx, _module, _ties_and_dead_lines

pytestmark = pytest.mark.skipif(not _have_cxx(), reason="the CPU kernels are compiled with a C++ compiler")

DEGREES = {"hermite": [1, 3, 8], "fourier": [1, 5], "tropical": [1, 5], "tropical_rational": [1, 6]}
CASES = [(family, degree) for family in BUILTIN_FAMILIES for degree in DEGREES[family]]


@contextlib.contextmanager
def _threads(n):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _values(module):
    return [getattr(module, n).detach().float() for n in module.value_names]


def _eager_float64(family, x, grad, values, channel_dim):
    """F, dF/dx and the value gradients by the family's eager autograd Function in float64."""
    xd = x.detach().double().requires_grad_()
    vd = [v.detach().double().requires_grad_(learn) for v, learn in zip(values, FAMILIES[family].learnable_mask)]
    y = FAMILIES[family].eager(xd, *vd, channel_dim=channel_dim)
    y.backward(grad.double())
    return y.detach(), xd.grad, [v.grad for v in vd if v.requires_grad]


def _kernels(family, x, grad, values, channel_dim, need_x=True):
    launchers = FAMILIES[family].cpu
    y = launchers.forward(x, *values, channel_dim)
    dx, *value_grads = launchers.backward(grad, x, *values, channel_dim, need_x, True)
    return y, dx, value_grads


def _assert_close_scaled(got, expected, rtol):
    """``got`` within ``rtol`` of the largest |expected| (float32 sums of thousands of terms against float64)."""
    scale = 1.0 + expected.abs().max().item()
    torch.testing.assert_close(got.double(), expected.double(), rtol=0, atol=rtol * scale)


LAYOUTS = {  # id: (per_channel, channel_dim, shape, the kernels' layout)
    "columns-tails": (True, -1, (203, 37), "columns"),  # rows that do not fill a block of 8, a scalar channel tail
    "columns-3-D": (True, -1, (5, 3, 40), "columns"),
    "columns-few-rows": (True, -1, (3, 17), "columns"),  # fewer rows than a tile
    "columns-wide": (True, -1, (21, 2053), "columns"),  # C >= 2048: all forwards, and backwards of few sums, in 8-row tiles
    # two tall tiles a thread (the last short), a tail of 6 channels; the cheap backwards in 8-row tiles (C >= 512)
    "columns-tiles": (True, -1, (1101, 1910), "columns"),
    "shared": (False, -1, (1000, 37), "shared"),
    "shared-5": (False, -1, (5,), "shared"),  # less than one block: zero padding
    "dim-1-short-rows": (True, 1, (3, 7, 130), "short_rows"),  # walked channel by channel
    "dim-0-long-rows": (True, 0, (6, 40000), "rows"),  # memory order, rows of two segments
    "dim-1-long-rows": (True, 1, (3, 5, 4200), "rows"),  # memory order, the channel changing every row (NHWC's dim 1)
}


@pytest.mark.parametrize("family,degree", CASES, ids=[f"{f}:{d}" for f, d in CASES])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_kernels_match_float64_eager(family, degree, layout):
    """F, dx and every coefficient gradient against float64 autograd of the eager Function, in both of the kernels'
    layouts (per channel on the innermost dim; rows of a contiguous tensor), with partial blocks and vectors."""
    per_channel, channel_dim, shape, kind = LAYOUTS[layout]
    torch.manual_seed(degree)
    C = shape[channel_dim] if per_channel else None
    module = L.build_activation({"name": family, "degree": degree, "per_channel": C, "channel_dim": channel_dim,
                                 "init": "unit"})
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn_like(p))
    values = _values(module)
    x, grad = 1.5 * torch.randn(shape), torch.randn(shape)
    assert cpu.layout(x, per_channel, channel_dim) == kind
    y, dx, value_grads = _kernels(family, x, grad, values, channel_dim)
    y64, dx64, grads64 = _eager_float64(family, x, grad, values, channel_dim)
    assert y.dtype == dx.dtype == torch.float32 and y.shape == dx.shape == x.shape
    _assert_close_scaled(y, y64, 2e-6)
    _assert_close_scaled(dx, dx64, 2e-6)
    assert len(value_grads) == len(grads64)
    for got, expected in zip(value_grads, grads64):  # float32 sums of up to 37,000 terms, as inductor's: 1e-4
        assert got.shape == expected.shape
        _assert_close_scaled(got, expected, 1e-4)


def test_layout_is_the_moved_channel_dims_contiguity_without_making_a_view():
    """cpu.layout decides a contiguous tensor's walk from its sizes. It must say "columns" exactly where moving the
    channel dim innermost leaves the tensor contiguous, over shapes with dims of size 1, strided and channels_last
    views and every channel dim, and raise torch's IndexError for a dim out of range."""
    def by_definition(x, channel_dim):
        if x.movedim(channel_dim, -1).is_contiguous():
            return "columns"
        if not x.is_contiguous():
            return None
        return "rows" if math.prod(x.shape[channel_dim % x.dim() + 1 :]) >= cpu.SHORT_ROW else "short_rows"

    gen = torch.Generator().manual_seed(0)
    checked = 0
    sizes = [1, 2, 3, 64, 5000]
    for _ in range(300):
        dims = int(torch.randint(1, 5, (), generator=gen))
        shape = [sizes[int(i)] for i in torch.randint(0, len(sizes), (dims,), generator=gen)]
        if math.prod(shape) > 1 << 21:
            continue
        x = torch.empty(shape)
        views = [x, x.transpose(0, -1), x[..., ::2]]
        if x.dim() == 4:
            views.append(x.contiguous(memory_format=torch.channels_last))
        for view in views:
            if view.numel() == 0:
                continue
            for channel_dim in range(-view.dim(), view.dim()):
                assert cpu.layout(view, True, channel_dim) == by_definition(view, channel_dim), (view.shape, channel_dim)
                checked += 1
    assert checked > 1000
    for bad in (2, -3):
        with pytest.raises(IndexError, match="Dimension out of range"):
            cpu.layout(torch.empty(4, 5), True, bad)


STREAMED = {  # outputs of at least the .cpp's STREAM_BYTES (16 MiB), which it writes with non-temporal stores
    "columns-wide": (True, -1, (2048, 2048)),  # tiles of 8 rows across all channels
    "shared": (False, -1, (4, 1 << 20)),
    "rows-unaligned": (True, 1, (40, 5, 21000)),  # every other row starts mid-vector: plain stores there
    "columns-tall": (True, -1, (16384, 256)),  # the backward's dx down tall tiles (STREAM_TALL_BACKWARD; C < 512)
}
STREAMED_CASES = [(family, degree, layout) for layout in ("columns-wide", "shared", "rows-unaligned")
                  for family, degree in (("hermite", 3), ("tropical", 5), ("tropical_rational", 6))]
STREAMED_CASES += [(family, degree, "columns-tall") for family, degree in
                   (("hermite", 3), ("fourier", 5), ("tropical_rational", 6))]


@pytest.mark.parametrize("family,degree,layout", STREAMED_CASES)
def test_streamed_outputs_match_float64_eager(family, degree, layout):
    """The walks that stream large outputs past the caches (in memory order Tropical and Tropical-rational both ways
    and Hermite's dx; the backward's dx down tall tiles for Hermite, Fourier and Tropical-rational), at a size where
    they do: every element of F and dx and the coefficient gradients against float64 eager, rows that start
    mid-vector included (a non-temporal store there would fault)."""
    per_channel, channel_dim, shape = STREAMED[layout]
    assert torch.Size(shape).numel() * 4 >= 16 << 20
    torch.manual_seed(0)
    C = shape[channel_dim] if per_channel else None
    module = L.build_activation({"name": family, "degree": degree, "per_channel": C, "channel_dim": channel_dim})
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn_like(p))
    values = _values(module)
    x, grad = 1.5 * torch.randn(shape), torch.randn(shape)
    with _threads(2):
        y, dx, value_grads = _kernels(family, x, grad, values, channel_dim)
    y64, dx64, grads64 = _eager_float64(family, x, grad, values, channel_dim)
    _assert_close_scaled(y, y64, 2e-6)
    _assert_close_scaled(dx, dx64, 2e-6)
    for got, expected in zip(value_grads, grads64, strict=True):
        _assert_close_scaled(got, expected, 1e-4)


@pytest.mark.parametrize("degree", [3, 8])
@pytest.mark.parametrize("channel_dim", [-1, 0], ids=["columns", "rows"])
def test_hermite_keeps_eagers_signed_infinities(degree, channel_dim):
    """Huge inputs: the saturating recurrence gives eager's values, its correctly signed infinities included, and
    gradients without NaN where the inputs are finite (as the compiled twin, tests/test_kernels.py), however many
    threads: one thread's part of a sum may overflow to +inf and another's to -inf."""
    huge = torch.tensor([-1e30, -3e13, -3e5, -2000.0, -1.5, 0.0, 0.7, 2000.0, 3e5, 3e13, 1e30, float("inf"), -float("inf")])
    x = huge[:, None].expand(13, 16).contiguous()
    if channel_dim == 0:  # each channel a row of the 13 values
        x = x.t().contiguous()
    module = L.build_activation({"name": "hermite", "degree": degree, "per_channel": 16, "channel_dim": channel_dim,
                                 "init": "unit"})
    with torch.no_grad():
        module.coefficients.add_(0.25 * torch.randn(module.coefficients.shape, generator=torch.Generator().manual_seed(1)))
    values = _values(module)
    y = FAMILIES["hermite"].cpu.forward(x, *values, channel_dim)
    expected = FAMILIES["hermite"].eager(x, *values, channel_dim=channel_dim)
    assert torch.isinf(expected).sum() >= 4 * 16
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=0)  # the infinities exactly; finite values to rounding
    finite = x[:-2] if channel_dim == -1 else x[:, :-2].contiguous()
    for threads in (1, 2):
        with _threads(threads):
            dx, grad_a = FAMILIES["hermite"].cpu.backward(torch.ones_like(finite), finite, *values, channel_dim, True, True)
        assert not torch.isnan(dx).any() and not torch.isnan(grad_a).any(), (threads, grad_a[0])


def test_rows_threads_parts_of_one_channel_combine_without_nan():
    """Per channel on dim 1, rows of +1e30 then rows of -1e30: on two threads channel 2 is split between them (10 rows,
    5 each, walked channel by channel). Within each thread's part a lane adds the largest float three times, so the
    odd polynomials' sums reach +inf in one part and -inf in the other. Added saturating (at each flush to the
    thread's sums, and across threads), they are not NaN; plain adds at both give NaN."""
    x = torch.tensor([1e30, -1e30])[:, None, None].expand(2, 5, 40).contiguous()
    module = L.build_activation({"name": "hermite", "degree": 4, "per_channel": 5, "channel_dim": 1, "init": "unit"})
    values = _values(module)
    assert cpu.layout(x, True, 1) == "short_rows"
    for threads in (1, 2):
        with _threads(threads):
            _, grad_a = FAMILIES["hermite"].cpu.backward(torch.ones_like(x), x, *values, 1, True, True)
        assert not torch.isnan(grad_a).any(), (threads, grad_a)
        assert (grad_a[:, 2] > 1e38).all() and (grad_a[:, 4] > 1e38).all(), grad_a  # P_2, P_4 of +-1e30: positive


@pytest.mark.parametrize("K", [2, 3, 7, 12])
def test_breakpoints_in_cpp_equal_the_torch_ones_bitwise(K):
    """The C++ breakpoints (sorted slopes, order, thresholds) against tropical.breakpoints, bit for bit: random lines
    rounded so that many cross at the same float, duplicated lines, equal slopes, huge intercepts, NaN slopes (sorted
    last, in order); shared and per channel, 67 channels: whole vectors of channels and a tail."""
    gen = torch.Generator().manual_seed(K)
    for trial in range(24):
        slopes = torch.randn(67, K, generator=gen).round(decimals=trial % 3)
        intercepts = torch.randn(67, K, generator=gen).round(decimals=trial % 2)
        if trial % 4 == 0:  # a duplicated line
            slopes[:, 1], intercepts[:, 1] = slopes[:, 0], intercepts[:, 0]
        if trial % 5 == 0:  # a repeated slope with another intercept
            slopes[:, -1] = slopes[:, 0]
        if trial % 7 == 0:
            intercepts = intercepts * 1e30
        if trial % 6 == 1:  # NaN slopes: one in a channel of the vectors, two in the tail's
            slopes[3, K // 2] = slopes[66, 0] = slopes[66, K - 1] = float("nan")
        for args in ((slopes, intercepts), (slopes[0], intercepts[0]), (slopes[66], intercepts[66])):
            for expected, got in zip(tropical.breakpoints(*args), cpu.breakpoints(*args)):
                assert expected.dtype == got.dtype, (trial, expected.dtype, got.dtype)
                torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{trial}: {m}")


@pytest.mark.parametrize("family", ["tropical", "tropical_rational"])
@pytest.mark.parametrize("layout", ["columns-tails", "shared", "dim-1-long-rows"])
def test_max_of_lines_keeps_torch_maximums_nans_and_infinities(family, layout):
    """The forward takes a plain max where the block's inputs and the coefficients are finite, torch.maximum's NaN rule
    elsewhere: inputs of NaN and +-inf in a few rows (a zero slope past the first line makes +-inf give NaN), and a
    channel with a NaN coefficient past the first line, give the eager Function's values, NaN for NaN."""
    per_channel, channel_dim, shape, kind = LAYOUTS[layout]
    C = shape[channel_dim] if per_channel else None
    module = L.build_activation({"name": family, "degree": 5, "per_channel": C, "channel_dim": channel_dim,
                                 "init": "unit"})
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    values = _values(module)
    x = 1.5 * torch.randn(shape, generator=torch.Generator().manual_seed(5))
    flat = x.view(-1)
    flat[7], flat[500], flat[-3], flat[2 * flat.numel() // 3] = float("nan"), float("inf"), -float("inf"), float("inf")
    cases = [values]
    if family == "tropical_rational":  # a zero slope past the first line of the numerator: +-inf x gives 0 * inf
        zero_slope = [v.clone() for v in values]
        zero_slope[0][..., 3] = 0.0
        cases.append(zero_slope)
    nan_coefficient = [v.clone() for v in values]
    nan_coefficient[0 if family == "tropical" else 1][..., 2] = float("nan")  # every channel's intercept of line 2
    cases.append(nan_coefficient)
    for case in cases:
        got = FAMILIES[family].cpu.forward(x, *case, channel_dim)
        expected = FAMILIES[family].eager(x, *case, channel_dim=channel_dim)
        assert torch.isnan(expected).any()
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("per_channel", [None, 37])
def test_fourier_rows_and_gradients_in_cpp_equal_the_torch_ones_bitwise(per_channel):
    """Fourier's C++ helpers (its coefficient rows from its values; its values' gradients from the backward's sums)
    against the torch ops they replace (a cat times the scales, and slices of the sums times 1/k! and c_k/k!), bit for
    bit, per channel and shared."""
    K = 5
    module = L.build_activation({"name": "fourier", "degree": K, "per_channel": per_channel, "channel_dim": -1})
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    bias, amplitudes, phases, frequencies = _values(module)
    for backward in (False, True):
        scales = fourier._cpu_scales(K, backward)
        expected = torch.cat([bias, frequencies, phases, amplitudes] + [amplitudes] * backward, dim=-1) * scales
        if backward:
            expected[..., 1 + 3 * K :] *= frequencies
        rows = torch.full(expected.shape, float("nan"))
        cpu.call(K, "fourier_rows", *fourier._cpu_values(bias, amplitudes, phases, frequencies), bias.numel(), scales,
                 int(backward), rows)
        assert torch.equal(rows, expected), backward
    sums = torch.randn(*bias.shape[:-1], 1 + 3 * K, generator=torch.Generator().manual_seed(2))
    grads = [torch.full(v.shape, float("nan")) for v in (bias, amplitudes, phases, frequencies)]
    cpu.call(K, "fourier_gradients", sums, rows, bias.numel(), scales, *grads)
    terms = slice(1 + 2 * K, 1 + 3 * K)
    weight = rows[..., terms]  # c_k / k!
    expected = [sums[..., :1], sums[..., 1::3] * scales[terms], sums[..., 2::3] * weight, sums[..., 3::3] * -weight]
    for got, want in zip(grads, expected, strict=True):
        assert torch.equal(got, want)


@pytest.mark.parametrize("K", [2, 7])
def test_piece_sums_in_cpp_equal_the_torch_ones_bitwise(K):
    """cpu.piece_sums (G groups at once, each with its max's order and a sign) against tropical.piece_sums group by
    group, bit for bit, per channel and shared: sums in line order, the first and last pieces as they are."""
    gen = torch.Generator().manual_seed(K)
    groups = [(0, 1.0), (1, -1.0), (1, 1.0)]
    for C in (5, None):
        lead = (C,) if C else ()
        cumulative = torch.randn(*lead, len(groups) * K, generator=gen) * 1e3
        order = torch.stack([torch.argsort(torch.rand(*lead, K, generator=gen), dim=-1) for _ in range(2)])
        got = cpu.piece_sums(cumulative, order, groups)
        assert got.shape == (len(groups), *lead, K)
        for g, (m, sign) in enumerate(groups):
            expected = sign * tropical.piece_sums(cumulative[..., g * K : (g + 1) * K], order[m])
            assert torch.equal(got[g], expected), (C, g)
    with pytest.raises(ValueError, match="outside"):
        cpu.piece_sums(cumulative, order, [(2, 1.0)] * 3)


@pytest.mark.parametrize("family", ["tropical", "tropical_rational"])
def test_kernels_pick_eagers_piece_at_ties_and_dead_lines(family):
    """Duplicate lines, lines that never win and inputs exactly on the crossings: the kernels' thresholds pick the
    eager Function's piece (the first maximal line), so dx is the same slope and every line's sum the same (dead
    lines exactly zero)."""
    _, per_channel = _ties_and_dead_lines(family)
    x = (torch.arange(-48, 49) / 8.0)[:, None].expand(97, 2).contiguous()  # channels last: [97, 2]
    grad = torch.randn(97, 2, generator=torch.Generator().manual_seed(4))
    y, dx, value_grads = _kernels(family, x, grad, per_channel, -1)
    xe = x.clone().requires_grad_()
    ve = [v.clone().requires_grad_(learn) for v, learn in zip(per_channel, FAMILIES[family].learnable_mask)]
    ye = FAMILIES[family].eager(xe, *ve, channel_dim=-1)
    ye.backward(grad)
    torch.testing.assert_close(y, ye.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dx, xe.grad, rtol=0, atol=1e-6)
    for got, expected in zip(value_grads, [v.grad for v in ve if v.requires_grad]):
        torch.testing.assert_close(got, expected, rtol=0, atol=2e-5)  # a wrong piece moves a sum by >= 1e-3
    dead = 2 if family == "tropical" else 3  # the (numerator's) line that never wins, see _ties_and_dead_lines
    assert (value_grads[0][:, dead] == 0).all()


@pytest.mark.parametrize("family", BUILTIN_FAMILIES)
def test_module_runs_the_kernels_eager_and_compiled(family):
    """``backend="auto"`` on a large enough CPU input with per-channel values on the last dim runs the C++ ops, in
    eager code and as one node of a ``torch.compile(fullgraph=True)`` graph, with eager's numbers."""
    C = 48
    module = _module(family, per_channel=C)
    reference = _module(family, per_channel=C, backend="eager")
    x = torch.randn(backends.CPU_KERNEL_MIN_ELEMENTS // C + 3, C)
    grad = torch.randn_like(x)
    assert backends.use_cpu_kernels(module.record, "auto", x, _values(module), -1)

    def step(m):
        xx = x.clone().requires_grad_()
        m.zero_grad(set_to_none=True)
        m(xx).backward(grad)
        return [xx.grad] + [p.grad for p in m.parameters()]

    expected = step(reference)
    with torch.profiler.profile() as prof:
        got = step(module)
    names = {e.key for e in prof.key_averages()}
    assert f"lit_ortho::{family}_cpu" in names and f"lit_ortho::{family}_cpu_backward" in names, sorted(names)[:20]
    for a, b in zip(got, expected):
        _assert_close_scaled(a, b, 1e-5)

    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    compiled = torch.compile(module, fullgraph=True, backend=backend)
    got = step(compiled)
    assert len(graphs) == 1
    targets = {str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"}
    assert any(f"lit_ortho.{family}_cpu" in t for t in targets), targets
    for a, b in zip(got, expected):
        _assert_close_scaled(a, b, 1e-5)


def test_first_calls_of_two_families_inside_one_compiled_graph(tmp_path):
    """A fresh process whose first calls of two families' kernels are inside one fullgraph compile: each op is
    registered while torch.compile traces (which it cannot trace itself), and the second must not be missed because
    the first one's registration was already seen (a graph break, an error under fullgraph=True)."""
    code = (
        "import torch, lit_ortho\n"
        "model = torch.nn.Sequential(torch.nn.Linear(12, 32), lit_ortho.build_activation('fourier:5'),\n"
        "    torch.nn.Linear(32, 8), lit_ortho.build_activation({'name': 'tropical', 'degree': 5, 'per_channel': 8}))\n"
        "x = torch.randn(64, 12)\n"
        "y = torch.compile(model, fullgraph=True, backend='aot_eager')(x)\n"
        "y.sum().backward()\n"
        "torch.testing.assert_close(y, model(x), rtol=1e-5, atol=1e-5)\n"
        "from lit_ortho.activations.kernels import ops\n"
        "assert ops._REGISTERED == {'fourier_cpu', 'tropical_cpu'}, ops._REGISTERED\n"
    )
    env = {**os.environ, cpu.CACHE_ENV: str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("family", BUILTIN_FAMILIES)
def test_shared_values_on_a_channels_last_tensor(family):
    """Shared coefficients on an NCHW tensor in channels_last memory (timm's ConvNeXt MLP with 1x1 convolutions): walked
    in memory order, the output in the input's strides; a grad laid out otherwise (contiguous) is matched element for
    element."""
    module = _module(family)
    x = (1.5 * torch.randn(2, 24, 5, 7)).to(memory_format=torch.channels_last)
    grad = torch.randn(2, 24, 5, 7)  # contiguous, unlike x
    assert cpu.layout(x, False, -1) == "shared"
    y, dx, value_grads = _kernels(family, x, grad, _values(module), -1)
    assert y.stride() == dx.stride() == x.stride()
    y64, dx64, grads64 = _eager_float64(family, x, grad, _values(module), -1)
    _assert_close_scaled(y, y64, 2e-6)
    _assert_close_scaled(dx, dx64, 2e-6)
    for got, expected in zip(value_grads, grads64):
        _assert_close_scaled(got, expected, 1e-4)


@pytest.mark.parametrize("spec,shape", [
    ({"name": "tropical_rational", "degree": 6}, (-1, 32)),
    ({"name": "hermite", "degree": 3, "per_channel": 32}, (-1, 32)),
    ({"name": "fourier", "degree": 3, "per_channel": 8, "channel_dim": 1}, (-1, 8, 40)),
], ids=["shared", "columns", "short-rows"])
def test_dynamic_shapes_compile_without_graph_breaks(spec, shape):
    """``torch.compile(dynamic=True, fullgraph=True)``: choosing the layout reads symbolic sizes and strides (sorting the
    strides broke the graph), and three batch sizes give eager's numbers."""
    torch._dynamo.reset()
    module = L.build_activation(spec)
    reference = L.build_activation({**spec, "backend": "eager"})
    reference.load_state_dict(module.state_dict())
    compiled = torch.compile(module, fullgraph=True, dynamic=True, backend="aot_eager")
    for n in (5, 9, 17):
        x = torch.randn(n, *shape[1:])
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = compiled(xa), reference(xb)
        ya.sum().backward()
        yb.sum().backward()
        torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-5)
    assert f"{spec['name']}_cpu" in ops._REGISTERED


def test_channels_last_input_with_per_channel_dim_1():
    """An NCHW tensor in channels_last memory has its channels innermost: the kernels take it without a copy and
    the output keeps its strides."""
    module = _module("hermite", per_channel=16, channel_dim=1)
    x = torch.randn(4, 16, 9, 11).to(memory_format=torch.channels_last)
    assert cpu.layout(x, True, 1) == "columns"
    assert cpu.layout(x.contiguous(), True, 1) == "short_rows"
    grad = torch.randn_like(x)
    y, dx, (grad_a,) = _kernels("hermite", x, grad, _values(module), 1)
    assert y.is_contiguous(memory_format=torch.channels_last) and dx.stride() == x.stride()
    y64, dx64, (grad_a64,) = _eager_float64("hermite", x, grad, _values(module), 1)
    _assert_close_scaled(y, y64, 2e-6)
    _assert_close_scaled(dx, dx64, 2e-6)
    _assert_close_scaled(grad_a, grad_a64, 1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_compute_in_float32(dtype):
    """bf16/fp16 inputs are computed in float32 and returned in their dtype, as eager does."""
    module = _module("fourier", per_channel=24)
    x, grad = torch.randn(40, 24).to(dtype), torch.randn(40, 24).to(dtype)
    y, dx, value_grads = _kernels("fourier", x, grad, _values(module), -1)
    assert y.dtype == dx.dtype == dtype and all(g.dtype == torch.float32 for g in value_grads)
    y32, dx32, grads32 = _kernels("fourier", x.float(), grad.float(), _values(module), -1)
    torch.testing.assert_close(y, y32.to(dtype), rtol=0, atol=0)
    torch.testing.assert_close(dx, dx32.to(dtype), rtol=0, atol=0)
    for a, b in zip(value_grads, grads32):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_no_input_gradient():
    """``need_x=False`` (an input that needs no gradient) still gives the coefficient gradients."""
    module = _module("tropical_rational", per_channel=20)
    x, grad = torch.randn(30, 20), torch.randn(30, 20)
    _, _, with_x = _kernels("tropical_rational", x, grad, _values(module), -1, need_x=True)
    _, dx, without_x = _kernels("tropical_rational", x, grad, _values(module), -1, need_x=False)
    assert (dx == 0).all()
    for a, b in zip(with_x, without_x):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("family", BUILTIN_FAMILIES)
def test_custom_ops_pass_opcheck(family):
    """Schema, fake (meta) kernel, autograd registration and torch.compile of ``lit_ortho::<family>_cpu``."""
    module = _module(family, per_channel=12)
    x = torch.randn(10, 12, requires_grad=True)
    values = [getattr(module, n).detach().float().requires_grad_(learn)
              for n, learn in zip(module.value_names, module.record.learnable_mask)]
    assert cpu.available(cpu.coefficient_count(values))
    torch.library.opcheck(ops.op(family, "cpu"), (x, *values, -1))


# ---- building and caching ---------------------------------------------------------------------------------
@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """No library loaded in this process, and the cache in a temporary directory."""
    monkeypatch.setattr(cpu, "_LIBRARIES", {})
    monkeypatch.setattr(cpu, "_FAILED", {})
    monkeypatch.setenv(cpu.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_no_compiler_warns_once_and_the_module_still_runs(fresh_build, monkeypatch):
    """Where the kernels cannot be built, ``"auto"`` warns once and runs the family's other path."""
    monkeypatch.setattr(cpu, "_compiler", lambda: "/nonexistent/c++")
    module = _module("hermite", per_channel=64)
    x = torch.randn(backends.CPU_KERNEL_MIN_ELEMENTS // 64, 64)  # below the lazy-compile threshold: eager PyTorch
    with pytest.warns(UserWarning, match=r"building the CPU kernels .* failed \(FileNotFoundError"):
        y = module(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per coefficient count, not on every call
        assert not backends.use_cpu_kernels(module.record, "auto", x, _values(module), -1)
        torch.testing.assert_close(module(x), y)
    torch.testing.assert_close(y, _module("hermite", per_channel=64, backend="eager")(x))


def test_library_is_built_once_and_reused(fresh_build, monkeypatch):
    assert cpu.available(3)
    built = list(fresh_build.glob("*.so"))
    assert len(built) == 1 and not list(fresh_build.glob("*.tmp"))
    stamp = built[0].stat().st_mtime_ns
    monkeypatch.setattr(cpu, "_LIBRARIES", {})
    calls = []
    real_run = subprocess.run
    monkeypatch.setattr(cpu.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or real_run(cmd, **kw))
    assert cpu.available(3)
    assert all("--version" in c for c in calls), calls  # found in the cache: no compiler run
    assert built[0].stat().st_mtime_ns == stamp


def test_cache_key_names_the_cpu(fresh_build, monkeypatch):
    """A cache shared by nodes of different CPUs (a home directory on NFS) keeps one library per CPU: one built for
    AVX-512 would die of SIGILL on an AVX2 node."""
    assert cpu.available(3)
    monkeypatch.setattr(cpu, "_LIBRARIES", {})
    monkeypatch.setattr(cpu, "_cpu_identity", lambda: "model name: another CPU\nflags: sse2 avx2")
    assert cpu.available(3)
    assert len(list(fresh_build.glob("*.so"))) == 2


def test_two_processes_build_at_once(tmp_path):
    """Two processes (DDP ranks on one node) build the same library at the same time into an empty cache: both load a
    whole one, and one library is left."""
    env = {**os.environ, cpu.CACHE_ENV: str(tmp_path)}
    code = "from lit_ortho.activations.kernels import cpu as c; assert c._library(13) is not None"
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
    assert len(list(tmp_path.glob("*.so"))) == 1 and not list(tmp_path.glob("*.tmp"))


def test_unwritable_cache_falls_back_to_the_temporary_directory(monkeypatch, tmp_path):
    monkeypatch.setattr(cpu, "_LIBRARIES", {})
    monkeypatch.setattr(cpu, "_FAILED", {})
    monkeypatch.delenv(cpu.CACHE_ENV, raising=False)
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the cache directory would go")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # mkdir under a file fails, even for root
    monkeypatch.setattr(cpu.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    assert cpu.available(2)
    assert len(list((tmp_path / "tmp").glob("lit_ortho_kernels_*/*.so"))) == 1


def test_build_killed_midway_leaves_no_library_behind(tmp_path):
    """kill -9 while the compiler writes: the library's own name appears only by an atomic rename of a finished
    file, so a later process never loads half a library, and builds a whole one. That build deletes the killed one's
    partial file once it is older than any build may run, and leaves a fresh one (another process's build) alone."""
    cache = tmp_path / "cache"
    env = {**os.environ, cpu.CACHE_ENV: str(cache)}
    code = "from lit_ortho.activations.kernels import cpu as c; c.available(11)"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(cache.glob("*.tmp")):  # the compiler is running
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = list(cache.glob("*.tmp"))
    assert killed, "the build never started"
    assert not list(cache.glob("*.so")), "a library appeared before the build finished"
    long_ago = time.time() - 2 * cpu.BUILD_TIMEOUT_S - 60
    for partial in killed:
        os.utime(partial, (long_ago, long_ago))
    in_progress = cache / "cpu_k11_another.so.abc123.tmp"
    in_progress.write_bytes(b"a build another process is writing")
    done = subprocess.run([sys.executable, "-c", code + "; assert c._library(11) is not None"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(list(cache.glob("*.so"))) == 1
    assert list(cache.glob("*.tmp")) == [in_progress]


ARM_CXX = "aarch64-linux-gnu-g++"


@pytest.mark.skipif(shutil.which(ARM_CXX) is None, reason=f"needs the {ARM_CXX} cross compiler")
@pytest.mark.parametrize("K", [3, 7])
def test_source_compiles_for_arm(K, tmp_path):
    """The kernels' source builds for aarch64 too (Graviton, Grace): its x86 intrinsics (the streamed stores and their
    fence) are behind guards, with plain stores elsewhere. Session 13 shipped an unguarded <immintrin.h> at first."""
    done = subprocess.run([ARM_CXX, "-O3", "-fopenmp", "-shared", "-fPIC", "-std=c++17", f"-DLIT_K={K}", str(cpu.SOURCE),
                           "-o", str(tmp_path / "cpu.so")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
