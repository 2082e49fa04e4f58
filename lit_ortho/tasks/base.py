"""What the GPT-2 and ConvNeXt LightningModules share: the optimiser / schedule / parallelism options (declared
once, here), AdamW parameter groups, warmup + cosine LR, and sharding in ``configure_model``."""

from __future__ import annotations

import math
from typing import Any, Optional

import lightning as L
import torch
from torch import nn
from torchmetrics import Metric

from lit_ortho.activations import LearnableActivation
from lit_ortho.checkpointing import VerifiedLoading
from lit_ortho.distributed import sharding
from lit_ortho.errors import check_choice

__all__ = ["OrthoModule", "parameter_groups", "WarmupCosine", "NORM_TYPES", "MIXED_PRECISION_CHOICES"]

NORM_TYPES: tuple[type, ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.RMSNorm,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
)

MIXED_PRECISION_CHOICES = sharding.MIXED_PRECISION_CHOICES


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


class OrthoModule(VerifiedLoading, L.LightningModule):
    """Base LightningModule: subclasses build ``self.model`` and say which blocks to shard.
    ``load_from_checkpoint`` verifies the file's checksum first (:class:`~lit_ortho.checkpointing.VerifiedLoading`).

    The options below are declared here only. A subclass takes its own arguments and passes the rest on with
    ``super().__init__(**kwargs)``: LightningCLI (jsonargparse) follows ``**kwargs`` into this signature, so
    every option keeps its flat YAML key (``model.init_args.lr``) and its default in ``--print_config``. A
    subclass whose recipe has other defaults re-declares only those options and forwards them by keyword
    (see :class:`~lit_ortho.tasks.ConvNeXtModule`). All of them, defaults included, are saved in ``hparams``
    (``save_hyperparameters`` is called here, for the whole class chain).

    Args:
        lr: peak learning rate (AdamW).
        min_lr: final learning rate of the cosine schedule (``None``: ``lr / 10``, nanoGPT's choice).
        weight_decay: AdamW decoupled weight decay for weight matrices (see :func:`parameter_groups`).
        betas: AdamW's moment coefficients.
        eps: AdamW's denominator term.
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
        check_choice(fsdp_mixed_precision, MIXED_PRECISION_CHOICES, "fsdp_mixed_precision")
        # every __init__ argument of the class chain (this one's and the subclass's), defaults included
        self.save_hyperparameters()
        self.model: Optional[nn.Module] = None
        self._compiled = False
        self._param_ndims: dict[int, int] = {}  # before FSDP1 flattens parameters (see configure_model)

    # ---- to be provided by subclasses ------------------------------------------------------------------
    def shard_units(self) -> list[nn.Module]:
        """The modules FSDP shards one by one (transformer blocks, ConvNeXt stages)."""
        raise NotImplementedError

    def compile_units(self) -> list[nn.Module]:
        return self.shard_units()

    def set_activation_checkpointing(self, enabled: bool) -> None:
        raise NotImplementedError

    # ---- evaluation ------------------------------------------------------------------------------------
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

    # ---- optimisation ----------------------------------------------------------------------------------
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
        """``gradient_clip_val`` by norm also under FSDP1, where Lightning refuses it (see
        :func:`lit_ortho.distributed.sharding.clip_gradients`)."""
        if not sharding.clip_gradients(self._strategy(), gradient_clip_val, gradient_clip_algorithm):
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # ---- parallelism -----------------------------------------------------------------------------------
    def configure_model(self) -> None:
        """Activation checkpointing, compile, then sharding by :func:`lit_ortho.distributed.sharding.shard_model`:
        each of :meth:`shard_units` its own FSDP2 group / FSDP1 unit, learnable activations in fp32. Single
        device and DDP: no sharding; the same module runs unchanged. Idempotent."""
        if self.model is None:
            return
        if not self._param_ndims:  # FSDP1 (use_orig_params) turns every parameter into a 1-D shard view
            self._param_ndims = {id(p): p.ndim for p in self.model.parameters()}
        if self.hparams.activation_checkpointing:
            self.set_activation_checkpointing(True)
        if self.hparams.compile and not self._compiled:
            for unit in self.compile_units():
                unit.compile()
            self._compiled = True
        strategy = self._strategy()
        precision = getattr(self._trainer, "precision", "32-true") if self._trainer is not None else "32-true"
        param_dtype = sharding.resolve_param_dtype(self.hparams.fsdp_mixed_precision, precision)
        sharding.shard_model(self.model, self.shard_units, strategy, self.device_mesh, param_dtype)

    def _strategy(self):
        return None if self._trainer is None else self._trainer.strategy
