"""Checks that run before any process group exists: precisions, parallel sizes, timeouts, Trainer settings.

:func:`check_trainer_config` is what ``lit-ortho fit`` runs on the parsed Trainer configuration. It checks
Lightning's own FSDP strategies here, and asks every other strategy class that has one for its
:meth:`check_config` classmethod (the :class:`CheckedStrategy` protocol; lit-ortho's ``FSDP2Strategy`` and
``FSDP1Strategy`` implement it), so this module needs to know nothing of the strategies themselves.
"""

from __future__ import annotations

import importlib
import re
from datetime import timedelta
from typing import Any, Mapping, Optional, Protocol, Union

import torch
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy, Strategy, StrategyRegistry

from lit_ortho.errors import UsageError

__all__ = [
    "ConfigurationError",
    "DEFAULT_TIMEOUT_S",
    "FSDP2_PRECISIONS",
    "FSDP1_PRECISIONS",
    "CPU_PRECISIONS",
    "CheckedStrategy",
    "TrainerSettings",
    "normalize_precision",
    "parse_timeout",
    "check_shard_size",
    "resolve_parallel_sizes",
    "check_precision",
    "check_gpu_bf16",
    "check_trainer_config",
]

DEFAULT_TIMEOUT_S = 1800.0  # torch's and Lightning's default process-group timeout (30 min)

# precisions each sharding strategy can run (normalised names)
FSDP2_PRECISIONS = ("32-true", "bf16-mixed", "bf16-true", "16-true")
FSDP1_PRECISIONS = ("32-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true")
CPU_PRECISIONS = ("32-true", "bf16-mixed", "bf16-true")


class ConfigurationError(UsageError):
    """A training configuration that cannot run (raised before training starts)."""


# ---- value checks -------------------------------------------------------------------------------------
def normalize_precision(precision: Any) -> str:
    """``bf16`` -> ``bf16-mixed``, ``16`` -> ``16-mixed``, ``32`` -> ``32-true`` (Lightning's own mapping)."""
    if precision is None:
        return "32-true"
    value = str(precision)
    aliases = {"16": "16-mixed", "bf16": "bf16-mixed", "32": "32-true", "64": "64-true", "half": "16-true", "double": "64-true"}
    return aliases.get(value, value)


def parse_timeout(timeout_s: Any) -> Optional[timedelta]:
    """A collective timeout in seconds as a ``timedelta`` (``None`` stays ``None``: torch's default)."""
    if timeout_s is None:
        return None
    if isinstance(timeout_s, timedelta):
        return timeout_s
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or timeout_s <= 0:
        raise ConfigurationError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    return timedelta(seconds=float(timeout_s))


def check_shard_size(shard_size: Any, strategy_name: str = "FSDP2Strategy") -> Optional[int]:
    """``shard_size`` if it is ``None`` or a positive integer."""
    if shard_size is not None and (isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1):
        raise ConfigurationError(f"{strategy_name}: shard_size must be a positive integer or null, got {shard_size!r}")
    return shard_size


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
        check_shard_size(shard_size, strategy_name)
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


def check_gpu_bf16(precision: str, device: torch.device) -> None:
    """Refuse a bf16 precision on a GPU without native bf16 (before Ampere)."""
    if device.type == "cuda" and precision.startswith("bf16") and not torch.cuda.is_bf16_supported(including_emulation=False):
        name = torch.cuda.get_device_name(device)
        raise ConfigurationError(
            f"precision {precision!r} needs bf16 support, which {name} lacks (NVIDIA Ampere or newer); use "
            f"precision: 32-true, or 16-mixed with strategy: fsdp1"
        )


# ---- the Trainer configuration ------------------------------------------------------------------------
class TrainerSettings:
    """What :func:`check_trainer_config` read from the Trainer configuration, handed to
    :meth:`CheckedStrategy.check_config`.

    Attributes:
        accelerator: ``"cpu"``, ``"gpu"`` or another accelerator name.
        precision: normalised (``"bf16-mixed"``, ``"32-true"``, ...).
        devices: processes per node, ``None`` when it cannot be told before launch.
        num_nodes: number of nodes.
        world_size: ``devices * num_nodes``, or ``None``.
        written: how the user wrote the strategy, for messages (``'fsdp2'``, ``FSDP2Strategy``).
    """

    __slots__ = ("accelerator", "precision", "devices", "num_nodes", "world_size", "written")

    def __init__(self, accelerator: str, precision: str, devices: Optional[int], num_nodes: int, written: str):
        self.accelerator, self.precision, self.devices, self.num_nodes, self.written = accelerator, precision, devices, num_nodes, written
        self.world_size = devices * num_nodes if devices is not None else None


class CheckedStrategy(Protocol):
    """A strategy class that checks its own configuration before it is built.

    ``check_config(init_args, settings)`` is a classmethod: ``init_args`` are the arguments the YAML / command line
    gives the strategy (those of a registered name included), ``settings`` a :class:`TrainerSettings`. It raises
    :class:`ConfigurationError` for what cannot run and returns warnings for what runs but is probably unintended.
    """

    @classmethod
    def check_config(cls, init_args: Mapping[str, Any], settings: TrainerSettings) -> list[str]: ...


def _get(obj: Any, key: str, default: Any = None) -> Any:
    if obj is None:
        return default
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _import(class_path: str) -> Optional[type]:
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


def _check_lightning_fsdp(init_args: Mapping[str, Any], s: TrainerSettings) -> list[str]:
    """Lightning's ``FSDPStrategy`` (``strategy: fsdp``): GPUs only, and it reduces gradients in low precision."""
    if s.accelerator == "cpu":
        raise ConfigurationError(
            f"strategy {s.written} (FSDP1) needs GPUs, but accelerator is cpu. On CPUs use FSDP2: "
            f"strategy: fsdp2 (lit_ortho.distributed.FSDP2Strategy, Lightning's ModelParallelStrategy with "
            f"per-block fully_shard), or strategy: fsdp1 (lit_ortho.distributed.FSDP1Strategy) for FSDP1"
        )
    check_precision(s.precision, "fsdp1", s.accelerator)
    if s.accelerator == "gpu" and s.precision in ("bf16-mixed", "16-mixed"):
        return [
            f"strategy {s.written}: Lightning's FSDPStrategy reduces gradients in {s.precision.split('-')[0]}; "
            "strategy: fsdp1 (or fsdp2) reduces them in fp32"
        ]
    return []


def _check_model_parallel(cls: type, init_args: Mapping[str, Any], s: TrainerSettings) -> list[str]:
    """Lightning's ``ModelParallelStrategy``, whose ``"auto"`` sizes mean data_parallel_size = num_nodes and
    tensor_parallel_size = devices per node."""
    check_precision(s.precision, "fsdp2", s.accelerator)
    dp, tp = init_args.get("data_parallel_size", "auto"), init_args.get("tensor_parallel_size", "auto")
    if s.world_size is None:
        return []
    try:
        resolve_parallel_sizes(
            int(s.num_nodes) if dp == "auto" else dp, s.devices if tp == "auto" else tp, s.world_size,
            init_args.get("shard_size"), cls.__name__, auto_means_all=False,
        )
    except ConfigurationError as err:
        if "auto" in (dp, tp):
            raise ConfigurationError(
                f"{err}. Note: ModelParallelStrategy's 'auto' sizes mean data_parallel_size = num_nodes and "
                f"tensor_parallel_size = devices; use strategy: fsdp2, whose 'auto' shards over every process"
            ) from None
        raise
    return []


def check_trainer_config(trainer: Any) -> list[str]:
    """Pre-flight check of a Trainer configuration (a LightningCLI namespace or a dict): refuse what cannot run,
    with a message that says what to write instead. Returns warnings for what runs but is probably unintended.

    Refused: FSDP1 (``strategy: fsdp`` / ``FSDPStrategy``) on CPUs; a precision the chosen FSDP flavour cannot
    run; ModelParallelStrategy / FSDP2 sizes that do not multiply to devices x num_nodes, or tensor
    parallelism (lit-ortho's models are FSDP-only); a ``shard_size`` that does not divide the world size.
    A strategy class with a ``check_config`` classmethod (:class:`CheckedStrategy`) checks itself.
    """
    accelerator = _accelerator_name(_get(trainer, "accelerator", "auto"))
    cls, init_args, written = _strategy_spec(_get(trainer, "strategy", "auto"))
    if cls is None:
        return []
    settings = TrainerSettings(
        accelerator=accelerator,
        precision=normalize_precision(_get(trainer, "precision", "32-true")),
        devices=_num_devices(_get(trainer, "devices", "auto"), accelerator),
        num_nodes=int(_get(trainer, "num_nodes", 1) or 1),
        written=written,
    )
    own_check = getattr(cls, "check_config", None)
    if callable(own_check):
        return list(own_check(init_args, settings))
    if issubclass(cls, FSDPStrategy):
        return _check_lightning_fsdp(init_args, settings)
    if issubclass(cls, ModelParallelStrategy):
        return _check_model_parallel(cls, init_args, settings)
    return []
