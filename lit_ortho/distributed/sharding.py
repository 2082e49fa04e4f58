"""How a LightningModule's network is sharded: FSDP2 ``fully_shard`` per block, the FSDP1 auto-wrap policy,
and FSDP1 gradient clipping.

The interface is :func:`shard_model`: a LightningModule calls it from ``configure_model`` with its network, a
function returning the blocks to shard one by one (its *shard units*: transformer blocks, ConvNeXt stages), the
Trainer's strategy and device mesh, and the dtype parameters are gathered in (:func:`resolve_param_dtype`). What the strategy adds is
read by :func:`fsdp2_options`, which documents the attributes it uses. :func:`clip_gradients` does gradient
clipping by norm under FSDP1, where Lightning refuses it.

Learnable activations (:class:`~lit_ortho.activations.LearnableActivation`) always compute with fp32
coefficients: under a low-precision policy they get their own fp32 FSDP group (FSDP2) or unit (FSDP1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
from lightning.pytorch.strategies import FSDPStrategy, Strategy
from torch import nn
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, FullyShardedDataParallel, MixedPrecision, MixedPrecisionPolicy
from torch.distributed.fsdp import OffloadPolicy, fully_shard
from torch.distributed.fsdp.wrap import CustomPolicy

from lit_ortho.activations import LearnableActivation
from lit_ortho.distributed.strategies import FSDP2Strategy
from lit_ortho.errors import check_choice

__all__ = [
    "MIXED_PRECISION_CHOICES",
    "FSDP2Options",
    "resolve_param_dtype",
    "fsdp2_options",
    "apply_fsdp2",
    "set_fsdp1_wrap_policy",
    "shard_model",
    "clip_gradients",
    "is_sharded",
    "is_fsdp1",
]

MIXED_PRECISION_CHOICES = ("auto", "bf16", "fp16", "fp32")


def resolve_param_dtype(choice: str, precision: Any = "32-true") -> Optional[torch.dtype]:
    """The dtype sharded parameters are gathered in for compute: ``choice`` (``"bf16"``, ``"fp16"``, ``"fp32"``),
    or for ``"auto"`` the one the Trainer's ``precision`` implies (``bf16-mixed`` -> bf16). ``None`` means fp32
    (no mixed-precision cast)."""
    check_choice(choice, MIXED_PRECISION_CHOICES, "fsdp_mixed_precision")
    if choice == "auto":
        precision = str(precision if precision is not None else "32-true")
        choice = "bf16" if precision.startswith("bf16") else "fp16" if precision.startswith("16") else "fp32"
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[choice]


def is_sharded(module: nn.Module) -> bool:
    """Whether FSDP2 ``fully_shard`` has been applied to ``module``."""
    return isinstance(module, FSDPModule)


def is_fsdp1(module: Optional[nn.Module]) -> bool:
    """Whether ``module`` is wrapped in FSDP1 ``FullyShardedDataParallel``."""
    return isinstance(module, FullyShardedDataParallel)


def _learnable_activations(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, LearnableActivation)]


# ---- FSDP2 --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FSDP2Options:
    """What ``fully_shard`` is given besides the mixed-precision policy.

    Attributes:
        mesh: the device mesh to shard over (1-D; or 2-D ``("replicate", "shard")`` for hybrid sharding).
        reshard_after_forward: free gathered parameters after each block's forward (the last block and the root
            stay gathered into backward either way).
        offload_policy: ``CPUOffloadPolicy`` to keep shards and optimizer state in CPU memory, or ``None``.
    """

    mesh: Any
    reshard_after_forward: bool = True
    offload_policy: Optional[OffloadPolicy] = None


def fsdp2_options(strategy: Optional[Strategy], device_mesh) -> FSDP2Options:
    """The FSDP2 options for a model under ``strategy`` with the LightningModule's ``device_mesh``.

    Any ``ModelParallelStrategy``: shard over the mesh's ``data_parallel`` dimension (the whole mesh if it has
    none); tensor parallelism is refused. :class:`~lit_ortho.distributed.FSDP2Strategy` adds its
    ``shard_mesh`` (hybrid sharding), ``cpu_offload`` and ``reshard_after_forward``.
    """
    names = device_mesh.mesh_dim_names or ()
    if "tensor_parallel" in names and device_mesh["tensor_parallel"].size() > 1:
        raise NotImplementedError(
            f"lit-ortho's models shard with FSDP2 only; set ModelParallelStrategy(tensor_parallel_size=1, "
            f"data_parallel_size=<number of GPUs>), got tensor_parallel_size={device_mesh['tensor_parallel'].size()}"
        )
    mesh = device_mesh["data_parallel"] if "data_parallel" in names else device_mesh
    if not isinstance(strategy, FSDP2Strategy):
        return FSDP2Options(mesh=mesh)
    offload = CPUOffloadPolicy(pin_memory=strategy.root_device.type == "cuda") if strategy.cpu_offload else None
    return FSDP2Options(
        mesh=strategy.shard_mesh if strategy.shard_mesh is not None else mesh,
        reshard_after_forward=strategy.reshard_after_forward,
        offload_policy=offload,
    )


def apply_fsdp2(model: nn.Module, units: Sequence[nn.Module], options: FSDP2Options, param_dtype: Optional[torch.dtype]) -> None:
    """``fully_shard`` each of ``units``, then ``model`` (the root: embeddings, final norm, head), with parameters
    gathered in ``param_dtype`` (``None``: fp32) and gradients reduced in fp32. Under a low-precision
    ``param_dtype`` each learnable activation first gets its own fp32 group."""
    extra = {} if options.offload_policy is None else {"offload_policy": options.offload_policy}
    mesh, reshard = options.mesh, options.reshard_after_forward
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    fp32_policy = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32, cast_forward_inputs=False)
    for i, unit in enumerate(units):
        if param_dtype is not None:
            for module in _learnable_activations(unit):
                fully_shard(module, mesh=mesh, mp_policy=fp32_policy, reshard_after_forward=reshard, **extra)
        # the last unit's parameters are needed again right away in backward: keep them gathered
        fully_shard(unit, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard and i < len(units) - 1, **extra)
    if param_dtype is not None:
        for module in _learnable_activations(model):
            if not is_sharded(module):
                fully_shard(module, mesh=mesh, mp_policy=fp32_policy, reshard_after_forward=reshard, **extra)
    # root: torch's default keeps it gathered from forward to backward
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=None if reshard else False, **extra)


# ---- FSDP1 --------------------------------------------------------------------------------------------
def set_fsdp1_wrap_policy(strategy: FSDPStrategy, units: Sequence[nn.Module], param_dtype: Optional[torch.dtype]) -> None:
    """Tell an FSDP1 strategy (``strategy: fsdp`` / ``fsdp1``), which wraps after ``configure_model``, to make one
    FSDP unit per shard unit, and (under a low-precision ``param_dtype``) one fp32 unit per learnable activation.
    An ``auto_wrap_policy`` of the user's is left alone."""
    if "auto_wrap_policy" in strategy.kwargs:
        return
    unit_ids = {id(unit) for unit in units}
    fp32_unit = {"mixed_precision": MixedPrecision(param_dtype=torch.float32, reduce_dtype=torch.float32, buffer_dtype=torch.float32)}
    keep_fp32 = param_dtype is not None

    def policy(module: nn.Module):
        if keep_fp32 and isinstance(module, LearnableActivation):
            return fp32_unit
        return id(module) in unit_ids

    strategy.kwargs["auto_wrap_policy"] = CustomPolicy(policy)


# ---- the entry points -----------------------------------------------------------------------------------
def shard_model(
    model: nn.Module,
    shard_units: Callable[[], Sequence[nn.Module]],
    strategy: Optional[Strategy],
    device_mesh=None,
    param_dtype: Optional[torch.dtype] = None,
) -> None:
    """Shard ``model`` for ``strategy``, block by block, from a LightningModule's ``configure_model``.

    ``shard_units`` returns the blocks to shard one by one (called only when there is something to shard, so a
    module used on one device need not define them); ``param_dtype`` is :func:`resolve_param_dtype`'s.

    With a ``device_mesh`` (``ModelParallelStrategy``, :class:`~lit_ortho.distributed.FSDP2Strategy`): FSDP2, see
    :func:`apply_fsdp2` and :func:`fsdp2_options`. Under an FSDP1 strategy: :func:`set_fsdp1_wrap_policy`.
    Otherwise (one device, DDP) nothing: the same module runs unchanged. Idempotent.
    """
    if device_mesh is not None:
        if not is_sharded(model):
            apply_fsdp2(model, shard_units(), fsdp2_options(strategy, device_mesh), param_dtype)
    elif isinstance(strategy, FSDPStrategy) and "auto_wrap_policy" not in strategy.kwargs:
        set_fsdp1_wrap_policy(strategy, shard_units(), param_dtype)


def clip_gradients(strategy: Optional[Strategy], gradient_clip_val: Optional[float], gradient_clip_algorithm: Optional[str]) -> bool:
    """Clip gradients by norm under FSDP1, where Lightning refuses to: the norm is computed over all shards by
    ``FullyShardedDataParallel.clip_grad_norm_``. Returns whether it clipped; ``False`` leaves clipping to
    Lightning (FSDP2, DDP, one device, or clipping by value)."""
    model = getattr(strategy, "model", None)
    if gradient_clip_val and gradient_clip_algorithm in (None, "norm") and is_fsdp1(model):
        model.clip_grad_norm_(float(gradient_clip_val))
        return True
    return False
