"""The steps of benchmarks/gpu_check.sh, one per call, each writing its results as JSON.

    python benchmarks/gpu_check.py STEP --json FILE [--dry-run]     # STEP: imports, kernels, activation, mlp, train
    python benchmarks/gpu_check.py report DIR                       # DIR/*.json -> markdown (stdout, DIR/gpu_check.md)

Run through ``benchmarks/gpu_check.sh``, which gives each step a hard time limit. Imports only what the
GPU machine has (torch, triton, lit_ortho's activation core and models; ``lit_ortho.tasks``, which needs
lightning, only for the training step's parameter groups and with a fallback). ``--dry-run`` runs on
CPU with tiny shapes, one step and no warm-up; its numbers are not measurements.

Targets printed beside the numbers (ratios to the eager nn.GELU measured in the same run): activation
forward+backward <= 1.3x GELU's time; MLP block (Linear -> act -> Linear) <= 1.05x; GPT-2 124M training
step <= 1.05x; peak memory <= 1.0x in each. Liger-Kernel's yardstick for the MLP block: its fused GeGLU
MLP takes 0.98x the unfused time and 32 % less memory.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

FAMILIES = ["hermite:3", "fourier:5", "tropical:5", "tropical_rational:6"]
TARGETS = {"activation": 1.3, "mlp": 1.05, "train": 1.05, "memory": 1.0}
FORBIDDEN_AT_IMPORT = ("litdata", "jsonargparse")


# ---- shared helpers -------------------------------------------------------------------------------------
DRY_RUN = False  # set by main(): tiny shapes, and no fitting at construction (see spec_of)


def spec_of(name: str, backend: str = "auto", per_channel=None, channel_dim: int = -1):
    if ":" not in name:
        return name
    family, _, degree = name.partition(":")
    spec = {"name": family, "degree": int(degree), "backend": backend}
    if per_channel is not None:
        spec.update(per_channel=per_channel, channel_dim=channel_dim)
    if DRY_RUN and family == "tropical_rational":  # its paper init fits GELU (seconds on a busy CPU): not needed
        spec["init"] = "torchortho"  # to check that the steps run
    return spec


class Clock:
    """Median seconds of ``fn()`` (CUDA events on a GPU, perf_counter on CPU) and its peak memory."""

    def __init__(self, device):
        import torch

        self.torch = torch
        self.device = device
        self.cuda = device.type == "cuda"

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def time(self, fn, repeats: int, warmup: int) -> float:
        torch = self.torch
        for _ in range(warmup):
            fn()
        self.sync()
        times = []
        for _ in range(repeats):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        return statistics.median(times)

    def peak(self, fn) -> int | None:
        """Peak bytes allocated during ``fn()`` above what was allocated before it (None off CUDA)."""
        if not self.cuda:
            fn()
            return None
        torch = self.torch
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    def release(self):
        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()


def setup(args):
    import torch

    device = torch.device("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    return torch, device


def device_name(torch, device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or 'unknown'})"


def write(path, payload: dict) -> None:
    Path(path).write_text(json.dumps(payload, indent=1))
    print(json.dumps(payload)[:2000], flush=True)


# ---- step: imports ----------------------------------------------------------------------------------------
def step_imports(args) -> dict:
    """Versions, the device, and that the activation core, the models and the Triton kernels import
    without litdata or jsonargparse."""
    import importlib
    import importlib.util

    before = set(sys.modules)
    import torch

    import lit_ortho.activations
    import lit_ortho.models  # noqa: F401

    core = sorted(m for m in FORBIDDEN_AT_IMPORT if m in sys.modules and m not in before)
    kernels = {}
    from lit_ortho.activations import FAMILIES as RECORDS

    for name, record in RECORDS.items():
        if record.triton:
            try:
                importlib.import_module(record.triton)
                kernels[name] = "ok"
            except Exception as exc:  # noqa: BLE001 - reported, not raised
                kernels[name] = f"{type(exc).__name__}: {exc}"
    after_kernels = sorted(m for m in FORBIDDEN_AT_IMPORT if m in sys.modules and m not in before)
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("triton", "lightning", "timm", "transformers", "safetensors", "tiktoken", "litdata", "jsonargparse",
                "pytest"):
        spec = importlib.util.find_spec(mod)
        if spec is None:
            versions[mod] = None
            continue
        try:
            from importlib.metadata import version

            versions[mod] = version(mod)
        except Exception:  # noqa: BLE001
            versions[mod] = "present"
    cuda = torch.cuda.is_available()
    return {
        "ok": not core and not after_kernels and all(v == "ok" for v in kernels.values()),
        "device": torch.cuda.get_device_name(0) if cuda else "no CUDA device",
        "capability": ".".join(map(str, torch.cuda.get_device_capability(0))) if cuda else None,
        "memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None,
        "versions": versions,
        "forbidden_imported_by_core": core,
        "forbidden_imported_by_kernels": after_kernels,
        "kernel_modules": kernels,
    }


# ---- step: kernels (Triton against eager, at the benchmark's sizes; no pytest needed) ---------------------
def step_kernels(args) -> dict:
    torch, device = setup(args)
    import lit_ortho

    shape = (4, 64) if args.dry_run else (12288, 3072)
    rows = []
    for name in FAMILIES:
        for per_channel in (None, shape[-1]):
            torch.manual_seed(0)
            ours = lit_ortho.build_activation(spec_of(name, "triton", per_channel))
            with torch.no_grad():
                for p in ours.parameters():
                    p.add_(0.25 * torch.randn_like(p))
            ref = lit_ortho.build_activation(spec_of(name, "eager", per_channel))
            ref.load_state_dict(ours.state_dict())
            ours, ref = ours.to(device), ref.to(device)
            gen = torch.Generator().manual_seed(1)
            x = (torch.randn(shape, generator=gen) * 2).to(torch.bfloat16).to(device)
            dy = torch.randn(shape, generator=gen).to(torch.bfloat16).to(device)
            out = {}
            for tag, module in (("triton", ours), ("eager", ref)):
                xi = x.detach().requires_grad_()
                y = module(xi)
                y.backward(dy)
                out[tag] = (y.float(), xi.grad.float(), {n: p.grad for n, p in module.named_parameters()})
                del y, xi
            (y, gx, g), (y_ref, gx_ref, g_ref) = out["triton"], out["eager"]
            err_y = ((y - y_ref).abs().max() / (y_ref.abs().max() + 1)).item()
            err_dx = ((gx - gx_ref).abs().max() / (gx_ref.abs().max() + 1)).item()
            err_coef = max(((g[n] - g_ref[n]).abs().max() / (g_ref[n].abs().max() + 1)).item() for n in g_ref)
            tol = 4 * 2.0**-7  # bf16: both paths compute in float32 and round once
            ok = err_y <= tol and err_dx <= tol and err_coef <= 1e-3
            rows.append({"activation": name, "coefficients": "shared" if per_channel is None else f"per-channel C={per_channel}",
                         "shape": list(shape), "err_y": err_y, "err_dx": err_dx, "err_coef": err_coef, "ok": ok})
            del out, x, dy
    return {"ok": all(r["ok"] for r in rows), "device": device_name(torch, device), "rows": rows}


# ---- step: activation fwd+bwd time and peak memory ---------------------------------------------------------
ACTIVATION_SHAPES = [  # (label, shape, per-channel dim or None)
    ("GPT-2 small MLP, 12x1024 x 3072", (12288, 3072), None),
    ("GPT-2 small MLP, 12x1024 x 3072", (12288, 3072), -1),
    ("ConvNeXt-T stage 1, 128x56x56 x 384 NHWC", (128, 56, 56, 384), None),
    ("ConvNeXt-T stage 2, 128x28x28 x 768 NHWC", (128, 28, 28, 768), None),
    ("ConvNeXt-T stage 3, 128x14x14 x 1536 NHWC", (128, 14, 14, 1536), None),
    ("ConvNeXt-T stage 4, 128x7x7 x 3072 NHWC", (128, 7, 7, 3072), None),
]


def _tiny(shape):
    """Dry run: the shape with every dim but the last cut to 2 and the last to at most 32."""
    return tuple(min(d, 2) for d in shape[:-1]) + (min(shape[-1], 32),)


def step_activation(args) -> dict:
    torch, device = setup(args)
    from torch import nn

    import lit_ortho

    clock = Clock(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    repeats, warmup = (1, 0) if args.dry_run else (20, 3)
    compile_backend = "eager" if args.dry_run else "inductor"  # dry run: dynamo only (no C++ compile on CPU)
    compiled_gelu = torch.compile(nn.GELU(), dynamic=True, backend=compile_backend)
    rows = []
    for label, shape, channel_dim in ACTIVATION_SHAPES[:3] if args.dry_run else ACTIVATION_SHAPES:
        if args.dry_run:
            shape = _tiny(shape)
        torch.manual_seed(0)
        x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
        dy = torch.randn(shape, device=device, dtype=dtype)

        def measure(module, x=x, dy=dy):
            def step():
                x.grad = None
                module(x).backward(dy)

            t = clock.time(step, repeats, warmup)
            peak = clock.peak(step)
            x.grad = None
            return t, peak

        cases = [] if channel_dim is not None else [("gelu (eager)", nn.GELU()), ("gelu (compiled)", compiled_gelu)]
        per_channel = shape[channel_dim] if channel_dim is not None else None
        cases += [(name, lit_ortho.build_activation(spec_of(name, "triton", per_channel, channel_dim or -1)).to(device))
                  for name in FAMILIES]
        base = {}
        if channel_dim is not None:  # the shared-coefficient rows of the same shape measured GELU
            base = next((r["base"] for r in rows if r["shape"] == list(shape)), {})
        results = []
        for name, module in cases:
            try:
                t, peak = measure(module)
            except Exception as exc:  # noqa: BLE001 - one failing case must not hide the others
                results.append({"activation": name, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
                continue
            if name == "gelu (eager)":
                base["time"], base["peak"] = t, peak
            elif name == "gelu (compiled)":
                base["time_compiled"], base["peak_compiled"] = t, peak
            results.append({"activation": name, "time_s": t, "peak_bytes": peak})
            clock.release()
        for r in results:  # ratios to what GELU measured (None where it failed)
            if "time_s" in r:
                r["vs_gelu"] = r["time_s"] / base["time"] if base.get("time") else None
                r["vs_gelu_compiled"] = r["time_s"] / base["time_compiled"] if base.get("time_compiled") else None
                r["peak_vs_gelu"] = r["peak_bytes"] / base["peak"] if r["peak_bytes"] is not None and base.get("peak") else None
        coefficients = "shared" if channel_dim is None else f"per-channel dim {channel_dim} (C={per_channel})"
        rows.append({"label": label, "shape": list(shape), "coefficients": coefficients, "dtype": str(dtype),
                     "base": base, "results": results})
        del x, dy
        clock.release()
    return {"ok": True, "device": device_name(torch, device), "rows": rows, "dry_run": args.dry_run}


# ---- step: the MLP block (Linear -> act -> Linear), Liger's yardstick ----------------------------------------
MLP_SHAPES = [  # (label, tokens, width, hidden)
    ("GPT-2 small, 12x1024 tokens, 768 -> 3072 -> 768", 12 * 1024, 768, 3072),
    ("ConvNeXt-T stage 1, 128x56x56 pixels, 96 -> 384 -> 96", 128 * 56 * 56, 96, 384),
]


def step_mlp(args) -> dict:
    torch, device = setup(args)
    from torch import nn

    import lit_ortho

    try:
        from lit_ortho.models.mlp import LinearActivationLinear
    except ImportError:  # an older checkout: plain blocks only
        LinearActivationLinear = None

    clock = Clock(device)
    repeats, warmup = (1, 0) if args.dry_run else (10, 3)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    rows = []
    for label, tokens, width, hidden in MLP_SHAPES:
        if args.dry_run:
            tokens, width, hidden = 16, 16, 64
        torch.manual_seed(0)
        x = torch.randn(tokens, width, device=device, requires_grad=True)
        dy = torch.randn(tokens, width, device=device)

        def block(act, recompute):
            fc, proj = nn.Linear(width, hidden), nn.Linear(hidden, width)
            if recompute and LinearActivationLinear is not None:
                return LinearActivationLinear(fc, act, proj, recompute=True).to(device)
            return nn.Sequential(fc, act, proj).to(device)

        cases = [("gelu, plain", nn.GELU(), False)]
        if LinearActivationLinear is not None:
            cases.append(("gelu, recompute", nn.GELU(), True))
        for name in FAMILIES:
            cases.append((f"{name}, plain", None, False))
            if LinearActivationLinear is not None:
                cases.append((f"{name}, recompute", None, True))
        results = []
        base = None
        for name, act, recompute in cases:
            if act is None:
                act = lit_ortho.build_activation(spec_of(name.split(",")[0]))
            module = block(act, recompute)

            def step(module=module, x=x, dy=dy):
                x.grad = None
                module.zero_grad(set_to_none=True)
                with autocast:
                    out = module(x)
                out.backward(dy.to(out.dtype))

            try:
                t = clock.time(step, repeats, warmup)
                peak = clock.peak(step)
            except Exception as exc:  # noqa: BLE001
                results.append({"block": name, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
                continue
            if base is None:
                base = (t, peak)
            results.append({"block": name, "time_s": t, "peak_bytes": peak, "vs_gelu": t / base[0],
                            "peak_vs_gelu": peak / base[1] if peak is not None and base[1] else None})
            del module
            clock.release()
        rows.append({"label": label, "tokens": tokens, "width": width, "hidden": hidden, "results": results})
        del x, dy
    return {"ok": True, "device": device_name(torch, device), "rows": rows, "dry_run": args.dry_run,
            "autocast": device.type == "cuda"}


# ---- step: GPT-2 124M training step ---------------------------------------------------------------------------
def _optimizer(torch, model, device):
    try:
        if DRY_RUN:  # lit_ortho.tasks imports lightning: seconds on a busy CPU, for the same groups
            raise ImportError("dry run")
        from lit_ortho.tasks import parameter_groups

        groups = parameter_groups(model, weight_decay=0.1)
        for group in groups:
            group.pop("param_names", None)
        source = "lit_ortho.tasks.parameter_groups"
    except Exception:  # noqa: BLE001 - lightning missing: nanoGPT's rule (decay on >= 2-D weights)
        from lit_ortho.activations import LearnableActivation

        act_params = {id(p) for m in model.modules() if isinstance(m, LearnableActivation) for p in m.parameters()}
        decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2 and id(p) not in act_params]
        rest = [p for p in model.parameters() if p.requires_grad and (p.dim() < 2 or id(p) in act_params)]
        groups = [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}]
        source = "fallback groups: decay on >= 2-D weights, none on activations"
    fused = device.type == "cuda"
    return torch.optim.AdamW(groups, lr=6e-4, betas=(0.9, 0.95), fused=fused), source


def step_train(args) -> dict:
    torch, device = setup(args)
    from lit_ortho.models import GPT, GPTConfig

    clock = Clock(device)
    size, batch, seq = ("tiny", 1, 8) if args.dry_run else ("gpt2", 12, 1024)
    overrides = {"vocab_size": 512} if args.dry_run else {}
    repeats, warmup = (1, 0) if args.dry_run else (args.steps, 2)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    results = []
    source = None
    for name in ["gelu"] + FAMILIES:
        try:
            torch.manual_seed(0)
            config = GPTConfig.from_name(size, activation=spec_of(name), dropout=0.0, **overrides)
            model = GPT(config).to(device)
            model.train()
            opt, source = _optimizer(torch, model, device)
            gen = torch.Generator().manual_seed(1)
            idx = torch.randint(0, config.vocab_size, (batch, seq + 1), generator=gen).to(device)
            inputs, targets = idx[:, :-1], idx[:, 1:]

            def step():
                with autocast:
                    logits = model(inputs)
                    loss = torch.nn.functional.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)

            t = clock.time(step, repeats, warmup)
            if device.type == "cuda":  # the whole step's peak: weights, grads, AdamW state and activations
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                step()
                torch.cuda.synchronize()
                peak = torch.cuda.max_memory_allocated()
            else:
                step()
                peak = None
            results.append({"activation": name, "time_s": t, "peak_bytes": peak})
        except Exception as exc:  # noqa: BLE001
            results.append({"activation": name, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
        finally:
            model = opt = None
            clock.release()
    base = next((r for r in results if r["activation"] == "gelu" and "time_s" in r), None)
    for r in results:
        if base and "time_s" in r:
            r["vs_gelu"] = r["time_s"] / base["time_s"]
            r["peak_vs_gelu"] = r["peak_bytes"] / base["peak_bytes"] if r["peak_bytes"] else None
    return {"ok": base is not None, "device": device_name(torch, device), "size": size, "batch": batch, "seq": seq,
            "steps": repeats, "warmup": warmup, "autocast": device.type == "cuda", "optimizer_groups": source,
            "results": results, "dry_run": args.dry_run}


# ---- report -------------------------------------------------------------------------------------------------
def verdict(value, target, dry_run) -> str:
    if value is None:
        return "-"
    if dry_run:
        return "(dry run)"
    return "meets" if value <= target else "**misses**"


def ratio(v) -> str:
    return "-" if v is None else f"{v:.2f}x"


def mib(v) -> str:
    return "-" if v is None else f"{v / 2**20:.0f}"


def report(directory: Path) -> str:
    def load(name):
        path = directory / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else None

    steps = load("steps") or {}
    imports = load("imports") or {}
    dry = bool(steps.get("dry_run"))
    out = [f"## GPU check{' (DRY RUN on CPU: tiny shapes, one step; no timing claims)' if dry else ''}", ""]
    v = imports.get("versions", {})
    out.append(f"Device: {imports.get('device', '?')}"
               + (f" (sm_{imports['capability'].replace('.', '')}, {imports['memory_gib']} GiB)" if imports.get("capability") else "")
               + f"; python {v.get('python')}, torch {v.get('torch')}, triton {v.get('triton')}; "
               f"script: `{steps.get('command', 'benchmarks/gpu_check.sh')}`")
    out.append("")
    out += ["| step | status | seconds | limit |", "|---|---|---|---|"]
    for s in steps.get("steps", []):
        out.append(f"| {s['name']} | {s['status']} | {s['seconds']} | {s['limit']} |")
    out.append("")
    if imports:
        bad = imports.get("forbidden_imported_by_core", []) + imports.get("forbidden_imported_by_kernels", [])
        out.append("Imports: `lit_ortho.activations`, `lit_ortho.models` and the Triton kernel modules "
                   + ("import without litdata/jsonargparse." if not bad else f"pull in {sorted(set(bad))}.")
                   + (" Kernel modules: " + ", ".join(f"{k} {s}" for k, s in imports.get("kernel_modules", {}).items())))
        out.append("")
    tests = load("triton_tests")
    if tests:
        out.append(f"Triton tests (`{tests.get('command')}`): {tests.get('summary')}")
        out.append("")
    kernels = load("kernels")
    if kernels:
        out += ["### Triton kernels against eager (bf16, forward, dx and coefficient gradients)", "",
                "| activation | coefficients | shape | max rel. error y | dx | coefficients | ok |", "|---|---|---|---|---|---|---|"]
        for r in kernels["rows"]:
            out.append(f"| {r['activation']} | {r['coefficients']} | {'x'.join(map(str, r['shape']))} | {r['err_y']:.2e} | "
                       f"{r['err_dx']:.2e} | {r['err_coef']:.2e} | {'yes' if r['ok'] else '**NO**'} |")
        out.append("")
    act = load("activation")
    if act:
        out += [f"### Activation forward+backward ({act['rows'][0]['dtype'] if act['rows'] else ''}, Triton kernels; "
                f"target <= {TARGETS['activation']}x eager GELU's time, <= {TARGETS['memory']}x its peak)", "",
                "| shape | coefficients | activation | time us | vs GELU | vs compiled GELU | target | peak MiB | peak vs GELU | target |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for row in act["rows"]:
            for r in row["results"]:
                shape = "x".join(map(str, row["shape"]))
                if "error" in r:
                    out.append(f"| {shape} | {row['coefficients']} | {r['activation']} | error: {r['error']} | | | | | | |")
                    continue
                is_gelu = r["activation"].startswith("gelu")
                out.append(f"| {shape} | {row['coefficients']} | {r['activation']} | {r['time_s'] * 1e6:.0f} | "
                           f"{ratio(r['vs_gelu'])} | {ratio(r['vs_gelu_compiled'])} | "
                           f"{'' if is_gelu else verdict(r['vs_gelu'], TARGETS['activation'], dry)} | {mib(r['peak_bytes'])} | "
                           f"{ratio(r['peak_vs_gelu'])} | {'' if is_gelu else verdict(r['peak_vs_gelu'], TARGETS['memory'], dry)} |")
        out.append("")
    mlp = load("mlp")
    if mlp:
        out += [f"### MLP block, Linear -> act -> Linear ({'bf16 autocast' if mlp.get('autocast') else 'float32'}; "
                f"ratios to the plain GELU block; target <= {TARGETS['mlp']}x time, <= {TARGETS['memory']}x peak; "
                "Liger's fused GeGLU MLP: 0.98x time, 0.68x memory)", "",
                "| block | variant | time ms | vs GELU | target | peak MiB | peak vs GELU | target |", "|---|---|---|---|---|---|---|---|"]
        for row in mlp["rows"]:
            for r in row["results"]:
                if "error" in r:
                    out.append(f"| {row['label']} | {r['block']} | error: {r['error']} | | | | | |")
                    continue
                is_base = r["block"] == "gelu, plain"
                out.append(f"| {row['label']} | {r['block']} | {r['time_s'] * 1e3:.2f} | {ratio(r['vs_gelu'])} | "
                           f"{'' if is_base else verdict(r['vs_gelu'], TARGETS['mlp'], dry)} | {mib(r['peak_bytes'])} | "
                           f"{ratio(r['peak_vs_gelu'])} | {'' if is_base else verdict(r['peak_vs_gelu'], TARGETS['memory'], dry)} |")
        out.append("")
    train = load("train")
    if train:
        out += [f"### GPT-2 training step ({train['size']}, batch {train['batch']} x {train['seq']} tokens, "
                f"{'bf16 autocast' if train['autocast'] else 'float32'}, AdamW ({train['optimizer_groups']}), grad clip 1.0; "
                f"median of {train['steps']} steps after {train['warmup']}; target <= {TARGETS['train']}x time, "
                f"<= {TARGETS['memory']}x peak)", "",
                "| activation | step ms | vs GELU | target | peak MiB | peak vs GELU | target |", "|---|---|---|---|---|---|---|"]
        for r in train["results"]:
            if "error" in r:
                out.append(f"| {r['activation']} | error: {r['error']} | | | | | |")
                continue
            is_base = r["activation"] == "gelu"
            out.append(f"| {r['activation']} | {r['time_s'] * 1e3:.1f} | {ratio(r.get('vs_gelu'))} | "
                       f"{'' if is_base else verdict(r.get('vs_gelu'), TARGETS['train'], dry)} | {mib(r['peak_bytes'])} | "
                       f"{ratio(r.get('peak_vs_gelu'))} | {'' if is_base else verdict(r.get('peak_vs_gelu'), TARGETS['memory'], dry)} |")
        out.append("")
    for name in ("kernels", "activation", "mlp", "train", "imports"):
        if load(name) is None:
            out.append(f"({name}: no result; see the step table)")
    return "\n".join(out).rstrip() + "\n"


STEPS = {"imports": step_imports, "kernels": step_kernels, "activation": step_activation, "mlp": step_mlp,
         "train": step_train}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=sorted(STEPS) + ["report"])
    parser.add_argument("directory", nargs="?", help="report: the directory with the steps' JSON files")
    parser.add_argument("--json", help="where the step writes its result")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, one step")
    parser.add_argument("--steps", type=int, default=5, help="train: timed steps per activation")
    args = parser.parse_args(argv)
    if args.step == "report":
        directory = Path(args.directory or ".")
        text = report(directory)
        (directory / "gpu_check.md").write_text(text)
        print(text)
        return
    if args.dry_run:  # the kernels run on CPU tensors under the interpreter, set before triton is imported
        os.environ.setdefault("TRITON_INTERPRET", "1")
        global DRY_RUN
        DRY_RUN = True
    started = time.perf_counter()
    result = STEPS[args.step](args)
    result["seconds"] = round(time.perf_counter() - started, 1)
    write(args.json or f"{args.step}.json", result)
    if not result.get("ok", True):
        sys.exit(1)


if __name__ == "__main__":
    main()
