"""GPT-2 training-step time and peak memory with each learnable activation, against the GELU model.

    python benchmarks/train_step.py                              # CUDA: GPT-2 124M, 12 x 1024 tokens, bf16
    python benchmarks/train_step.py --compile                    # the same, torch.compile'd (nanoGPT does)
    python benchmarks/train_step.py --device cpu --size tiny --batch 4 --seq 128 --steps 3   # smoke test

One step = forward (bf16 autocast on CUDA) + cross-entropy on random tokens + backward + grad
clip 1.0 + AdamW (lr 6e-4, betas 0.9/0.95, weight decay 0.1: nanoGPT's recipe) with the training code's own
parameter groups (``lit_ortho.tasks.parameter_groups``: no decay on learnable activations, norms, biases).
Every model is built with the same seed; only the MLP activation differs. Reported per activation:
median step time and peak memory (CUDA: ``torch.cuda.max_memory_allocated`` over the timed steps),
and both as ratios to the GELU model measured in the same run. Activations use ``--backend``
(default ``auto``: the Triton kernels on CUDA).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import statistics
import time

import torch

from lit_ortho.models.gpt import GPT, GPTConfig
from lit_ortho.tasks import parameter_groups

DEFAULT_ACTIVATIONS = ["gelu", "hermite:3", "fourier:5", "tropical:5", "tropical_rational:6"]


def activation_spec(spec: str, backend: str):
    if spec in ("gelu", "gelu_tanh", "silu", "relu"):
        return spec
    name, _, degree = spec.partition(":")
    return {"name": name, "degree": int(degree), "backend": backend}


def optimizer_for(model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over the groups training uses (``OrthoModule.configure_optimizers``): the same decay rule."""
    groups = parameter_groups(model, weight_decay=0.1)
    for group in groups:
        group.pop("param_names")
    return torch.optim.AdamW(groups, lr=6e-4, betas=(0.9, 0.95), fused=device.type == "cuda")


def measure(spec, args, device) -> tuple[float, int]:
    """(median step seconds, peak bytes) of one model."""
    torch.manual_seed(0)
    config = GPTConfig.from_name(args.size, activation=activation_spec(spec, args.backend), dropout=0.0)
    model = GPT(config).to(device)
    model.train()
    opt = optimizer_for(model, device)
    step_model = torch.compile(model) if args.compile else model
    gen = torch.Generator(device="cpu").manual_seed(1)
    vocab = config.vocab_size
    idx = torch.randint(0, vocab, (args.batch, args.seq + 1), generator=gen).to(device)
    inputs, targets = idx[:, :-1], idx[:, 1:]
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.autocast else contextlib.nullcontext())

    def step():
        with autocast:
            logits = step_model(inputs)
            loss = torch.nn.functional.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else 0
    return statistics.median(times), peak


def release_memory(device) -> None:
    """Free the last model (its references went with :func:`measure`'s frame) before measuring the next."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", default="gpt2", help="GPT size: tiny, gpt2 (124M), gpt2-medium, ...")
    parser.add_argument("--batch", type=int, default=12)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per activation")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--backend", default="auto", choices=("auto", "eager", "triton"))
    parser.add_argument("--autocast", action=argparse.BooleanOptionalAction, default=None,
                        help="bf16 autocast (default: on for CUDA, off for CPU)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("activations", nargs="*", default=DEFAULT_ACTIVATIONS,
                        help="activation specs, 'gelu' first (default: %(default)s)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.autocast is None:
        args.autocast = device.type == "cuda"
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    acts = list(args.activations)
    if acts[0] != "gelu":
        acts.insert(0, "gelu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{name}: GPT {args.size}, batch {args.batch} x {args.seq} tokens, "
          f"{'bf16 autocast' if args.autocast else 'float32'}{', torch.compile' if args.compile else ''}, "
          f"backend {args.backend}, median of {args.steps} steps after {args.warmup} warm-up")
    header = f"{'activation':<22} {'step ms':>9} {'vs GELU':>8} {'peak MiB':>9} {'vs GELU':>8}"
    print(header)
    print("-" * len(header))
    base_time = base_peak = None
    for spec in acts:
        t, peak = measure(spec, args, device)
        release_memory(device)
        if base_time is None:
            base_time, base_peak = t, peak
        mem = f"{peak / 2**20:>9.0f} {peak / base_peak:>7.3f}x" if base_peak else f"{'-':>9} {'-':>8}"
        print(f"{spec:<22} {t * 1e3:>9.1f} {t / base_time:>7.3f}x {mem}", flush=True)


if __name__ == "__main__":
    main()
