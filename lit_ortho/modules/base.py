"""What the GPT-2 and ConvNeXt LightningModules share: AdamW parameter groups, warmup + cosine LR,
and FSDP2 sharding / activation checkpointing in ``configure_model``."""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional

import lightning as L
import torch
from torch import nn
from torchmetrics import Metric

from lit_ortho.activations import LearnableActivation

__all__ = ["OrthoModule", "parameter_groups", "WarmupCosine", "NORM_TYPES"]

NORM_TYPES: tuple[type, ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())

MIXED_PRECISION_CHOICES = ("auto", "bf16", "fp16", "fp32")


def parameter_groups(model: nn.Module, weight_decay: float, ndims: Optional[dict[int, int]] = None) -> list[dict[str, Any]]:
    """AdamW groups: decay on weight matrices / conv kernels / embeddings, none on the rest.

    No weight decay for: parameters of learnable activations (whatever their shape: the paper's
    rule), normalisation layers, and any parameter with fewer than 2 dimensions (biases, scales).
    Frozen parameters (``requires_grad=False``) are left out; tied parameters appear once. Each group
    has a ``name`` (``decay`` / ``no_decay``: LearningRateMonitor's tags) and ``param_names``.
    ``ndims`` (``id(parameter) -> ndim``) gives the dimensions parameters had before FSDP1 flattened them
    into 1-D shards.
    """
    no_decay_ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, (LearnableActivation,) + NORM_TYPES):
            no_decay_ids.update(id(p) for p in module.parameters(recurse=isinstance(module, LearnableActivation)))
    decay, no_decay, decay_names, no_decay_names, seen = [], [], [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        ndim = ndims.get(id(p), p.ndim) if ndims else p.ndim
        if id(p) in no_decay_ids or ndim < 2:
            no_decay.append(p)
            no_decay_names.append(name)
        else:
            decay.append(p)
            decay_names.append(name)
    groups = []
    if decay:
        groups.append({"name": "decay", "params": decay, "weight_decay": weight_decay, "param_names": decay_names})
    if no_decay:
        groups.append({"name": "no_decay", "params": no_decay, "weight_decay": 0.0, "param_names": no_decay_names})
    if not groups:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    return groups


class WarmupCosine:
    """LR multiplier: linear warmup over ``warmup_steps``, cosine from 1 to ``min_ratio`` at ``decay_steps``.

    A callable object (not a lambda) so ``LambdaLR.state_dict()`` saves it and a resumed run continues
    the same schedule.
    """

    def __init__(self, warmup_steps: int, decay_steps: int, min_ratio: float):
        self.warmup_steps = int(warmup_steps)
        self.decay_steps = max(int(decay_steps), self.warmup_steps + 1)
        self.min_ratio = float(min_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        if step >= self.decay_steps:
            return self.min_ratio
        progress = (step - self.warmup_steps) / (self.decay_steps - self.warmup_steps)
        return self.min_ratio + 0.5 * (1.0 + math.cos(math.pi * progress)) * (1.0 - self.min_ratio)


def _fsdp2():
    try:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    except ImportError:  # torch < 2.6
        from torch.distributed._composable.fsdp import MixedPrecisionPolicy, fully_shard
    return fully_shard, MixedPrecisionPolicy


class OrthoModule(L.LightningModule):
    """Base LightningModule: subclasses build ``self.model`` and say which blocks to shard.

    Args:
        lr: peak learning rate (AdamW).
        min_lr: final learning rate of the cosine schedule (``None``: ``lr / 10``, nanoGPT's choice).
        weight_decay: AdamW decoupled weight decay for weight matrices (see :func:`parameter_groups`).
        betas, eps: AdamW.
        warmup_steps: linear warmup length in optimizer steps.
        warmup_epochs: warmup length in epochs (added to ``warmup_steps``; needs ``max_epochs``).
        lr_decay_steps: where the cosine reaches ``min_lr`` (``None``: the run's total optimizer steps).
        activation_checkpointing: recompute each transformer block / ConvNeXt block in backward.
        compile: ``torch.compile`` each block in place (parameter names unchanged).
        fsdp_mixed_precision: under FSDP2 (``ModelParallelStrategy``), the dtype parameters are
            all-gathered in: ``"auto"`` follows the Trainer's precision (``bf16-mixed`` -> bf16), or
            ``"bf16"``, ``"fp16"``, ``"fp32"``. Gradients are always reduced in fp32, and learnable
            activations always compute with fp32 coefficients.
    """

    def __init__(
        self,
        lr: float = 6e-4,
        min_lr: Optional[float] = None,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        warmup_steps: int = 0,
        warmup_epochs: float = 0.0,
        lr_decay_steps: Optional[int] = None,
        activation_checkpointing: bool = False,
        compile: bool = False,
        fsdp_mixed_precision: str = "auto",
    ):
        super().__init__()
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr!r}")
        if min_lr is not None and not 0 <= min_lr <= lr:
            raise ValueError(f"min_lr must be in [0, lr={lr}], got {min_lr!r}")
        if warmup_steps < 0 or warmup_epochs < 0:
            raise ValueError(f"warmup_steps and warmup_epochs must be >= 0, got {warmup_steps!r}, {warmup_epochs!r}")
        if fsdp_mixed_precision not in MIXED_PRECISION_CHOICES:
            raise ValueError(
                f"unknown fsdp_mixed_precision {fsdp_mixed_precision!r}; valid choices: {', '.join(MIXED_PRECISION_CHOICES)}"
            )
        self.model: Optional[nn.Module] = None
        self._compiled = False
        self._param_ndims: dict[int, int] = {}  # before FSDP1 flattens parameters (see configure_model)

    # ---- to be provided by subclasses ------------------------------------------------------------------
    def shard_units(self) -> list[nn.Module]:
        """The modules FSDP2 shards one by one (transformer blocks, ConvNeXt stages)."""
        raise NotImplementedError

    def compile_units(self) -> list[nn.Module]:
        return self.shard_units()

    def set_activation_checkpointing(self, enabled: bool) -> None:
        raise NotImplementedError

    # ---- optimisation ----------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._fresh_metric_states()

    def on_test_epoch_start(self) -> None:
        self._fresh_metric_states()

    def _fresh_metric_states(self) -> None:
        """Start each evaluation epoch from new metric states. States reset under ``Trainer.validate``'s
        inference mode are inference tensors, which a later ``fit``'s validation (no_grad only) cannot
        update in place ("Inplace update to inference tensor outside InferenceMode")."""
        for module in self.modules():
            if isinstance(module, Metric):
                module.reset()

    def configure_optimizers(self):
        hp = self.hparams
        groups = parameter_groups(self.model, hp.weight_decay, ndims=self._param_ndims)
        for g in groups:
            g.pop("param_names")
        fused = all(p.is_cuda for g in groups for p in g["params"]) and self.device_mesh is None
        optimizer = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps, **({"fused": True} if fused else {}))
        total = self.trainer.estimated_stepping_batches
        warmup = int(hp.warmup_steps)
        if hp.warmup_epochs:
            if not self.trainer.max_epochs or self.trainer.max_epochs < 1 or not math.isfinite(total):
                raise ValueError("warmup_epochs needs Trainer(max_epochs=...) and a sized dataloader; use warmup_steps instead")
            warmup += int(round(hp.warmup_epochs * total / self.trainer.max_epochs))
        decay = hp.lr_decay_steps if hp.lr_decay_steps is not None else total
        if not math.isfinite(decay):
            raise ValueError("cannot tell the run's length for the cosine schedule: set Trainer max_steps or lr_decay_steps")
        min_lr = hp.min_lr if hp.min_lr is not None else hp.lr / 10
        schedule = WarmupCosine(warmup, int(decay), min_lr / hp.lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """``gradient_clip_val`` by norm also under FSDP1, where Lightning refuses it: the norm is computed over
        all shards by ``FullyShardedDataParallel.clip_grad_norm_`` (FSDP2, DDP, one device: Lightning's own)."""
        strategy_model = getattr(self._strategy(), "model", None)
        if gradient_clip_val and gradient_clip_algorithm in (None, "norm") and _is_fsdp1(strategy_model):
            strategy_model.clip_grad_norm_(float(gradient_clip_val))
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # ---- parallelism -----------------------------------------------------------------------------------
    def configure_model(self) -> None:
        """Activation checkpointing, compile, and FSDP2 sharding when the strategy provides a device mesh.

        Under ``ModelParallelStrategy`` each unit of :meth:`shard_units` becomes its own FSDP2 group
        (``fully_shard`` on the ``data_parallel`` mesh dimension), then the whole network. Learnable
        activations get their own fp32 group inside, so their few coefficients are never rounded to
        bf16. Options of :class:`lit_ortho.distributed.FSDP2Strategy` (hybrid sharding, CPU offload,
        ``reshard_after_forward``) are applied here. Under FSDP1 (``strategy: fsdp`` / ``fsdp1``) with no
        ``auto_wrap_policy`` given, the strategy is told to wrap each unit, and each learnable activation in
        an fp32 unit. Single device and DDP: no sharding; the same module runs unchanged. Idempotent.
        """
        if self.model is None:
            return
        if not self._param_ndims:  # FSDP1 (use_orig_params) turns every parameter into a 1-D shard view
            self._param_ndims = {id(p): p.ndim for p in self.model.parameters()}
        hp = self.hparams
        if hp.activation_checkpointing:
            self.set_activation_checkpointing(True)
        if hp.compile and not self._compiled:
            for unit in self.compile_units():
                unit.compile()
            self._compiled = True
        mesh = self.device_mesh
        if mesh is not None and not _is_sharded(self.model):
            self._fully_shard(mesh)
        elif mesh is None:
            self._set_fsdp1_wrap_policy()

    def _strategy(self):
        return None if self._trainer is None else self._trainer.strategy

    def _set_fsdp1_wrap_policy(self) -> None:
        """Under FSDP1 (``strategy: fsdp`` / ``fsdp1``) with no ``auto_wrap_policy`` of the user's: one FSDP unit per
        block, and one fp32 unit per learnable activation (set on the strategy, which wraps after this hook)."""
        from lightning.pytorch.strategies import FSDPStrategy

        strategy = self._strategy()
        if not isinstance(strategy, FSDPStrategy) or "auto_wrap_policy" in strategy.kwargs:
            return
        from torch.distributed.fsdp import MixedPrecision
        from torch.distributed.fsdp.wrap import CustomPolicy

        unit_ids = {id(unit) for unit in self.shard_units()}
        fp32_unit = {"mixed_precision": MixedPrecision(param_dtype=torch.float32, reduce_dtype=torch.float32, buffer_dtype=torch.float32)}
        keep_fp32 = self._param_dtype() is not None

        def policy(module: nn.Module):
            if keep_fp32 and isinstance(module, LearnableActivation):
                return fp32_unit
            return id(module) in unit_ids

        strategy.kwargs["auto_wrap_policy"] = CustomPolicy(policy)

    def _param_dtype(self) -> Optional[torch.dtype]:
        choice = self.hparams.fsdp_mixed_precision
        if choice == "auto":
            precision = str(getattr(self._trainer, "precision", "32-true")) if self._trainer is not None else "32-true"
            choice = "bf16" if precision.startswith("bf16") else "fp16" if precision.startswith("16") else "fp32"
        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[choice]

    def _fully_shard(self, mesh) -> None:
        fully_shard, MixedPrecisionPolicy = _fsdp2()
        names = mesh.mesh_dim_names or ()
        if "tensor_parallel" in names and mesh["tensor_parallel"].size() > 1:
            raise NotImplementedError(
                f"{type(self).__name__} shards with FSDP2 only; set ModelParallelStrategy(tensor_parallel_size=1, "
                f"data_parallel_size=<number of GPUs>), got tensor_parallel_size={mesh['tensor_parallel'].size()}"
            )
        # FSDP2Strategy (lit_ortho.distributed) adds: a hybrid-shard mesh, CPU offload, reshard_after_forward
        options = dict(getattr(self._strategy(), "fsdp2_options", None) or {})
        dp_mesh = options.pop("mesh", None) or (mesh["data_parallel"] if "data_parallel" in names else mesh)
        reshard = options.pop("reshard_after_forward", True)
        param_dtype = self._param_dtype()
        policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
        fp32_policy = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32, cast_forward_inputs=False)
        units = self.shard_units()
        for i, unit in enumerate(units):
            if param_dtype is not None:
                for module in _learnable_activations(unit):
                    fully_shard(module, mesh=dp_mesh, mp_policy=fp32_policy, reshard_after_forward=reshard, **options)
            # the last unit's parameters are needed again right away in backward: keep them gathered
            fully_shard(unit, mesh=dp_mesh, mp_policy=policy, reshard_after_forward=reshard and i < len(units) - 1, **options)
        if param_dtype is not None:
            for module in _learnable_activations(self.model):
                if not _is_sharded(module):
                    fully_shard(module, mesh=dp_mesh, mp_policy=fp32_policy, reshard_after_forward=reshard, **options)
        # root (embeddings, final norm, tied head): torch's default keeps it gathered from forward to backward
        fully_shard(self.model, mesh=dp_mesh, mp_policy=policy, reshard_after_forward=None if reshard else False, **options)


def _learnable_activations(module: nn.Module) -> Iterable[nn.Module]:
    return [m for m in module.modules() if isinstance(m, LearnableActivation)]


def _is_sharded(module: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch < 2.6
        from torch.distributed._composable.fsdp import FSDPModule
    return isinstance(module, FSDPModule)


def _is_fsdp1(module: Optional[nn.Module]) -> bool:
    from torch.distributed.fsdp import FullyShardedDataParallel

    return isinstance(module, FullyShardedDataParallel)
