"""lit-ortho's FSDP strategies, registered by name for ``trainer.strategy``: ``fsdp2``, ``fsdp2_cpu_offload``, ``fsdp1``.

Both check their configuration before any process group exists (on every rank, and in ``lit-ortho fit``'s
pre-flight check through :meth:`check_config`), write sharded checkpoints atomically
(:class:`~lit_ortho.distributed.checkpoints.AtomicCheckpointsMixin`), and end a job whose collective failed
with a note saying what happened and how to resume. How a model is sharded under them is
:mod:`lit_ortho.distributed.sharding`'s business.

Process groups end before the interpreter does: :func:`end_process_groups` (``lit-ortho`` calls it after each
subcommand, after a barrier) and an exit handler (registered by it, and by these strategies when they create the
process group, for scripts that train through the Python API) that frees the groups' last holders. Left alive
into interpreter finalization, gloo's worker threads can drop the last reference to a finished collective's
tensors after the interpreter stopped handing out the GIL; the thread is then killed mid-C++ and the rank
aborts (``terminate called without an active exception``, exit status -6) after finishing its work.
"""

from __future__ import annotations

import atexit
import gc
import sys
from contextlib import contextmanager
from typing import Any, Generator, Literal, Mapping, Optional, Union

import torch
from lightning.pytorch.plugins.precision import FSDPPrecision
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy, StrategyRegistry

from lit_ortho.distributed.checkpoints import AtomicCheckpointsMixin
from lit_ortho.distributed.preflight import (
    DEFAULT_TIMEOUT_S,
    TrainerSettings,
    check_gpu_bf16,
    check_precision,
    check_shard_size,
    normalize_precision,
    parse_timeout,
    resolve_parallel_sizes,
)

__all__ = ["FSDP2Strategy", "FSDP1Strategy", "is_collective_failure", "end_process_groups", "COLLECTIVE_FAILURE_MARKERS"]

COLLECTIVE_FAILURE_MARKERS = ("gloo", "nccl", "connection closed", "connection reset", "timed out", "timeout", "broken pipe")


def is_collective_failure(exception: BaseException) -> bool:
    """Whether an exception looks like a failed collective: a peer process died, hung, or the network broke."""
    if isinstance(exception, torch.distributed.DistError):
        return True
    text = str(exception).lower()
    return isinstance(exception, RuntimeError) and any(marker in text for marker in COLLECTIVE_FAILURE_MARKERS)


# ---- the end of a process's part in the job ---------------------------------------------------------------
# "failed": an exception reached a strategy in its last run, or the final barrier failed: collectives may still be
# pending, so the exit handler leaves the groups alone (a failing rank exits at once instead of waiting for them).
_PROCESS = {"failed": False, "exit_handler": False}


def end_process_groups(barrier: bool = True) -> bool:
    """End this process's part in the distributed job: with ``barrier``, wait until every rank has got here (so
    none closes its connections while another still needs them; a rank that crashed or hangs makes the barrier
    fail, after at most the collective timeout), then destroy the default process group and every subgroup (the
    device meshes'). Call it on every rank once the job's last collective is done; ``lit-ortho`` does, after each
    subcommand. Returns whether there was a group to end.

    gloo joins its worker threads only when the last reference to a group goes, and a sharded model or a device
    mesh still holds one; so this also registers an exit handler that collects those objects (unreachable by
    then) before the interpreter finalizes."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return False
    if barrier and dist.get_world_size() > 1:
        try:
            dist.barrier()
        except BaseException:
            _PROCESS["failed"] = True
            raise
    dist.destroy_process_group()
    _register_exit_handler()
    return True


def _register_exit_handler() -> None:
    if not _PROCESS["exit_handler"]:
        atexit.register(_end_process_groups_at_exit)
        _PROCESS["exit_handler"] = True


def _end_process_groups_at_exit() -> None:
    """At interpreter exit (before finalization): destroy what is left (no barrier: a rank may end its script
    early and another wait for it) and collect the groups' last holders, so their worker threads are joined
    while the interpreter is alive. Not after a failure: a group with a pending collective would wait for it."""
    if _PROCESS["failed"]:
        return
    try:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        gc.collect()
    except Exception as err:  # pragma: no cover - the process is ending anyway
        print(f"lit-ortho: could not end the process groups at exit: {err}", file=sys.stderr, flush=True)


class _FaultHandling(AtomicCheckpointsMixin):
    """Shared by the FSDP strategies: atomic sharded checkpoints, and a failed collective (a rank died, or did
    not answer within ``timeout_s``) ends this process with the original error plus a note saying what happened
    and how to resume."""

    timeout_s: Optional[float] = DEFAULT_TIMEOUT_S

    def setup_environment(self) -> None:
        dist = torch.distributed
        created = dist.is_available() and not dist.is_initialized()
        _PROCESS["failed"] = False  # a new run: what the last one left pending is done or was given up
        super().setup_environment()  # type: ignore[misc]
        if created and dist.is_initialized():
            # Not in teardown: trainer.save_checkpoint / trainer.test after fit still need the sharded model's groups.
            _register_exit_handler()

    def on_exception(self, exception: BaseException) -> None:
        _PROCESS["failed"] = True
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
        else:  # pragma: no cover - Python 3.10
            print(note, file=sys.stderr, flush=True)


def _accelerator(device: torch.device) -> str:
    return "cpu" if device.type == "cpu" else "gpu"


# ---- FSDP2 --------------------------------------------------------------------------------------------
class FSDP2Strategy(_FaultHandling, ModelParallelStrategy):
    """FSDP2 data parallelism for lit-ortho modules, configured from YAML.

    ``OrthoModule.configure_model`` (through :func:`lit_ortho.distributed.sharding.shard_model`) applies
    ``fully_shard`` to each block (transformer block / ConvNeXt stage) and then to the whole network, with
    ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`` under ``precision: bf16-mixed``; learnable
    activations get their own fp32 group. It reads :attr:`shard_mesh`, :attr:`cpu_offload` and
    :attr:`reshard_after_forward` from this strategy.

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
            timeout=parse_timeout(timeout_s),
        )
        self.shard_size = check_shard_size(shard_size, "FSDP2Strategy")
        self.cpu_offload = bool(cpu_offload)
        self.reshard_after_forward = bool(reshard_after_forward)
        self.timeout_s = timeout_s
        self._atomic_checkpoints = bool(atomic_checkpoints)
        self._shard_mesh = None

    @classmethod
    def check_config(cls, init_args: Mapping[str, Any], settings: TrainerSettings) -> list[str]:
        """The pre-flight check (:class:`~lit_ortho.distributed.preflight.CheckedStrategy`): precision, timeout,
        and sizes, with ``"auto"`` meaning every process."""
        check_precision(settings.precision, "fsdp2", settings.accelerator)
        parse_timeout(init_args.get("timeout_s", DEFAULT_TIMEOUT_S))
        if settings.world_size is not None:
            resolve_parallel_sizes(
                init_args.get("data_parallel_size", "auto"), init_args.get("tensor_parallel_size", 1), settings.world_size,
                init_args.get("shard_size"), cls.__name__, auto_means_all=True,
            )
        return []

    @property
    def shard_mesh(self):
        """The 2-D ``("replicate", "shard")`` device mesh of hybrid sharding (``shard_size`` smaller than the
        data-parallel size), or ``None``: shard over the ``data_parallel`` dimension of :attr:`device_mesh`.
        Built in :meth:`setup_environment`."""
        return self._shard_mesh

    def _saves_sharded(self) -> bool:
        return self._save_distributed_checkpoint

    def setup_environment(self) -> None:
        # Checked on every rank before the process group exists: a bad size fails fast everywhere, no hang.
        world_size = self.num_nodes * self.num_processes
        self._data_parallel_size, self._tensor_parallel_size = resolve_parallel_sizes(
            self._data_parallel_size, self._tensor_parallel_size, world_size, self.shard_size, type(self).__name__
        )
        precision = check_precision(getattr(self.precision_plugin, "precision", "32-true"), "fsdp2", _accelerator(self.root_device))
        check_gpu_bf16(precision, self.root_device)
        super().setup_environment()
        dp = self._data_parallel_size
        if self.shard_size is not None and self.shard_size < dp:
            from torch.distributed.device_mesh import init_device_mesh

            self._shard_mesh = init_device_mesh(
                self.root_device.type, (dp // self.shard_size, self.shard_size), mesh_dim_names=("replicate", "shard")
            )

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

    ``OrthoModule.configure_model`` (through :func:`lit_ortho.distributed.sharding.shard_model`) sets an
    ``auto_wrap_policy`` that wraps each block in its own FSDP unit and each learnable activation in an fp32 unit;
    this strategy then wraps the root. Parameters are bf16 in compute under ``bf16-mixed``, gradients are
    reduced in fp32. Unlike ``strategy: fsdp``, it also runs on CPUs (gloo), for tests.

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
            timeout=parse_timeout(timeout_s),
            cpu_offload=cpu_offload,
            sharding_strategy=sharding_strategy,
            state_dict_type=state_dict_type,
            limit_all_gathers=limit_all_gathers,
            use_orig_params=use_orig_params,
        )
        self.timeout_s = timeout_s
        self._atomic_checkpoints = bool(atomic_checkpoints)

    @classmethod
    def check_config(cls, init_args: Mapping[str, Any], settings: TrainerSettings) -> list[str]:
        """The pre-flight check (:class:`~lit_ortho.distributed.preflight.CheckedStrategy`): precision and
        timeout; CPUs are fine."""
        check_precision(settings.precision, "fsdp1", settings.accelerator)
        parse_timeout(init_args.get("timeout_s", DEFAULT_TIMEOUT_S))
        return []

    def _saves_sharded(self) -> bool:
        return self._state_dict_type == "sharded"

    def setup_environment(self) -> None:
        accelerator = _accelerator(self.root_device)
        precision = check_precision(getattr(self.precision_plugin, "precision", "32-true"), "fsdp1", accelerator)
        check_gpu_bf16(precision, self.root_device)
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
