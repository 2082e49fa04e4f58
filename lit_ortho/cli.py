"""The ``lit-ortho`` command: LightningCLI (fit/validate/test/predict) plus data preparation.

    lit-ortho fit --config cli_configs/gpt2_cpu.yaml
    lit-ortho fit --config cli_configs/gpt2_cpu.yaml --model.activation=fourier:5
    lit-ortho fit --config cli_configs/gpt2_cpu.yaml --ckpt_path last          # resume
    lit-ortho prepare-text  <files/folders> --output-dir data/owt --tokenizer gpt2
    lit-ortho prepare-images <ImageNet-style folder> --output-dir data/imagenet
    lit-ortho consolidate runs/x/checkpoints/last.ckpt model.ckpt       # sharded checkpoint -> one file

Model and data are in subclass mode: a YAML names any LightningModule / LightningDataModule by
``class_path`` (``lit_ortho.modules.GPT2Module``, your own ``mypkg.MyModule``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Optional, Sequence

from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

# Imported so the CLI resolves the short names (--model GPT2Module, --data TextDataModule).
from lit_ortho.data import IMAGE_DATASETS, TOKENIZERS, ImageDataModule, TextDataModule  # noqa: F401
from lit_ortho.tasks import ConvNeXtModule, GPT2Module  # noqa: F401

# Registers strategy: fsdp2 / fsdp2_cpu_offload / fsdp1 and provides the pre-flight check.
from lit_ortho.distributed import ConfigurationError, check_trainer_config, consolidate_checkpoint, end_process_groups

__all__ = ["OrthoCLI", "cli_main", "main", "PREPARE_COMMANDS", "COMMANDS"]

DESCRIPTION = (
    "lit-ortho: train models with learnable Hermite / Fourier / tropical activations. "
    "Subcommands: fit, validate, test, predict (LightningCLI), prepare-text, prepare-images "
    "(run 'lit-ortho prepare-text --help'), consolidate (a sharded checkpoint into one file) and export-hf "
    "(a GPT-2 checkpoint into a Hugging Face directory)."
)

TRAINER_DEFAULTS: dict[str, Any] = {
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "runs", "name": "lit-ortho", "default_hp_metric": False},
    },
}


class OrthoCLI(LightningCLI):
    """LightningCLI with lit-ortho's defaults: subclass mode for model and data, TensorBoard logging,
    and a ``config.yaml`` saved (overwritten) in each run's log directory.

    Checkpoints (:mod:`lit_ortho.checkpointing`): every Trainer writes through ``AtomicCheckpointIO`` (beside the
    target, fsync, rename, sidecar checksum), Lightning's ``ModelCheckpoint`` in a configuration becomes
    ``lit_ortho.checkpointing.ModelCheckpoint`` (same arguments), and ``--ckpt_path`` follows one rule whether it
    is ``last`` or a path (see :meth:`_parse_ckpt_path`)."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("trainer_defaults", TRAINER_DEFAULTS)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_kwargs", {"description": DESCRIPTION})
        super().__init__(*args, **kwargs)

    def before_instantiate_classes(self) -> None:
        """Pre-flight check of the Trainer settings (strategy / accelerator / precision / parallel sizes), so a
        configuration that cannot run fails with a clear message before any process group or model exists."""
        from lit_ortho.checkpointing import use_atomic_model_checkpoint

        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config.get("trainer") if hasattr(config, "get") else getattr(config, "trainer", None)
        if trainer is None:
            return
        for warning in check_trainer_config(trainer):
            rank_zero_warn(warning)
        use_atomic_model_checkpoint(trainer)

    def after_instantiate_classes(self) -> None:
        from lit_ortho.checkpointing import install_checkpoint_io

        install_checkpoint_io(self.trainer)

    def parse_arguments(self, parser: Any, args: Any) -> None:
        self._given_args = args  # kept to tell the values a user gave from defaults (see _parse_ckpt_path)
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        """``--ckpt_path`` (replaces LightningCLI's merge, which let the checkpoint override the command line for a
        path but not for ``last``). One rule for both: ``last`` is first resolved to the newest complete checkpoint
        of the configured checkpoint directories (:func:`~lit_ortho.checkpointing.find_resume_checkpoint`, one line
        when that is not ``last.ckpt``); the checkpoint is verified; one of another model class is refused, naming
        both, before any model is built; its hyperparameters fill in what the config files and the command line
        leave unset, and what they give wins, with one line for each value where the two disagree."""
        from lit_ortho import checkpointing as ck

        sub = self.config.get("subcommand")
        ckpt_path = self.config[sub].get("ckpt_path") if sub else None
        if not ckpt_path or ckpt_path in ("best", "hpc") or not ck._local(ckpt_path):
            return
        config = self.config[sub]
        try:
            if ckpt_path == "last":
                path, message = ck.find_resume_checkpoint(ck.checkpoint_directories(config.get("trainer")))
                if message:
                    ck.note(message)
                if path is None:
                    return  # nothing to resume from: Lightning says so, and training starts from scratch
                config.ckpt_path = ckpt_path = str(path)
            hparams = dict(ck.read_checkpoint_metadata(ckpt_path).get("hyper_parameters") or {})
        except ck.CheckpointError as err:
            raise ConfigurationError(str(err)) from None
        hparams.pop("_instantiator", None)
        ckpt_class = hparams.pop("_class_path", None)
        model = config.get("model")
        if model is not None and ckpt_class and not ck.same_class(ckpt_class, model.class_path):
            raise ConfigurationError(
                f"--ckpt_path {ckpt_path} holds a {ckpt_class}, but the configuration builds a {model.class_path}: "
                "give the checkpoint of this model, or the configuration of that one"
            )
        class_path = model.class_path if model is not None else ckpt_class
        if not hparams or class_path is None:
            return
        if model is None:
            self.config = self.parser.parse_object({sub: {"model": {"class_path": class_path}}}, self.config)
        accepted = self.config[sub].model.get("init_args") or {}
        given = self._given_model_args(sub)
        updates = {}
        for key, value in hparams.items():
            if key not in accepted:
                continue
            if key not in given:
                updates[key] = value
            elif not ck.same_value(given[key], value, key):
                ck.note(f"model.init_args.{key}: {given[key]!r} given, {value!r} in the checkpoint: using {given[key]!r}")
        if updates:
            self.config = self.parser.parse_object({sub: {"model": {"class_path": class_path, "init_args": updates}}}, self.config)

    def _given_model_args(self, sub: str) -> dict[str, Any]:
        """The model arguments the config files and the command line give explicitly (defaults left out)."""
        args = getattr(self, "_given_args", None)
        try:
            if isinstance(args, dict) or hasattr(args, "as_dict"):
                given = self.parser.parse_object(args, defaults=False)
            else:
                given = self.parser.parse_args(sys.argv[1:] if args is None else list(args), defaults=False)
        except SystemExit:  # pragma: no cover - it parsed with defaults a moment ago
            given = self.config
        init_args = given.get(f"{sub}.model.init_args") if given.get(f"{sub}.model") is not None else None
        if init_args is None:
            return {}
        return dict(init_args.as_dict() if hasattr(init_args, "as_dict") else init_args)


def cli_main(args: Optional[Sequence[str]] = None, run: bool = True) -> OrthoCLI:
    """``lit-ortho fit|validate|test|predict``: the subcommand, then (every rank, after a barrier) the end of the
    process groups, so no rank tears down its connections while another still needs them."""
    cli = OrthoCLI(args=None if args is None else list(args), run=run)
    if run:
        end_process_groups(barrier=True)
    return cli


# ---- data preparation subcommands ---------------------------------------------------------------------
def _prepare_text_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lit-ortho prepare-text",
        description="Tokenise text / JSON-lines / parquet files (e.g. OpenWebText) into litdata chunks for TextDataModule.",
    )
    p.add_argument("inputs", nargs="+", help="files or folders (.txt .md .jsonl .json .parquet, optionally .gz/.xz/.bz2)")
    p.add_argument("--output-dir", required=True, help="where train/, val/ and lit_ortho.json are written")
    p.add_argument("--tokenizer", default="gpt2",
                   help=f"{' or '.join(TOKENIZERS)}, or a Hugging Face tokenizer directory (tokenizer.json, or vocab.json + "
                        "merges.txt: a pretrained model's own) (default: gpt2)")  # fmt: skip
    p.add_argument("--val-fraction", type=float, default=0.0005, help="share of documents held out (default: 0.0005)")
    p.add_argument("--val-inputs", nargs="+", default=None, help="files to use as the validation split instead")
    p.add_argument("--text-key", default="text", help="JSON field / parquet column holding the text (default: text)")
    p.add_argument("--num-workers", type=int, default=None, help="worker processes (default: all CPU cores)")
    p.add_argument("--chunk-bytes", default="64MB", help="litdata chunk size (default: 64MB)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an earlier prepared output directory (kept until the new one is complete)"
    )
    p.add_argument(
        "--strict", action="store_true", help="error instead of warning when folder files are not read or text is not valid UTF-8"
    )
    return p


def _prepare_images_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lit-ortho prepare-images",
        description=(
            "Pack an ImageNet-style folder tree (root/train/<class>/*, root/val/<class>/*, or root/<class>/*) "
            "into litdata chunks for ImageDataModule; or prepare a built-in data set with --dataset."
        ),
    )
    p.add_argument("root", nargs="?", help="image folder tree")
    p.add_argument("--output-dir", help="where train/, val/ and lit_ortho.json are written (built-ins: the cache)")
    p.add_argument("--dataset", choices=IMAGE_DATASETS, help="prepare a built-in data set instead of a folder")
    p.add_argument("--download-dir", help="where --dataset cifar10 is downloaded (default: the cache)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="held-out share when root has no train/ val/ (default: 0.1)")
    p.add_argument("--num-workers", type=int, default=None, help="worker processes (default: all CPU cores)")
    p.add_argument("--chunk-bytes", default="256MB", help="litdata chunk size (default: 256MB)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an earlier prepared output directory (kept until the new one is complete)"
    )
    p.add_argument(
        "--strict", action="store_true", help="error instead of warning when files are not read or a class folder holds no images"
    )
    return p


def prepare_text_command(argv: Sequence[str]) -> dict:
    from lit_ortho.data import prepare_text
    from lit_ortho.data._common import warnings_as_lines

    a = _prepare_text_parser().parse_args(argv)
    with warnings_as_lines("lit-ortho prepare-text"):
        meta = prepare_text(
            a.inputs,
            a.output_dir,
            tokenizer=a.tokenizer,
            val_fraction=a.val_fraction,
            val_inputs=a.val_inputs,
            num_workers=a.num_workers,
            text_key=a.text_key,
            chunk_bytes=a.chunk_bytes,
            overwrite=a.overwrite,
            strict=a.strict,
        )
    splits = ", ".join(f"{k}: {v['tokens']:,} tokens in {v['documents']:,} documents" for k, v in meta["splits"].items())
    print(f"wrote {a.output_dir} ({meta['tokenizer']}, vocabulary {meta['vocab_size']}): {splits}")
    print(f"train with: --data TextDataModule --data.data_dir {a.output_dir}")
    return meta


def prepare_images_command(argv: Sequence[str]) -> dict:
    import json

    from lit_ortho.data import prepare_builtin_images, prepare_images
    from lit_ortho.data._common import warnings_as_lines

    parser = _prepare_images_parser()
    a = parser.parse_args(argv)
    if a.dataset:
        if a.root:
            parser.error("give either a folder or --dataset, not both")
        out = prepare_builtin_images(a.dataset, output_dir=a.output_dir, download_dir=a.download_dir, num_workers=a.num_workers or 4, verbose=True)
        meta = json.loads((out / "lit_ortho.json").read_text())
        target = f"--data.dataset {a.dataset}" + (f" --data.data_dir {a.output_dir}" if a.output_dir else "")
    else:
        if not a.root or not a.output_dir:
            parser.error("a folder and --output-dir are required (or --dataset)")
        with warnings_as_lines("lit-ortho prepare-images"):
            meta = prepare_images(
                a.root,
                a.output_dir,
                val_fraction=a.val_fraction,
                num_workers=a.num_workers,
                chunk_bytes=a.chunk_bytes,
                overwrite=a.overwrite,
                strict=a.strict,
            )
        out, target = a.output_dir, f"--data.data_dir {a.output_dir}"
    splits = ", ".join(f"{k}: {v['images']:,} images" for k, v in meta["splits"].items())
    print(f"wrote {out} ({meta['num_classes']} classes): {splits}")
    print(f"train with: --data ImageDataModule {target}")
    return meta


PREPARE_COMMANDS = {"prepare-text": prepare_text_command, "prepare-images": prepare_images_command}


# ---- checkpoint consolidation ---------------------------------------------------------------------------
def _consolidate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lit-ortho consolidate",
        description=(
            "Merge a sharded checkpoint directory (written by strategy fsdp2 / fsdp1 / ModelParallelStrategy on any "
            "number of processes) into one .ckpt file that GPT2Module.load_from_checkpoint / ConvNeXtModule."
            "load_from_checkpoint read, and that a single-device or DDP run can resume or fine-tune from. "
            "Runs on one CPU process; needs the whole model (and optimizer state, unless --weights-only) in memory."
        ),
    )
    p.add_argument("checkpoint_dir", help="a sharded checkpoint, e.g. runs/<name>/checkpoints/last.ckpt (a directory)")
    p.add_argument("output_file", nargs="?", default=None, help="where to write (default: <checkpoint_dir minus .ckpt>.consolidated.ckpt)")
    p.add_argument("--weights-only", action="store_true", help="keep weights and hyperparameters only: drop optimizer, scheduler and loop state")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    return p


def consolidate_command(argv: Sequence[str]):
    a = _consolidate_parser().parse_args(argv)
    try:
        out = consolidate_checkpoint(a.checkpoint_dir, a.output_file, weights_only=a.weights_only, overwrite=a.overwrite)
    except (FileNotFoundError, FileExistsError) as err:
        raise ValueError(str(err)) from None
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB{', weights only' if a.weights_only else ''})")
    return out


# ---- export to Hugging Face -------------------------------------------------------------------------------
def _export_hf_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lit-ortho export-hf",
        description=(
            "Write a GPT2Module checkpoint as a Hugging Face GPT-2 directory (config.json + model.safetensors, and the "
            "tokenizer files of a model fine-tuned from a Hugging Face directory) that "
            "transformers.GPT2LMHeadModel.from_pretrained loads with the same logits. Only activations transformers "
            "has (GELU variants, ReLU, SiLU, tanh): a model with learnable activations is refused."
        ),
    )
    p.add_argument("checkpoint", help="a lit-ortho .ckpt file of a GPT2Module (sharded: run lit-ortho consolidate first)")
    p.add_argument("output_dir", help="the Hugging Face model directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty directory")
    return p


def export_hf_command(argv: Sequence[str]):
    a = _export_hf_parser().parse_args(argv)
    module = GPT2Module.load_from_checkpoint(a.checkpoint, map_location="cpu")
    out = module.save_hf(a.output_dir, overwrite=a.overwrite)
    print(f"wrote {out} (load with transformers.GPT2LMHeadModel.from_pretrained({str(out)!r}))")
    return out


def coord_check_command(argv: Sequence[str]):
    from lit_ortho import coord_check

    return coord_check.main(argv)


COMMANDS = {**PREPARE_COMMANDS, "consolidate": consolidate_command, "export-hf": export_hf_command,
            "coord-check": coord_check_command}  # fmt: skip


def _check_consolidate_output(argv: Sequence[str]) -> None:
    """Refuse an output file that cannot be written before the sharded checkpoint is loaded (the default output
    lies beside the checkpoint directory, as :func:`consolidate_checkpoint` names it)."""
    from pathlib import Path

    from lit_ortho.cli_errors import check_writable_file

    a = _consolidate_parser().parse_args(argv)
    if a.output_file is not None:
        check_writable_file(a.output_file, "output file")
    else:
        src = Path(a.checkpoint_dir).expanduser()
        check_writable_file(src.with_name(src.name.removesuffix(".ckpt") + ".consolidated.ckpt"), "output file (beside the checkpoint)")


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Entry point of the ``lit-ortho`` script.

    A user error (a bad value, path, spec or option; a configuration the pre-flight check refuses; a directory the
    run cannot write) prints one line, ``lit-ortho <command>: error: <option> <value>: <what is wrong>``, and exits
    with status 2 (:mod:`lit_ortho.cli_errors`). ``--debug`` (taken out before the CLI parses) or
    ``LIT_ORTHO_DEBUG=1`` shows the full traceback and the usual jsonargparse output instead."""
    import os

    from lit_ortho import cli_errors

    args, debug = cli_errors.pop_debug_flag(sys.argv[1:] if argv is None else argv)
    if argv is None:
        sys.argv[1:] = args  # LightningCLI reads sys.argv itself (given args as well, it warns)
        if debug:  # processes a launcher starts from sys.argv (DDP ranks) debug too
            os.environ.setdefault(cli_errors.DEBUG_ENV, "1")
    if args and args[0] in COMMANDS:
        prog = f"lit-ortho {args[0]}"
        try:
            if args[0] == "consolidate":
                _check_consolidate_output(args[1:])
            COMMANDS[args[0]](args[1:])
        except ValueError as err:  # DataError and other bad values: one line naming the problem
            if debug:
                raise
            cli_errors.exit_usage(prog, str(err))
        return
    sub = next((a for a in args if a in cli_errors.RUN_SUBCOMMANDS), None)
    prog = f"lit-ortho {sub}" if sub else "lit-ortho"
    with cli_errors.cli_hooks(debug=debug):
        try:
            cli_main(None if argv is None else args)  # None: LightningCLI reads sys.argv itself
        except BaseException as err:  # noqa: BLE001 - only user errors are caught; the rest is re-raised
            message = None if debug else cli_errors.user_error_message(err, args)
            if message is None:
                raise
            cli_errors.exit_usage(prog, message)


if __name__ == "__main__":
    main()
