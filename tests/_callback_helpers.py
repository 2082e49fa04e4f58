"""Shared pieces of the callback tests: a tiny model, its data, a plain-PyTorch replay of its training that
computes every statistic directly, TensorBoard read-back, and what the multi-process runs
(tests/scripts/callback_ranks.py) train with.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger

FEATURES, HIDDEN1, HIDDEN2 = 8, 12, 5
GLOBAL_BATCH = 8
NUM_SAMPLES = 64
LR = 0.05


class Block(nn.Module):
    def __init__(self, fan_in: int, fan_out: int, act: nn.Module):
        super().__init__()
        self.fc = nn.Linear(fan_in, fan_out)
        self.act = act

    def forward(self, x):
        return self.act(self.fc(x))


class TinyNet(pl.LightningModule):
    """Linear -> GELU -> Linear -> Tanh -> Linear. Registered in another order than they run (head first),
    so "first layer in forward order" differs from "first registered". ``checkpointing``: "none", "function"
    (torch.utils.checkpoint in forward) or "wrapper" (checkpoint_wrapper modules, names gain a wrapper part)."""

    def __init__(self, blow_up: float = 1.0, checkpointing: str = "none", act1: Optional[nn.Module] = None,
                 act2: Optional[nn.Module] = None, compile_block1: bool = False, lr: float = LR,
                 optimizer: str = "sgd"):  # fmt: skip
        super().__init__()
        torch.manual_seed(0)
        self.head = nn.Linear(HIDDEN2, 1)
        self.block2 = Block(HIDDEN1, HIDDEN2, act2 if act2 is not None else nn.Tanh())
        self.block1 = Block(FEATURES, HIDDEN1, act1 if act1 is not None else nn.GELU())
        with torch.no_grad():
            self.block1.fc.weight.mul_(blow_up)
            self.block2.fc.weight.mul_(blow_up)
        if checkpointing == "wrapper":  # what Lightning's FSDP activation_checkpointing_policy applies
            from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

            self.block1, self.block2 = checkpoint_wrapper(self.block1), checkpoint_wrapper(self.block2)
        if compile_block1:
            self.block1 = torch.compile(self.block1, backend="aot_eager")
        self.checkpointing, self.lr, self.optimizer = checkpointing, lr, optimizer
        self.hsdp = False  # FSDP2 on a (replicate, shard) mesh instead of the data-parallel dimension

    def configure_model(self):
        mesh = getattr(self, "_device_mesh", None)
        if mesh is None:
            return
        from torch.distributed.fsdp import fully_shard

        dp = mesh["data_parallel"]
        if self.hsdp:
            from torch.distributed.device_mesh import init_device_mesh

            dp = init_device_mesh("cpu", (dp.size(), 1), mesh_dim_names=("replicate", "shard"))
        for module in (self.block1, self.block2, self.head):
            fully_shard(module, mesh=dp)
        fully_shard(self, mesh=dp)

    def forward(self, x):
        if self.checkpointing == "function":
            h = checkpoint(self.block1, x, use_reentrant=False)
            h = checkpoint(self.block2, h, use_reentrant=False)
        else:
            h = self.block2(self.block1(x))
        return self.head(h)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.mse_loss(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self(x * 100.0)  # very different statistics: would show if validation leaked into the training values

    def configure_optimizers(self):
        if self.optimizer == "fused-adamw":  # updates computed inside one kernel: only the weights tell
            return torch.optim.AdamW(self.parameters(), lr=self.lr, fused=True)
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def make_data(n: int = NUM_SAMPLES) -> tuple[torch.Tensor, torch.Tensor]:
    """Odd and even samples differ in mean and scale, so per-rank variances (ranks get alternate samples)
    averaged would differ clearly from the global variance."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, FEATURES, generator=g)
    x[1::2] = 3.0 * x[1::2] + 1.0
    y = x[:, :2].sum(1, keepdim=True).tanh()
    return x, y


class _AlternateSampler(torch.utils.data.Sampler):
    """Rank r of W reads samples r, r + W, ... in order: W ranks' batches k together are the 1-process batch k
    (Lightning's own DistributedSampler always shuffles training data)."""

    def __init__(self, n: int):
        self.n = n

    def __iter__(self):
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        return iter(range(rank, self.n, world))

    def __len__(self) -> int:
        return self.n // 2


def loader(batch_size: int, distributed: bool = False) -> torch.utils.data.DataLoader:
    dataset = torch.utils.data.TensorDataset(*make_data())
    sampler = _AlternateSampler(len(dataset)) if distributed else None
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler)


def trainer(log_dir: Path, callbacks: list, max_steps: int, **kwargs) -> pl.Trainer:
    kwargs.setdefault("accelerator", "cpu")
    kwargs.setdefault("devices", 1)
    return pl.Trainer(
        max_steps=max_steps,
        callbacks=callbacks,
        logger=TensorBoardLogger(str(log_dir), name="", version=""),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=kwargs.pop("enable_checkpointing", False),
        num_sanity_val_steps=kwargs.pop("num_sanity_val_steps", 0),
        limit_val_batches=kwargs.pop("limit_val_batches", 0),
        **kwargs,
    )


def population_var(t: torch.Tensor) -> float:
    return torch.var(t.detach().double(), unbiased=False).item()


def kurtosis(t: torch.Tensor) -> float:
    """E[(x - mean)^4] / var^2 from the centred values (the callbacks pool raw power sums instead)."""
    d = t.detach().double().reshape(-1)
    d = d - d.mean()
    return (d**4).mean().item() / (d**2).mean().item() ** 2


def replay(
    num_steps: int, accumulate: int = 1, precision: Optional[str] = None, model: Optional[TinyNet] = None,
    clip: Optional[float] = None,
) -> list[dict]:
    """Train TinyNet on the same batches with a plain PyTorch loop and compute every statistic directly:
    per step, {tag: value} with the tags the callbacks log. ``clip``: gradients clipped to that norm."""
    model = model or TinyNet()
    optimizer = model.configure_optimizers()
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}
    owners = dict(model.named_modules())
    x_all, y_all = make_data()
    micro = GLOBAL_BATCH // accumulate
    steps = []
    for step in range(num_steps):
        tensors: dict[str, list[torch.Tensor]] = {}
        optimizer.zero_grad()
        for k in range(accumulate):
            start = (step * accumulate + k) * micro
            x, y = x_all[start : start + micro], y_all[start : start + micro]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
                h1 = model.block1.fc(x)
                a1 = model.block1.act(h1.clone())  # clone: an in-place activation must not overwrite h1
                h2 = model.block2.fc(a1)
                a2 = model.block2.act(h2.clone())
                out = model.head(a2)
            loss = F.mse_loss(out.float(), y) / accumulate
            for t in (h1, a1, h2, a2):
                t.retain_grad()
            loss.backward()
            for name, t in (("h1", h1), ("a1", a1), ("h2", h2), ("a2", a2)):
                tensors.setdefault(name, []).append(t.detach())
                tensors.setdefault(name + ".grad", []).append(t.grad.detach())
        cat = {k: torch.cat([t.reshape(-1) for t in v]) for k, v in tensors.items()}
        values = {}
        for layer, (inp, out) in {"block1.act": ("h1", "a1"), "block2.act": ("h2", "a2")}.items():
            values[f"activation_variance/{layer}"] = population_var(cat[out])
            values[f"activation_mean/{layer}"] = cat[out].double().mean().item()
            values[f"activation_gain/{layer}"] = population_var(cat[out]) / population_var(cat[inp])
            values[f"activation_kurtosis/{layer}"] = kurtosis(cat[out])
            values[f"activation_absmax/{layer}"] = cat[out].double().abs().max().item()
            grad_in, grad_out = cat[inp + ".grad"], cat[out + ".grad"]
            values[f"activation_grad_variance/{layer}"] = population_var(grad_in)
            values[f"activation_grad_gain/{layer}"] = population_var(grad_in) / population_var(grad_out)
        for name, p in model.named_parameters():
            if p.numel() > 1:  # a 1-element tensor has no spread: not logged
                values[f"gradient_variance/{name.replace('_orig_mod.', '')}"] = population_var(p.grad)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        before = {name: p.detach().clone() for name, p in model.named_parameters()}
        grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
        optimizer.step()
        for name, p in model.named_parameters():  # ParameterUpdateMonitor: norms of differences, in float64
            tag = name.replace("_orig_mod.", "")
            w, w0, wb = p.detach().double(), initial[name].double(), before[name].double()
            values[f"update_ratio/{tag}"] = ((w - wb).norm() / wb.norm()).item()
            values[f"parameter_drift/{tag}"] = ((w - w0).norm() / w0.norm()).item()
            if hasattr(owners[name.rpartition(".")[0]], "record_statistics"):  # a learnable activation's coefficients
                for k, (v, g) in enumerate(zip(w.reshape(-1).tolist(), grads[name].double().reshape(-1).tolist())):
                    values[f"coefficient/{tag}/{k}"] = v
                    values[f"coefficient_grad/{tag}/{k}"] = g
        steps.append(values)
    return steps


def read_scalars(log_dir: Path) -> dict[str, dict[int, float]]:
    """Every scalar in the TensorBoard event files under ``log_dir``: {tag: {step: value}}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, dict[int, float]] = {}
    for events in sorted(Path(log_dir).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0, "images": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
    return out


def read_images(log_dir: Path) -> dict[str, list]:
    """{tag: [ImageEvent(step, width, height, encoded_image_string), ...]} from the event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list] = {}
    for events in sorted(Path(log_dir).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"images": 0})
        acc.Reload()
        for tag in acc.Tags()["images"]:
            out.setdefault(tag, []).extend(acc.Images(tag))
    return out


def local_numel(p: torch.Tensor) -> int:
    return (p.to_local() if hasattr(p, "to_local") else p).numel()


class ShardReport(pl.Callback):
    """Writes, per rank, each parameter's type and local size: proof that FSDP2 really sharded the model."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir

    def on_fit_start(self, trainer, pl_module):
        from torch.distributed.tensor import DTensor

        report = {
            name: {"dtensor": isinstance(p, DTensor), "local_numel": local_numel(p),
                   "placements": [str(q) for q in p.placements] if isinstance(p, DTensor) else []}
            for name, p in pl_module.named_parameters()
        }  # fmt: skip
        report["strategy"] = type(trainer.strategy).__name__
        (self.out_dir / f"params-rank{trainer.global_rank}.json").write_text(json.dumps(report))


def cpu_fsdp1_strategy():
    """FSDP1 (FullyShardedDataParallel, FULL_SHARD, use_orig_params) on CPU: Lightning 2.6 refuses FSDPStrategy
    on CPU (the check is on the exact class) and passes device_id=None, which torch refuses; a subclass wraps."""
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    from lightning.pytorch.strategies import FSDPStrategy

    class CpuFSDPStrategy(FSDPStrategy):
        def _setup_model(self, model):
            return FullyShardedDataParallel(
                module=model, sharding_strategy=self.sharding_strategy, device_id=torch.device("cpu"), **self.kwargs
            )

    return CpuFSDPStrategy(auto_wrap_policy=ModuleWrapPolicy({Block}), state_dict_type="sharded")


def distributed_run_model() -> TinyNet:
    """The model of the 1- vs 2-process comparisons: block2's activation is a lit_ortho Hermite, so the
    shape monitor has something to gather from the shards."""
    from lit_ortho.activations import HermiteActivation

    return TinyNet(act2=HermiteActivation(3))


def distributed_run_callbacks() -> list:
    from callbacks import ActivationShapeMonitor, ActivationVarianceMonitor, GradientVarianceMonitor, ParameterUpdateMonitor

    return [
        ActivationVarianceMonitor(every_n_steps=1, image_every_n_steps=0),
        GradientVarianceMonitor(every_n_steps=1, image_every_n_steps=0, activation_gradients=True),
        ParameterUpdateMonitor(every_n_steps=1, image_every_n_steps=0),
        ActivationShapeMonitor(every_n_steps=1),
    ]
