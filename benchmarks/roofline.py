"""What the H100/H200 rooflines predict for the Triton kernels: bytes, FLOPs and special functions per element.

    python benchmarks/roofline.py                  # the table (markdown), counted by hand from the kernels
    python benchmarks/roofline.py --sass           # also compile the kernels for sm_90 (no GPU needed) and
                                                   # count the issue slots in their SASS, as a cross-check
    python benchmarks/roofline.py --shape 128x56x56x384   # partial-sum bytes for another input size

For each family at its paper degree (hermite:3, fourier:5, tropical:5, tropical_rational:6) and for
nn.GELU, per direction (forward, backward) and dtype (bf16, fp32), the table gives per element of the
input:

* **bytes** moved to and from HBM: forward reads x and writes y (2 x element size); backward reads x
  and dy and writes dx (3 x element size) plus the per-program partial sums of the coefficient
  gradients (``[programs, G]`` float32, written by the kernel and read back by ``.sum(0)``, spread over
  the elements; programs = 4 per SM). Coefficients are a few scalars, read from cache: not counted.
* **FLOPs**: arithmetic with an FMA counted as 2 and every other fp32 instruction (add, mul, min/max,
  compare, select, floor) as 1;
* **ops**: issue slots per element (an FMA is 1), with the 16-bit conversions and the warp shuffles of
  the row sums included; address, mask and loop arithmetic are not (about 3-4 more per element in the
  backward loop, see ``--sass``);
* **special**: special-function calls (erf, exp, sin, cos) and the MUFU (SFU) instructions they take.

Model (say what is assumed): time = max(bytes / bandwidth, ops / issue rate, MUFU / SFU rate), where

* H100 SXM: 3.35 TB/s HBM3; 132 SMs at 1.98 GHz; 128 fp32 lanes per SM, so 33.5 T issue slots/s
  (= 66.9 TFLOP/s fp32 non-tensor with FMA = 2); 16 SFU (MUFU) results per SM per clock, 4.2 T/s.
* H200 SXM: the same GH100 chip and clocks with 4.8 TB/s HBM3e.
* erf is CUDA's ``erff`` (libdevice, what PyTorch's and inductor's GELU call): 14 fp32 ops + 1 MUFU;
  exp: 4 ops + 1 MUFU (both read off sm_90 SASS). nn.GELU is the exact (erf) GELU, as PyTorch computes
  it: forward 0.5 x (1 + erf(x / sqrt 2)); backward dy (cdf + x pdf) with pdf = exp(-x^2/2) / sqrt(2 pi).
* Fourier: bf16/fp16 inputs use MUFU sin.approx/cos.approx after an exact range reduction; float32 uses
  the degree-5/6 polynomials (no MUFU). Shared coefficients (the paper's setting) throughout; a row sum
  of 8 elements per thread costs 5 shuffle + add levels per 8 elements (1.25 slots per element per sum).
* Both GELU and the kernels are assumed to reach the same fraction of these peaks; the ratio to GELU
  is of the predicted times in the same direction (and of their sum, forward + backward).

The result for the paper's setting: GELU, Hermite-3 and Tropical-5 are memory-bound on both GPUs; the
Fourier-5 and Tropical-rational-6 backward kernels (and Fourier-5's bf16 forward) are issue-bound, by
more on the H200, whose extra bandwidth the others use and these cannot. ``--sass`` checks the counts
against what ptxas emits (triton's own ptxas/nvdisasm; the kernels' launch parameters of
``triton_common.CONFIG``).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field

GPUS = {
    # name: (HBM bytes/s, SMs, clock Hz)
    "H100": (3.35e12, 132, 1.98e9),
    "H200": (4.8e12, 132, 1.98e9),
}
LANES_PER_SM = 128  # fp32 lanes = issue slots per SM per clock (4 schedulers x 32 threads)
SFU_PER_SM = 16  # MUFU results per SM per clock
PROGRAMS_PER_SM = 4  # backward programs (triton_common.CONFIG["programs_per_sm"])
ROW_ELEMS_PER_THREAD = 8  # shared coefficients: a 256-wide row per warp, 8 elements per thread
BUTTERFLY = 5 / ROW_ELEMS_PER_THREAD  # shuffles (and adds) per element per row sum: log2(32) levels
ERF = {"ops": 14, "mufu": 1}
EXP = {"ops": 4, "mufu": 1}
CASES = [("gelu", None), ("hermite", 3), ("fourier", 5), ("tropical", 5), ("tropical_rational", 6)]
DTYPES = {"bf16": 2, "fp32": 4}


@dataclass
class Cost:
    """Per-element instruction counts of one kernel (fp32 pipe unless named otherwise)."""

    ffma: float = 0.0
    fmul: float = 0.0
    fadd: float = 0.0
    fmnmx: float = 0.0  # min/max
    fsetp: float = 0.0  # compare
    fsel: float = 0.0  # select
    frnd: float = 0.0  # floor
    shfl: float = 0.0  # warp shuffles of the row sums
    cvt: float = 0.0  # 16-bit <-> fp32 conversions
    mufu: float = 0.0  # special-function unit instructions
    libm_ops: float = 0.0  # the fp32 instructions inside erf/exp
    special: dict = field(default_factory=dict)  # calls: {"erf": 1, ...}
    groups: int = 0  # coefficient-gradient partial sums per program (backward)

    @property
    def flops(self) -> float:
        return 2 * self.ffma + self.fmul + self.fadd + self.fmnmx + self.fsetp + self.fsel + self.frnd + self.libm_ops

    @property
    def ops(self) -> float:
        return (self.ffma + self.fmul + self.fadd + self.fmnmx + self.fsetp + self.fsel + self.frnd + self.shfl
                + self.cvt + self.mufu + self.libm_ops)


def _row_sums(c: Cost, sums: int, pure: int) -> None:
    """``sums`` row sums (one per coefficient-gradient group): each product is fused with the
    in-thread add (an FFMA, counted where the product is), ``pure`` of them sum a value directly (one
    FADD each); every sum then takes 5 shuffle + add levels per 8 elements per thread."""
    c.fadd += pure + BUTTERFLY * sums
    c.shfl += BUTTERFLY * sums
    c.groups = sums


def _io(c: Cost, elem: int, loads: int, stores: int) -> None:
    """16-bit tensors: one conversion per element loaded, half a one per element stored (F2FP packs two)."""
    if elem == 2:
        c.cvt += loads + 0.5 * stores


def _special(c: Cost, name: str, impl: dict) -> None:
    c.special[name] = c.special.get(name, 0) + 1
    c.libm_ops += impl["ops"]
    c.mufu += impl["mufu"]


# ---- the counts, read off the kernels (lit_ortho/activations/kernels/triton_<family>.py) ----------------
def gelu_cost(direction: str, elem: int) -> Cost:
    c = Cost()
    if direction == "forward":  # y = x * 0.5 * (1 + erf(x * M_SQRT1_2))
        c.fmul += 3
        c.fadd += 1
        _special(c, "erf", ERF)
        _io(c, elem, 1, 1)
    else:  # cdf = 0.5 (1 + erf(x a)); pdf = exp(-0.5 x x) b; dx = dy (cdf + x pdf)
        c.fmul += 6  # x a, 0.5 (..), -0.5 x, (..) x, exp(..) b, dy (..)
        c.fadd += 1  # 1 + erf
        c.ffma += 1  # x pdf + cdf
        _special(c, "erf", ERF)
        _special(c, "exp", EXP)
        _io(c, elem, 2, 1)
    return c


def hermite_cost(direction: str, elem: int, degree: int) -> Cost:
    K = degree + 1  # a_0..a_n
    c = Cost()
    if direction == "forward":
        c.ffma += 1  # y = a1 x + a0
        c.ffma += 2 * (K - 2)  # p_next = (x p - p_prev) ...; y += a_{k+1} p_next
        c.fmul += K - 2  # ... * 1/(k+1)
        _io(c, elem, 1, 1)
    else:
        c.ffma += K - 2  # dydx += a_{k+1} p
        c.ffma += K - 2  # x p - p_prev
        c.fmul += K - 2  # * 1/(k+1)
        c.ffma += K - 1  # the products g x, g p_next fused with their row sums' in-thread adds
        c.fmul += 1  # dx = g dydx
        _row_sums(c, sums=K, pure=1)  # sum g, g x, g p_2 .. g p_n
        _io(c, elem, 2, 1)
    return c


def fourier_cost(direction: str, elem: int, degree: int) -> Cost:
    N = degree
    fast = elem == 2  # MUFU sin.approx/cos.approx for 16-bit inputs (triton_fourier._fast_trig)
    c = Cost()
    # per term: z = w x - phi (FFMA); _reduce_pi: j = floor(z/pi + 0.5) (FFMA, FRND), r = z - j pi in
    # three parts (3 FFMA), sign = 1 - 2 (j - 2 floor(j/2)) (FMUL, FRND, 2 FFMA)
    c.ffma += N * (1 + 6)
    c.fmul += N * 1
    c.frnd += N * 2
    if direction == "forward":
        if fast:
            c.fmul += N * 1  # the MUFU argument scaling
            c.mufu += N
            c.special["cos"] = N
        else:
            c.fmul += N * 1  # t = r r
            c.ffma += N * 5  # _cos_poly
        c.fmul += N * 1  # sign * cos
        c.ffma += N * 1  # y += c_k cos
        _io(c, elem, 1, 1)
    else:
        c.fmul += 1  # gx = g x
        if fast:
            c.fmul += N * 1  # the MUFU argument scaling (shared by sin and cos)
            c.mufu += 2 * N
            c.special["sin"] = c.special["cos"] = N
        else:
            c.fmul += N * 1  # t = r r
            c.ffma += N * (4 + 5)  # _sin_poly (4 FFMA + 1 FMUL), _cos_poly (5 FFMA)
            c.fmul += N * 1
        c.fmul += N * 2  # sign * sin, sign * cos
        c.ffma += N * 1  # dydx -= (c_k w_k) sin
        c.ffma += N * 3  # g cos, g sin, gx sin fused with their row sums
        c.fmul += 1  # dx = g dydx
        _row_sums(c, sums=1 + 3 * N, pure=1)  # sum g; g cos_k, g sin_k, g x sin_k
        _io(c, elem, 2, 1)
    return c


def tropical_cost(direction: str, elem: int, degree: int) -> Cost:
    K = degree + 1  # intercepts c_0..c_n, slopes 0..n
    c = Cost()
    c.ffma += K  # best = 0 x + c_0, cand = k x + c_k
    c.fmnmx += K - 1  # best = max(best, cand)
    if direction == "forward":
        c.fmul += 1  # y = best * s
        _io(c, elem, 1, 1)
    else:
        c.fsetp += K - 1  # cand > best
        c.fsel += K - 1  # arg = where(.., k, arg)
        c.fmul += 2  # dx = g * scale * arg
        c.fsetp += K  # arg == k
        c.fsel += K  # where(arg == k, g, 0)
        _row_sums(c, sums=K, pure=K)
        _io(c, elem, 2, 1)
    return c


def tropical_rational_cost(direction: str, elem: int, degree: int) -> Cost:
    K = degree + 1  # p, c, q, d: K each
    c = Cost()
    c.ffma += 2 * K  # num/den = p_k x + c_k, q_k x + d_k
    c.fmnmx += 2 * (K - 1)
    if direction == "forward":
        c.fadd += 1  # num - den
        _io(c, elem, 1, 1)
    else:
        c.fsetp += 2 * (K - 1)  # win = cand > num / den
        c.fsel += 4 * (K - 1)  # arg_n, slope_n, arg_d, slope_d
        c.fadd += 1  # slope_n - slope_d
        c.fmul += 2  # dx = g (..), gx = g x
        c.fsetp += 2 * K  # arg_n == k, arg_d == k
        c.fsel += 4 * K  # where(on_n, gx | g, 0), where(on_d, gx | g, 0)
        _row_sums(c, sums=4 * K, pure=4 * K)
        _io(c, elem, 2, 1)
    return c


COSTS = {"gelu": lambda d, e, n: gelu_cost(d, e), "hermite": hermite_cost, "fourier": fourier_cost,
         "tropical": tropical_cost, "tropical_rational": tropical_rational_cost}


def bytes_per_element(family: str, direction: str, elem: int, numel: int, sms: int = 132,
                      groups: int = 0) -> float:
    """HBM bytes per element: x and y forward, x, dy and dx backward, plus the partial sums
    (``[programs, groups]`` float32, written once and read once) spread over ``numel`` elements."""
    if direction == "forward":
        return 2.0 * elem
    partials = 0.0
    if family != "gelu" and groups:
        programs = min(sms * PROGRAMS_PER_SM, max(1, math.ceil(numel / 1024)))
        partials = 2 * programs * groups * 4 / numel
    return 3.0 * elem + partials


def predict(ops: float, mufu: float, nbytes: float, gpu: str) -> tuple[float, str, float]:
    """(seconds per element, bound, how far that bound is above the memory time)."""
    bw, sms, clock = GPUS[gpu]
    t_mem = nbytes / bw
    t_issue = ops / (sms * LANES_PER_SM * clock)
    t_sfu = mufu / (sms * SFU_PER_SM * clock)
    t = max(t_mem, t_issue, t_sfu)
    bound = "memory" if t == t_mem else "issue" if t == t_issue else "SFU"
    return t, bound, t / t_mem if bound != "memory" else t_mem / max(t_issue, t_sfu, 1e-30)


def label(family: str, degree) -> str:
    return "gelu" if family == "gelu" else f"{family}:{degree}"


def rows(numel: int, sass: dict | None = None) -> list[dict]:
    """Every (family, direction, dtype) with its counts and the H100/H200 predictions."""
    out = []
    for family, degree in CASES:
        for direction in ("forward", "backward"):
            for dtype, elem in DTYPES.items():
                cost = COSTS[family](direction, elem, degree)
                ops = cost.ops
                measured = None
                if sass is not None:
                    measured = sass.get((family, direction, dtype))
                    if measured is not None:
                        ops = measured
                nbytes = bytes_per_element(family, direction, elem, numel, groups=cost.groups)
                row = dict(family=family, degree=degree, label=label(family, degree), direction=direction,
                           dtype=dtype, bytes=nbytes, flops=cost.flops, ops=cost.ops, sass_ops=measured,
                           special=dict(cost.special), mufu=cost.mufu)
                for gpu in GPUS:
                    row[gpu] = predict(ops, cost.mufu, nbytes, gpu)
                out.append(row)
    gelu = {(r["direction"], r["dtype"]): r for r in out if r["family"] == "gelu"}
    for r in out:
        g = gelu[(r["direction"], r["dtype"])]
        for gpu in GPUS:
            r[f"{gpu}_ratio"] = r[gpu][0] / g[gpu][0]
    return out


def fwd_bwd_ratios(table: list[dict]) -> dict:
    """{(label, dtype, gpu): (forward + backward predicted time) / GELU's}."""
    total = {}
    for r in table:
        for gpu in GPUS:
            key = (r["label"], r["dtype"], gpu)
            total[key] = total.get(key, 0.0) + r[gpu][0]
    return {k: v / total[("gelu", k[1], k[2])] for k, v in total.items()}


def special_text(r: dict) -> str:
    if not r["special"]:
        return "-"
    calls = " + ".join(f"{v:g} {k}" for k, v in r["special"].items())
    return f"{calls} ({r['mufu']:g} MUFU)"


def bound_text(gpu_pred) -> str:
    _, bound, factor = gpu_pred
    if bound == "memory":
        return f"memory ({factor:.1f}x headroom)"
    return f"{bound}, {factor:.2f}x the memory time"


def markdown(table: list[dict], numel: int, sass: bool) -> list[str]:
    lines = [f"Per element; partial sums spread over {numel:,} elements (GPT-2-small's MLP: 12x1024 x 3072 by "
             "default); ratios are predicted time / GELU's predicted time, same direction and dtype.", ""]
    head = "| activation | direction | dtype | bytes | FLOPs | ops | " + ("SASS ops | " if sass else "") + \
           "special | H100 bound | H100 vs GELU | H200 bound | H200 vs GELU |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for r in table:
        sass_cell = (f"{r['sass_ops']:.1f} | " if r["sass_ops"] is not None else "- | ") if sass else ""
        lines.append(f"| {r['label']} | {r['direction']} | {r['dtype']} | {r['bytes']:.4g} | {r['flops']:g} | "
                     f"{r['ops']:.1f} | {sass_cell}{special_text(r)} | {bound_text(r['H100'])} | "
                     f"{r['H100_ratio']:.2f}x | {bound_text(r['H200'])} | {r['H200_ratio']:.2f}x |")
    lines += ["", "Forward + backward (predicted), ratio to GELU:", "",
              "| activation | bf16 H100 | bf16 H200 | fp32 H100 | fp32 H200 |", "|---|---|---|---|---|"]
    totals = fwd_bwd_ratios(table)
    for family, degree in CASES:
        lab = label(family, degree)
        lines.append(f"| {lab} | " + " | ".join(f"{totals[(lab, d, g)]:.2f}x" for d in DTYPES for g in GPUS) + " |")
    return lines


# ---- --sass: count the issue slots in what ptxas emits for sm_90 ---------------------------------------
def _aot_compile(kernel, dtype: str, constexprs: dict, num_warps: int):
    import inspect

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {}
    for name, p in inspect.signature(kernel.fn).parameters.items():
        if p.annotation is not inspect.Parameter.empty:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = f"*{dtype}" if name in ("x_ptr", "g_ptr", "y_ptr", "dx_ptr") else "*fp32"
        else:
            signature[name] = "i32"
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(signature)
             if signature[n].startswith("*") or n in ("numel", "width")}
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})


_INSTR = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[0-9T]+\s+)?([A-Z][A-Z0-9_]*)[^;]*;")
_LABEL = re.compile(r"^(\.L_x_\d+):")
_BRANCH = re.compile(r"BRA\s+`?\(?(\.L_x_\d+)")


def sass_slots(cubin: bytes, loop: bool) -> int:
    """Warp instructions of the kernel (``loop=False``: all of it, NOPs and EXIT/BRA aside) or of its
    main loop (the instructions between a label and the backward branch to it)."""
    import tempfile

    import triton

    nvdisasm = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([nvdisasm, "-c", f.name], capture_output=True, text=True, check=True).stdout
    lines = text.splitlines()
    if not loop:
        return sum(1 for line in lines for m in [_INSTR.search(line)] if m and m.group(1) not in ("NOP", "EXIT", "BRA"))
    labels = {}
    best = None
    for i, line in enumerate(lines):
        m = _LABEL.match(line.strip())
        if m:
            labels[m.group(1)] = i
        b = _BRANCH.search(line)
        if b and b.group(1) in labels:  # a backward branch: a loop
            body = [ln for ln in lines[labels[b.group(1)]:i + 1] if _INSTR.search(ln)]
            count = sum(1 for ln in body if _INSTR.search(ln).group(1) != "NOP")
            best = max(best or 0, count)
    if best is None:
        raise RuntimeError("no loop found in the backward kernel's SASS")
    return best


def _gelu_kernels():
    """nn.GELU's math as a Triton kernel (inductor's lowering: libdevice erf), one tile per program."""
    import triton
    import triton.language as tl
    from triton.language.extra.cuda import libdevice

    @triton.jit
    def gelu_fwd_kernel(x_ptr, y_ptr, numel, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < numel
        x = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
        y = x * 0.5 * (1.0 + libdevice.erf(x * 0.7071067811865476))
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def gelu_bwd_kernel(x_ptr, g_ptr, dx_ptr, numel, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < numel
        x = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
        g = tl.load(g_ptr + offs, mask=mask).to(tl.float32)
        cdf = 0.5 * (1.0 + libdevice.erf(x * 0.7071067811865476))
        pdf = tl.exp(-0.5 * x * x) * 0.3989422804014327
        tl.store(dx_ptr + offs, (g * (cdf + x * pdf)).to(dx_ptr.dtype.element_ty), mask=mask)

    return gelu_fwd_kernel, gelu_bwd_kernel


def sass_counts() -> dict:
    """{(family, direction, dtype): issue slots per element} from sm_90 SASS, shared coefficients."""
    import importlib

    from lit_ortho.activations import FAMILIES
    from lit_ortho.activations.kernels import triton_common as T

    cfg = T.CONFIG
    warps = cfg["num_warps"]
    threads = 32 * warps
    out = {}
    gelu_fwd, gelu_bwd = _gelu_kernels()
    for family, degree in CASES:
        for dtype in DTYPES:
            tri = {"bf16": "bf16", "fp32": "fp32"}[dtype]
            if family == "gelu":
                block = cfg["fwd_tile"]
                for direction, kernel in (("forward", gelu_fwd), ("backward", gelu_bwd)):
                    k = _aot_compile(kernel, tri, {"BLOCK": block}, warps)
                    out[(family, direction, dtype)] = sass_slots(k.asm["cubin"], loop=False) * threads / block
                print(f"  sass: gelu {dtype}", file=sys.stderr, flush=True)
                continue
            mod = importlib.import_module(FAMILIES[family].triton)
            K = degree if family == "fourier" else degree + 1
            size = {"N": K} if family == "fourier" else {"K": K}
            pad = {"NP": 1 << (K - 1).bit_length()} if family == "fourier" else {"KP": 1 << (K - 1).bit_length()}
            extra = {"hermite": {"CLAMP": K > 9}, "fourier": {"FAST_TRIG": dtype == "bf16"}}.get(family, {})
            width = cfg["shared_width"]
            fwd = dict(size, **extra, PER_CHANNEL=False, BLOCK_C=width, BLOCK_R=cfg["fwd_tile"] // width, INT64=False)
            bwd = dict(size, **extra, **pad, NEED_X=True, NEED_COEF=True, PER_CHANNEL=False, BLOCK_C=width,
                       BLOCK_R=cfg["bwd_tile"] // width, INT64=False)
            kf = _aot_compile(getattr(mod, f"_{family}_fwd_kernel"), tri, fwd, warps)
            kb = _aot_compile(getattr(mod, f"_{family}_bwd_kernel"), tri, bwd, warps)
            out[(family, "forward", dtype)] = sass_slots(kf.asm["cubin"], loop=False) * threads / cfg["fwd_tile"]
            out[(family, "backward", dtype)] = sass_slots(kb.asm["cubin"], loop=True) * threads / cfg["bwd_tile"]
            print(f"  sass: {family} {dtype}", file=sys.stderr, flush=True)
    return out


def parse_shape(text: str) -> tuple[int, ...]:
    return tuple(int(s) for s in text.lower().replace("*", "x").split("x"))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="12288x3072", help="input shape for the partial-sum bytes (default: %(default)s)")
    parser.add_argument("--sass", action="store_true",
                        help="compile the kernels for sm_90 (triton's bundled ptxas/nvdisasm; no GPU) and count "
                             "their issue slots; the predictions then use those counts")
    args = parser.parse_args(argv)
    numel = math.prod(parse_shape(args.shape))
    sass = sass_counts() if args.sass else None
    table = rows(numel, sass)
    print("\n".join(markdown(table, numel, sass is not None)))
    bound = {}
    for r in table:
        if r["family"] != "gelu" and r["dtype"] == "bf16":
            bound.setdefault(r["label"], []).append(f"{r['direction']} {bound_text(r['H100'])} / {bound_text(r['H200'])}")
    print("\nbf16, H100 / H200:")
    for lab, texts in bound.items():
        print(f"- {lab}: " + "; ".join(texts))


if __name__ == "__main__":
    main()
