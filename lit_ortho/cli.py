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
from lit_ortho.distributed import ConfigurationError, check_trainer_config, consolidate_checkpoint

__all__ = ["OrthoCLI", "cli_main", "main", "PREPARE_COMMANDS", "COMMANDS"]

DESCRIPTION = (
    "lit-ortho: train models with learnable Hermite / Fourier / tropical activations. "
    "Subcommands: fit, validate, test, predict (LightningCLI), prepare-text, prepare-images "
    "(run 'lit-ortho prepare-text --help'), and consolidate (a sharded checkpoint into one file)."
)

TRAINER_DEFAULTS: dict[str, Any] = {
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "runs", "name": "lit-ortho", "default_hp_metric": False},
    },
}


class OrthoCLI(LightningCLI):
    """LightningCLI with lit-ortho's defaults: subclass mode for model and data, TensorBoard logging,
    and a ``config.yaml`` saved (overwritten) in each run's log directory."""

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
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config.get("trainer") if hasattr(config, "get") else getattr(config, "trainer", None)
        if trainer is None:
            return
        for warning in check_trainer_config(trainer):
            rank_zero_warn(warning)


def cli_main(args: Optional[Sequence[str]] = None, run: bool = True) -> OrthoCLI:
    return OrthoCLI(args=None if args is None else list(args), run=run)


# ---- data preparation subcommands ---------------------------------------------------------------------
def _prepare_text_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lit-ortho prepare-text",
        description="Tokenise text / JSON-lines / parquet files (e.g. OpenWebText) into litdata chunks for TextDataModule.",
    )
    p.add_argument("inputs", nargs="+", help="files or folders (.txt .md .jsonl .json .parquet, optionally .gz/.xz/.bz2)")
    p.add_argument("--output-dir", required=True, help="where train/, val/ and lit_ortho.json are written")
    p.add_argument("--tokenizer", default="gpt2", choices=TOKENIZERS, help="gpt2 (tiktoken BPE) or byte (default: gpt2)")
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


COMMANDS = {**PREPARE_COMMANDS, "consolidate": consolidate_command}


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Entry point of the ``lit-ortho`` script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in COMMANDS:
        try:
            COMMANDS[args[0]](args[1:])
        except ValueError as err:  # DataError and other bad values: one line naming the problem
            sys.exit(f"lit-ortho {args[0]}: error: {err}")
        return
    try:
        cli_main(None if argv is None else args)  # None: LightningCLI reads sys.argv itself
    except ConfigurationError as err:  # the pre-flight check: a configuration that cannot run
        sys.exit(f"lit-ortho{' ' + args[0] if args and not args[0].startswith('-') else ''}: error: {err}")


if __name__ == "__main__":
    main()
