"""Multi-GPU / multi-node training: FSDP strategies set from YAML, pre-flight checks, sharded checkpoints.

Two strategies, both registered by name for ``trainer.strategy`` in a LightningCLI YAML (importing this package
registers them):

* :class:`FSDP2Strategy` (``strategy: fsdp2``; ``fsdp2_cpu_offload``): the primary path. Lightning's
  ``ModelParallelStrategy`` with FSDP2 ``fully_shard`` applied per block (bf16 parameters/compute, fp32 gradient
  reduction, learnable-activation coefficients always fp32). Adds: ``data_parallel_size: auto`` meaning *every*
  process (Lightning's "auto" is the number of nodes), hybrid sharding (``shard_size``), CPU offload, a
  collective timeout in seconds, atomic sharded checkpoints, and clear errors for impossible sizes / precisions
  before any process group is created. Runs on GPUs and, with gloo, on CPUs.
* :class:`FSDP1Strategy` (``strategy: fsdp1``): Lightning's ``FSDPStrategy`` (FSDP1), one FSDP unit per
  block, the same precision rules, sharded checkpoints by default, and a CPU path (for tests).

``strategy: fsdp`` (Lightning's own FSDP1) also works on GPUs. :func:`check_trainer_config` is the pre-flight
check ``lit-ortho fit`` runs before building the Trainer; :func:`consolidate_checkpoint` turns a sharded
checkpoint directory into one ``.ckpt`` file.

Submodules, one concern each (none imports the LightningModules of :mod:`lit_ortho.tasks`):

* :mod:`~lit_ortho.distributed.preflight`: configuration checks (precisions, sizes, timeouts, the Trainer).
* :mod:`~lit_ortho.distributed.checkpoints`: atomic sharded checkpoints, consolidation.
* :mod:`~lit_ortho.distributed.strategies`: the two strategies, collective-failure notes, name registration, and
  :func:`end_process_groups` (the end of a rank's part in a job: ``lit-ortho`` calls it after each subcommand).
* :mod:`~lit_ortho.distributed.sharding`: how a module is sharded under them (``fully_shard`` per block, the
  FSDP1 wrap policy, FSDP1 gradient clipping): what ``OrthoModule.configure_model`` calls.
"""

from lit_ortho.distributed.checkpoints import consolidate_checkpoint, is_sharded_checkpoint
from lit_ortho.distributed.preflight import (
    DEFAULT_TIMEOUT_S,
    ConfigurationError,
    check_precision,
    check_trainer_config,
    normalize_precision,
    resolve_parallel_sizes,
)
from lit_ortho.distributed.strategies import FSDP1Strategy, FSDP2Strategy, end_process_groups, is_collective_failure

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
    "end_process_groups",
    "consolidate_checkpoint",
    "DEFAULT_TIMEOUT_S",
]
