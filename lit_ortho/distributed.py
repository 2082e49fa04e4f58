"""Multi-GPU / multi-node training: FSDP strategies set from YAML, pre-flight checks, sharded checkpoints.

Two strategies, both registered by name for ``trainer.strategy`` in a LightningCLI YAML:

* :class:`FSDP2Strategy` (``strategy: fsdp2``; ``fsdp2_cpu_offload``): the primary path. Lightning's
  ``ModelParallelStrategy`` with FSDP2 ``fully_shard`` applied per block by
  :meth:`lit_ortho.modules.OrthoModule.configure_model` (bf16 parameters/compute, fp32 gradient reduction,
  learnable-activation coefficients always fp32). Adds: ``data_parallel_size: auto`` meaning *every* process
  (Lightning's "auto" is the number of nodes), hybrid sharding (``shard_size``), CPU offload, a collective
  timeout in seconds, atomic sharded checkpoints, and clear errors for impossible sizes / precisions before
  any process group is created. Runs on GPUs and, with gloo, on CPUs.
* :class:`FSDP1Strategy` (``strategy: fsdp1``): Lightning's ``FSDPStrategy`` (FSDP1), one FSDP unit per
  block, the same precision rules, sharded checkpoints by default, and a CPU path (for tests).

``strategy: fsdp`` (Lightning's own FSDP1) also works on GPUs: ``OrthoModule.configure_model`` wraps each block
itself. :func:`check_trainer_config` is the pre-flight check ``lit-ortho fit`` runs before building the Trainer;
:func:`consolidate_checkpoint` turns a sharded checkpoint directory into one ``.ckpt`` file.
"""

from __future__ import annotations

import os
import re
import shutil
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, Generator, Literal, Mapping, Optional, Union

import torch
from lightning.fabric.utilities.load import _METADATA_FILENAME
from lightning.pytorch.plugins.precision import FSDPPrecision
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy, Strategy, StrategyRegistry

__all__ = [
    "ConfigurationError",
    "FSDP2Strategy",
    "FSDP1Strategy",
    "check_trainer_config",
    "check_precision",
    "resolve_parallel_sizes",
    "normalize_precision",
    "is_sharded_checkpoint",
    "is_collective_failure",
    "consolidate_checkpoint",
    "DEFAULT_TIMEOUT_S",
]

DEFAULT_TIMEOUT_S = 1800.0  # torch's and Lightning's default process-group timeout (30 min)

# precisions each sharding strategy can run (normalised names)
FSDP2_PRECISIONS = ("32-true", "bf16-mixed", "bf16-true", "16-true")
FSDP1_PRECISIONS = ("32-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true")
CPU_PRECISIONS = ("32-true", "bf16-mixed", "bf16-true")


class ConfigurationError(ValueError):
    """A training configuration that cannot run (raised before training starts)."""


# ---- small helpers ------------------------------------------------------------------------------------
def normalize_precision(precision: Any) -> str:
    """``bf16`` -> ``bf16-mixed``, ``16`` -> ``16-mixed``, ``32`` -> ``32-true`` (Lightning's own mapping)."""
    if precision is None:
        return "32-true"
    value = str(precision)
    aliases = {"16": "16-mixed", "bf16": "bf16-mixed", "32": "32-true", "64": "64-true", "half": "16-true", "double": "64-true"}
    return aliases.get(value, value)


def _timeout(timeout_s: Optional[float]) -> Optional[timedelta]:
    if timeout_s is None:
        return None
    if isinstance(timeout_s, timedelta):
        return timeout_s
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or timeout_s <= 0:
        raise ConfigurationError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    return timedelta(seconds=float(timeout_s))


def resolve_parallel_sizes(
    data_parallel_size: Union[int, str],
    tensor_parallel_size: Union[int, str],
    world_size: int,
    shard_size: Optional[int] = None,
    strategy_name: str = "FSDP2Strategy",
    auto_means_all: bool = True,
) -> tuple[int, int]:
    """``(data_parallel_size, tensor_parallel_size)`` with ``"auto"`` resolved against ``world_size``.

    ``"auto"`` for the data-parallel size means every process not used for tensor parallelism. Raises
    :class:`ConfigurationError` when the sizes do not multiply to the world size, when ``shard_size`` does not
    divide the data-parallel size, or when tensor parallelism is asked of lit-ortho's models (FSDP only).
    """

    def as_size(name: str, value: Union[int, str]) -> Optional[int]:
        if value == "auto":
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigurationError(f"{strategy_name}: {name} must be a positive integer or 'auto', got {value!r}")
        return value

    or_auto = " (or 'auto')" if auto_means_all else ""
    dp, tp = as_size("data_parallel_size", data_parallel_size), as_size("tensor_parallel_size", tensor_parallel_size)
    tp = 1 if tp is None else tp
    if tp != 1:
        raise ConfigurationError(
            f"{strategy_name}: tensor_parallel_size={tp}, but lit-ortho's models shard with FSDP only: set "
            f"tensor_parallel_size: 1 and data_parallel_size: {world_size}{or_auto}"
        )
    if dp is None:
        dp = world_size // tp
    if dp * tp != world_size:
        raise ConfigurationError(
            f"{strategy_name}: data_parallel_size ({dp}) x tensor_parallel_size ({tp}) = {dp * tp} must equal the "
            f"number of processes, devices x num_nodes = {world_size}; set data_parallel_size: {world_size // tp}{or_auto}"
        )
    if shard_size is not None:
        if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
            raise ConfigurationError(f"{strategy_name}: shard_size must be a positive integer or null, got {shard_size!r}")
        if dp % shard_size:
            raise ConfigurationError(
                f"{strategy_name}: shard_size ({shard_size}) must divide data_parallel_size ({dp}): each group of "
                f"shard_size processes holds one full copy of the model (typically shard_size = devices per node)"
            )
    return dp, tp


def check_precision(precision: Any, strategy: str, accelerator: str) -> str:
    """The normalised precision, or :class:`ConfigurationError` if ``strategy`` (``fsdp2`` / ``fsdp1``) cannot
    run it on ``accelerator`` (``cpu`` / ``gpu``)."""
    precision = normalize_precision(precision)
    supported = FSDP2_PRECISIONS if strategy == "fsdp2" else FSDP1_PRECISIONS
    label = "FSDP2 (ModelParallelStrategy)" if strategy == "fsdp2" else "FSDP1 (FSDPStrategy)"
    if accelerator == "cpu":
        supported = tuple(p for p in supported if p in CPU_PRECISIONS)
    if precision not in supported:
        hint = ""
        if precision == "16-mixed" and strategy == "fsdp2":
            hint = " (fp16 AMP needs a gradient scaler, which Lightning's FSDP2 path does not provide)"
        elif precision.startswith("16") and accelerator == "cpu":
            hint = " (no fp16 on CPUs)"
        raise ConfigurationError(
            f"precision {precision!r} cannot run with {label} on {accelerator}{hint}; choose one of: "
            f"{', '.join(supported)} (bf16-mixed is the paper's setting)"
        )
    return precision


def _check_gpu_bf16(precision: str, device: torch.device) -> None:
    if device.type == "cuda" and precision.startswith("bf16") and not torch.cuda.is_bf16_supported(including_emulation=False):
        name = torch.cuda.get_device_name(device)
        raise ConfigurationError(
            f"precision {precision!r} needs bf16 support, which {name} lacks (NVIDIA Ampere or newer); use "
            f"precision: 32-true, or 16-mixed with strategy: fsdp1"
        )


# ---- atomic sharded checkpoints -----------------------------------------------------------------------
def is_sharded_checkpoint(path: Union[str, Path]) -> bool:
    """A complete Lightning sharded checkpoint: a directory with the DCP index and Lightning's ``meta.pt``."""
    path = Path(path)
    return path.is_dir() and (path / _METADATA_FILENAME).is_file() and (path / ".metadata").is_file()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


COLLECTIVE_FAILURE_MARKERS = ("gloo", "nccl", "connection closed", "connection reset", "timed out", "timeout", "broken pipe")


def is_collective_failure(exception: BaseException) -> bool:
    """Whether an exception looks like a failed collective: a peer process died, hung, or the network broke."""
    if isinstance(exception, getattr(torch.distributed, "DistError", ())):
        return True
    text = str(exception).lower()
    return isinstance(exception, RuntimeError) and any(marker in text for marker in COLLECTIVE_FAILURE_MARKERS)


class _FaultHandling:
    """Shared by the FSDP strategies.

    * Atomic sharded checkpoints: written to ``<name>.partial`` and renamed into place once every rank is
      done, so a crash mid-save (a killed rank, a node failure) never leaves a half-written ``last.ckpt``:
      ``--ckpt_path last`` then resumes from the previous complete checkpoint.
    * A failed collective (a rank died, or did not answer within ``timeout_s``) ends this process with the
      original error plus a note saying what happened and how to resume.
    """

    _atomic_checkpoints: bool = True
    timeout_s: Optional[float] = DEFAULT_TIMEOUT_S

    def on_exception(self, exception: BaseException) -> None:
        super().on_exception(exception)  # type: ignore[misc]
        if not is_collective_failure(exception):
            return
        note = (
            f"lit-ortho: rank {self.global_rank} stops: a collective failed, so another process crashed, was killed, "  # type: ignore[attr-defined]
            f"lost its network, or did not answer within timeout_s={self.timeout_s} s (see the first error in the "
            f"other ranks' logs). Rerun the same command with --ckpt_path last to resume from the last complete "
            f"checkpoint."
        )
        if hasattr(exception, "add_note"):
            exception.add_note(note)
        else:  # pragma: no cover - Python < 3.11
            import sys

            print(note, file=sys.stderr, flush=True)

    def _saves_sharded(self) -> bool:
        raise NotImplementedError

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options: Optional[Any] = None) -> None:
        if not (self._atomic_checkpoints and self._saves_sharded()) or storage_options is not None:
            return super().save_checkpoint(checkpoint, filepath, storage_options)  # type: ignore[misc]
        path = Path(self.broadcast(filepath))  # type: ignore[attr-defined]
        partial = path.with_name(path.name + ".partial")
        if self.is_global_zero:  # type: ignore[attr-defined]
            _remove(partial)
        self.barrier("lit_ortho_ckpt_start")  # type: ignore[attr-defined]
        super().save_checkpoint(checkpoint, partial)  # type: ignore[misc]
        self.barrier("lit_ortho_ckpt_written")  # type: ignore[attr-defined]
        if self.is_global_zero:  # type: ignore[attr-defined]
            if path.exists() or path.is_symlink():
                old = path.with_name(path.name + ".old")
                _remove(old)
                os.replace(path, old)
                os.replace(partial, path)
                _remove(old)
            else:
                os.replace(partial, path)
        self.barrier("lit_ortho_ckpt_done")  # type: ignore[attr-defined]


# ---- FSDP2 --------------------------------------------------------------------------------------------
class FSDP2Strategy(_FaultHandling, ModelParallelStrategy):
    """FSDP2 data parallelism for lit-ortho modules, configured from YAML.

    ``OrthoModule.configure_model`` applies ``fully_shard`` to each block (transformer block / ConvNeXt stage)
    and then to the whole network, with ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`` under
    ``precision: bf16-mixed``; learnable activations get their own fp32 group.

    Args:
        data_parallel_size: processes the model is sharded over; ``"auto"`` (default): all of them
            (devices x num_nodes). Must equal devices x num_nodes.
        tensor_parallel_size: must be 1 (lit-ortho's models are not tensor-parallel).
        shard_size: hybrid sharding (HSDP): shard within groups of this many processes (e.g. the GPUs of one
            node) and replicate across groups, so only gradient all-reduces cross nodes. ``None``: shard over
            all processes. Must divide data_parallel_size.
        cpu_offload: keep sharded parameters, gradients and optimizer state in CPU memory (FSDP2
            ``CPUOffloadPolicy``): larger models, slower steps.
        reshard_after_forward: free gathered parameters after each block's forward (ZeRO-3, default) or keep
            them until backward (ZeRO-2: more memory, fewer all-gathers).
        timeout_s: seconds a collective may wait for the other processes before the job fails (default 1800).
            A crashed or hung rank then ends the whole job instead of leaving it waiting forever.
        save_distributed_checkpoint: save a directory with one shard per process (default) instead of gathering
            a single file on rank 0.
        atomic_checkpoints: write each checkpoint to ``<name>.partial`` and rename it when complete.
        process_group_backend: ``nccl`` on GPUs, ``gloo`` on CPUs by default.
    """

    strategy_name = "fsdp2"

    def __init__(
        self,
        data_parallel_size: Union[Literal["auto"], int] = "auto",
        tensor_parallel_size: Union[Literal["auto"], int] = 1,
        shard_size: Optional[int] = None,
        cpu_offload: bool = False,
        reshard_after_forward: bool = True,
        timeout_s: Optional[float] = DEFAULT_TIMEOUT_S,
        save_distributed_checkpoint: bool = True,
        atomic_checkpoints: bool = True,
        process_group_backend: Optional[str] = None,
    ) -> None:
        super().__init__(
            data_parallel_size=data_parallel_size,
            tensor_parallel_size=tensor_parallel_size,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            timeout=_timeout(timeout_s),
        )
        if shard_size is not None and (isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1):
            raise ConfigurationError(f"FSDP2Strategy: shard_size must be a positive integer or null, got {shard_size!r}")
        self.shard_size = shard_size
        self.cpu_offload = bool(cpu_offload)
        self.reshard_after_forward = bool(reshard_after_forward)
        self.timeout_s = timeout_s
        self._atomic_checkpoints = bool(atomic_checkpoints)
        self._fsdp_mesh = None

    def _saves_sharded(self) -> bool:
        return self._save_distributed_checkpoint

    def setup_environment(self) -> None:
        # Checked on every rank before the process group exists: a bad size fails fast everywhere, no hang.
        world_size = self.num_nodes * self.num_processes
        self._data_parallel_size, self._tensor_parallel_size = resolve_parallel_sizes(
            self._data_parallel_size, self._tensor_parallel_size, world_size, self.shard_size, type(self).__name__
        )
        accelerator = "cpu" if self.root_device.type == "cpu" else "gpu"
        precision = check_precision(getattr(self.precision_plugin, "precision", "32-true"), "fsdp2", accelerator)
        _check_gpu_bf16(precision, self.root_device)
        super().setup_environment()
        dp = self._data_parallel_size
        if self.shard_size is not None and self.shard_size < dp:
            from torch.distributed.device_mesh import init_device_mesh

            self._fsdp_mesh = init_device_mesh(
                self.root_device.type, (dp // self.shard_size, self.shard_size), mesh_dim_names=("replicate", "shard")
            )

    @property
    def fsdp2_options(self) -> dict[str, Any]:
        """What ``OrthoModule.configure_model`` passes to ``fully_shard`` besides the mixed-precision policy."""
        options: dict[str, Any] = {"reshard_after_forward": self.reshard_after_forward}
        if self._fsdp_mesh is not None:
            options["mesh"] = self._fsdp_mesh
        if self.cpu_offload:
            from torch.distributed.fsdp import CPUOffloadPolicy

            options["offload_policy"] = CPUOffloadPolicy(pin_memory=self.root_device.type == "cuda")
        return options

    def model_to_device(self) -> None:
        if not self.cpu_offload:
            return super().model_to_device()
        # offloaded FSDP2 parameters stay in CPU memory; move only what FSDP does not manage (metrics)
        from torch.distributed.fsdp import FSDPModule

        assert self.model is not None

        def move(module: torch.nn.Module) -> None:
            for child in module.children():
                if isinstance(child, FSDPModule):
                    continue
                if any(isinstance(m, FSDPModule) for m in child.modules()):
                    move(child)
                else:
                    child.to(self.root_device)

        move(self.model)


# ---- FSDP1 --------------------------------------------------------------------------------------------
class _CPUFSDPPrecision(FSDPPrecision):
    """Lightning's FSDP precision with ``bf16-mixed`` autocast on the CPU (it autocasts "cuda" only), so the
    loss and the other fp32-listed ops run in fp32 as they do on GPUs."""

    def forward_context(self):
        return torch.autocast("cpu", dtype=torch.bfloat16)


class FSDP1Strategy(_FaultHandling, FSDPStrategy):
    """Lightning's FSDP1 (``FullyShardedDataParallel``) for lit-ortho modules, configured from YAML.

    ``OrthoModule.configure_model`` wraps each block in its own FSDP unit and each learnable activation in an
    fp32 unit; this strategy then wraps the root. Parameters are bf16 in compute under ``bf16-mixed``, gradients
    are reduced in fp32. Unlike ``strategy: fsdp``, it also runs on CPUs (gloo), for tests.

    Args:
        sharding_strategy: ``FULL_SHARD`` (default), ``SHARD_GRAD_OP``, ``HYBRID_SHARD`` (shard within a node,
            replicate across nodes), ``NO_SHARD``.
        cpu_offload: offload parameters and gradients to CPU memory.
        state_dict_type: ``sharded`` (default: one shard per process in a directory) or ``full``.
        timeout_s: collective timeout in seconds (see :class:`FSDP2Strategy`).
        atomic_checkpoints: write sharded checkpoints to ``<name>.partial`` and rename when complete.
        limit_all_gathers, use_orig_params: passed to ``FullyShardedDataParallel``.
    """

    strategy_name = "fsdp1"

    def __init__(
        self,
        sharding_strategy: str = "FULL_SHARD",
        cpu_offload: bool = False,
        state_dict_type: Literal["full", "sharded"] = "sharded",
        timeout_s: Optional[float] = DEFAULT_TIMEOUT_S,
        atomic_checkpoints: bool = True,
        limit_all_gathers: bool = True,
        use_orig_params: bool = True,
        process_group_backend: Optional[str] = None,
    ) -> None:
        super().__init__(
            process_group_backend=process_group_backend,
            timeout=_timeout(timeout_s),
            cpu_offload=cpu_offload,
            sharding_strategy=sharding_strategy,
            state_dict_type=state_dict_type,
            limit_all_gathers=limit_all_gathers,
            use_orig_params=use_orig_params,
        )
        self.timeout_s = timeout_s
        self._atomic_checkpoints = bool(atomic_checkpoints)

    def _saves_sharded(self) -> bool:
        return self._state_dict_type == "sharded"

    def setup_environment(self) -> None:
        accelerator = "cpu" if self.root_device.type == "cpu" else "gpu"
        precision = check_precision(getattr(self.precision_plugin, "precision", "32-true"), "fsdp1", accelerator)
        _check_gpu_bf16(precision, self.root_device)
        if accelerator == "cpu" and precision == "bf16-mixed" and not isinstance(self.precision_plugin, _CPUFSDPPrecision):
            self.precision_plugin = _CPUFSDPPrecision(precision)  # Lightning's autocasts "cuda" only
        super().setup_environment()

    @property
    def mixed_precision_config(self):
        """bf16 / fp16 parameters and buffers in compute, gradients reduced in fp32 (Lightning's default would
        reduce in bf16 / fp16)."""
        if self.mixed_precision:
            return self.mixed_precision
        from torch.distributed.fsdp import MixedPrecision

        precision = normalize_precision(getattr(self.precision_plugin, "precision", "32-true"))
        dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16 if precision.startswith("16") else None
        if dtype is None:
            return None
        return MixedPrecision(param_dtype=dtype, reduce_dtype=torch.float32, buffer_dtype=dtype)

    @property
    def _device_id(self):
        # Lightning 2.6 passes device_id=None on CPU, which torch >= 2.5 refuses (pytorch-lightning #21778)
        return torch.device("cpu") if self.root_device.type == "cpu" else self.root_device.index

    @contextmanager
    def model_sharded_context(self) -> Generator[None, None, None]:
        from torch.distributed.fsdp.fully_sharded_data_parallel import FullyShardedDataParallel
        from torch.distributed.fsdp.wrap import enable_wrap

        with enable_wrap(
            wrapper_cls=FullyShardedDataParallel,
            cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy,
            device_id=self._device_id,
            **self.kwargs,
        ):
            yield

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.root_device.type != "cpu":
            return super()._setup_model(model)
        from lightning.fabric.strategies.fsdp import _move_torchmetrics_to_device, _setup_activation_checkpointing
        from torch.distributed.fsdp import FullyShardedDataParallel

        if any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
            self.kwargs.pop("auto_wrap_policy", None)  # wrapped by hand: as Lightning, leave it as it is
        else:
            model = FullyShardedDataParallel(
                module=model,
                cpu_offload=self.cpu_offload,
                mixed_precision=self.mixed_precision_config,
                sharding_strategy=self.sharding_strategy,
                device_id=self._device_id,
                **self.kwargs,
            )
        _move_torchmetrics_to_device(model, self.root_device)
        _setup_activation_checkpointing(model, self._activation_checkpointing_kwargs)
        return model


StrategyRegistry.register("fsdp2", FSDP2Strategy, description="FSDP2 (per-block fully_shard) for lit-ortho modules", override=True)
StrategyRegistry.register(
    "fsdp2_cpu_offload", FSDP2Strategy, description="FSDP2 with parameters and optimizer state in CPU memory", cpu_offload=True, override=True
)
StrategyRegistry.register("fsdp1", FSDP1Strategy, description="FSDP1 (per-block units) for lit-ortho modules, GPU or CPU", override=True)


# ---- pre-flight check ---------------------------------------------------------------------------------
def _get(obj: Any, key: str, default: Any = None) -> Any:
    if obj is None:
        return default
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _import(class_path: str) -> Optional[type]:
    import importlib

    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def _strategy_spec(strategy: Any) -> tuple[Optional[type], dict[str, Any], str]:
    """(class, init arguments, how the user wrote it) from a string, a class_path namespace or an instance."""
    if strategy is None:
        return None, {}, "auto"
    if isinstance(strategy, str):
        if strategy in StrategyRegistry:
            entry = StrategyRegistry[strategy]
            return entry["strategy"], dict(entry.get("init_params", {})), repr(strategy)
        cls = _import(strategy) if "." in strategy else None
        if isinstance(cls, type) and issubclass(cls, Strategy):
            # LightningCLI passes a bare class path on as a string, which the Trainer then rejects (#19682)
            raise ConfigurationError(
                f"strategy {strategy!r} is a class path without arguments, which LightningCLI passes on as a plain "
                f"string; write it as a mapping in the YAML (strategy: {{class_path: {strategy}, init_args: {{...}}}}), "
                f"or add one of its arguments on the command line (--trainer.strategy.init_args.NAME=VALUE)"
            )
        return None, {}, repr(strategy)
    if isinstance(strategy, Strategy):
        return type(strategy), {}, type(strategy).__name__
    class_path = _get(strategy, "class_path")
    if class_path:
        init_args = _get(strategy, "init_args") or {}
        if not isinstance(init_args, Mapping):
            init_args = dict(vars(init_args)) if hasattr(init_args, "__dict__") else {}
        return _import(class_path), dict(init_args), class_path.rsplit(".", 1)[-1]
    return None, {}, repr(strategy)


def _accelerator_name(accelerator: Any) -> str:
    if accelerator is None or accelerator == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    if isinstance(accelerator, str):
        return "gpu" if accelerator in ("gpu", "cuda") else accelerator
    name = _get(accelerator, "class_path") or type(accelerator).__name__
    return "gpu" if "CUDA" in str(name) else "cpu" if "CPU" in str(name) else str(name)


def _num_devices(devices: Any, accelerator: str) -> Optional[int]:
    if isinstance(devices, (list, tuple)):
        return len(devices)
    if isinstance(devices, str):
        devices = devices.strip()
        if "," in devices:
            return len([d for d in devices.split(",") if d.strip()])
        if re.fullmatch(r"-?\d+", devices):
            devices = int(devices)
    if isinstance(devices, int) and not isinstance(devices, bool):
        if devices > 0:
            return devices
        if devices == -1 and accelerator == "gpu":
            return torch.cuda.device_count() or None
        return None
    if devices in (None, "auto"):
        if accelerator == "cpu":
            return 1
        if accelerator == "gpu":
            return torch.cuda.device_count() or None
    return None


def check_trainer_config(trainer: Any) -> list[str]:
    """Pre-flight check of a Trainer configuration (a LightningCLI namespace or a dict): refuse what cannot run,
    with a message that says what to write instead. Returns warnings for what runs but is probably unintended.

    Refused: FSDP1 (``strategy: fsdp`` / ``FSDPStrategy``) on CPUs; a precision the chosen FSDP flavour cannot
    run; ModelParallelStrategy / FSDP2 sizes that do not multiply to devices x num_nodes, or tensor
    parallelism (lit-ortho's models are FSDP-only); a ``shard_size`` that does not divide the world size.
    """
    warnings: list[str] = []
    accelerator = _accelerator_name(_get(trainer, "accelerator", "auto"))
    cls, init_args, written = _strategy_spec(_get(trainer, "strategy", "auto"))
    precision = normalize_precision(_get(trainer, "precision", "32-true"))
    num_nodes = _get(trainer, "num_nodes", 1) or 1
    devices = _num_devices(_get(trainer, "devices", "auto"), accelerator)
    world_size = devices * int(num_nodes) if devices is not None else None
    if cls is None:
        return warnings

    if issubclass(cls, FSDPStrategy):
        if accelerator == "cpu" and not issubclass(cls, FSDP1Strategy):
            raise ConfigurationError(
                f"strategy {written} (FSDP1) needs GPUs, but accelerator is cpu. On CPUs use FSDP2: "
                f"strategy: fsdp2 (lit_ortho.distributed.FSDP2Strategy, Lightning's ModelParallelStrategy with "
                f"per-block fully_shard), or strategy: fsdp1 (lit_ortho.distributed.FSDP1Strategy) for FSDP1"
            )
        check_precision(precision, "fsdp1", accelerator)
        if issubclass(cls, FSDP1Strategy):
            timeout = init_args.get("timeout_s", DEFAULT_TIMEOUT_S)
            _timeout(timeout)
        if accelerator == "gpu" and not issubclass(cls, FSDP1Strategy) and precision in ("bf16-mixed", "16-mixed"):
            warnings.append(
                f"strategy {written}: Lightning's FSDPStrategy reduces gradients in {precision.split('-')[0]}; "
                "strategy: fsdp1 (or fsdp2) reduces them in fp32"
            )
    elif issubclass(cls, ModelParallelStrategy):
        check_precision(precision, "fsdp2", accelerator)
        dp = init_args.get("data_parallel_size", "auto")
        is_ours = issubclass(cls, FSDP2Strategy)
        tp = init_args.get("tensor_parallel_size", 1 if is_ours else "auto")
        if not is_ours and world_size is not None:
            # Lightning's "auto": data_parallel_size = num_nodes, tensor_parallel_size = devices per node
            if tp == "auto":
                tp = devices
            if dp == "auto":
                dp = int(num_nodes)
        if is_ours:
            _timeout(init_args.get("timeout_s", DEFAULT_TIMEOUT_S))
        if world_size is not None:
            try:
                resolve_parallel_sizes(dp, tp, world_size, init_args.get("shard_size"), cls.__name__, auto_means_all=is_ours)
            except ConfigurationError as err:
                if not is_ours and "auto" in (init_args.get("data_parallel_size", "auto"), init_args.get("tensor_parallel_size", "auto")):
                    raise ConfigurationError(
                        f"{err}. Note: ModelParallelStrategy's 'auto' sizes mean data_parallel_size = num_nodes and "
                        f"tensor_parallel_size = devices; use strategy: fsdp2, whose 'auto' shards over every process"
                    ) from None
                raise
    return warnings


# ---- consolidation ------------------------------------------------------------------------------------
def _load_sharded(path: Path) -> dict[str, Any]:
    try:
        from lightning.fabric.utilities.load import _load_distributed_checkpoint

        return _load_distributed_checkpoint(path)
    except ImportError:  # pragma: no cover - older Lightning
        from torch.distributed.checkpoint import FileSystemReader
        from torch.distributed.checkpoint.format_utils import _EmptyStateDictLoadPlanner
        from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

        state: dict[str, Any] = {}
        _load_state_dict(state, storage_reader=FileSystemReader(path), planner=_EmptyStateDictLoadPlanner(), no_dist=True)
        state.update(torch.load(path / _METADATA_FILENAME, map_location="cpu", weights_only=False))
        return state


TRAINING_STATE_KEYS = ("optimizer_states", "lr_schedulers", "loops", "callbacks", "MixedPrecision", "native_amp_scaling_state")


def consolidate_checkpoint(
    checkpoint_dir: Union[str, Path],
    output_file: Optional[Union[str, Path]] = None,
    weights_only: bool = False,
    overwrite: bool = False,
) -> Path:
    """Turn a sharded checkpoint directory (FSDP2 or FSDP1, any number of ranks) into one ``.ckpt`` file.

    The result is an ordinary Lightning checkpoint: ``GPT2Module.load_from_checkpoint(file)`` reads it, a
    single-device or DDP ``Trainer.fit(ckpt_path=file)`` resumes from it (optimizer moments, LR schedule and
    loop counters included), and FSDP strategies accept it too. ``weights_only`` keeps the weights,
    hyperparameters and module extras and drops the training state (optimizer, schedulers, loops, callbacks):
    a smaller file for inference or fine-tuning. Runs on one CPU process; needs the full model in memory.
    """
    src = Path(checkpoint_dir).expanduser()
    if not src.exists():
        raise FileNotFoundError(f"checkpoint not found: {str(src)!r}")
    if not src.is_dir():
        raise ValueError(f"{str(src)!r} is a file: already a consolidated (single-file) checkpoint")
    if not is_sharded_checkpoint(src):
        missing = [n for n in (".metadata", _METADATA_FILENAME) if not (src / n).is_file()]
        raise ValueError(
            f"{str(src)!r} is not a complete sharded Lightning checkpoint (missing {', '.join(missing)}); "
            "an interrupted save leaves '<name>.partial': use an earlier checkpoint"
        )
    out = Path(output_file).expanduser() if output_file is not None else src.with_name(src.name.removesuffix(".ckpt") + ".consolidated.ckpt")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{str(out)!r} already exists: choose another output path or pass overwrite")
    checkpoint = _load_sharded(src)
    if "model" in checkpoint and "state_dict" not in checkpoint:  # FSDP1 layout
        checkpoint["state_dict"] = checkpoint.pop("model")
    optimizer_keys = sorted((k for k in checkpoint if re.fullmatch(r"optimizer_\d+", k)), key=lambda k: int(k.split("_")[1]))
    if optimizer_keys:
        checkpoint["optimizer_states"] = [checkpoint.pop(k) for k in optimizer_keys]
    if weights_only:
        for key in TRAINING_STATE_KEYS:
            checkpoint.pop(key, None)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    torch.save(checkpoint, partial)
    os.replace(partial, out)
    return out
