"""Hugging Face GPT-2 checkpoints on local disk: read them into lit-ortho's names, and write them back.

Nothing here downloads or imports transformers: a checkpoint is a directory with ``config.json`` and
``model.safetensors`` (or ``pytorch_model.bin``, or sharded ``*.safetensors`` / ``*.bin`` with an
``*.index.json``), or a single ``.safetensors`` file. Facts of the format:

* keys are ``h.{i}.attn.c_attn.weight`` ..., with or without a ``transformer.`` prefix; ``lm_head.weight``
  is tied to ``wte`` (absent from the hub's files); ``h.{i}.attn.bias`` / ``masked_bias`` are causal-mask
  buffers, not weights;
* HF's ``Conv1D`` stores weights as (in, out): ``c_attn``, ``c_proj`` and ``c_fc`` are transposed to
  ``nn.Linear``'s (out, in) (``attn.c_proj`` is square: a shape check cannot catch a missing transpose).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Union

import torch
from torch import Tensor

from lit_ortho.errors import UsageError

__all__ = ["load_gpt2_checkpoint", "save_gpt2_checkpoint", "GPT2_SIZES_BY_SHAPE", "HF_CONV1D"]

# (n_layer, n_embd) -> n_head for the released GPT-2 sizes: a bare .safetensors file has no config.json
GPT2_SIZES_BY_SHAPE = {(12, 768): 12, (24, 1024): 16, (36, 1280): 20, (48, 1600): 25}
HF_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_BUFFERS = (("attn", "bias"), ("attn", "masked_bias"))  # h.{i}.attn.bias, not h.{i}.attn.c_attn.bias
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def _not_found(path: Path) -> UsageError:
    text = str(path)
    hint = ""
    if not path.is_absolute() and text.count("/") <= 1 and not text.startswith("."):
        hint = (
            f" It looks like a Hugging Face hub name: lit-ortho downloads nothing. Download it first, e.g. "
            f"`huggingface-cli download {text} --local-dir checkpoints/{text.replace('/', '--')}` (or `hf download ...`), "
            f"then pass that directory."
        )
    return UsageError(f"pretrained checkpoint {text!r} is not a local directory or .safetensors file.{hint}")


def _read_tensors(file: Path) -> dict[str, Tensor]:
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(file))
    state = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise UsageError(f"{str(file)!r} holds a {type(state).__name__}, not a state dict of tensors")
    return dict(state)


def _weight_files(directory: Path) -> list[Path]:
    for name in _INDEX_FILES:
        index = directory / name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            missing = [s for s in shards if not (directory / s).is_file()]
            if missing:
                raise UsageError(f"{str(index)!r} names shards that are not in {str(directory)!r}: {missing}")
            return [directory / s for s in shards]
    for name in _WEIGHT_FILES:
        if (directory / name).is_file():
            return [directory / name]
    raise UsageError(
        f"no weights in {str(directory)!r}: expected one of {', '.join(_WEIGHT_FILES + _INDEX_FILES)}"
    )


def load_gpt2_checkpoint(path: Union[str, os.PathLike]) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(config, state_dict)`` of a local Hugging Face GPT-2 checkpoint.

    ``config`` has lit-ortho's names (``n_layer``, ``n_head``, ``n_embd``, ``block_size``, ``vocab_size``,
    ``activation_function``, ``layer_norm_epsilon``); ``state_dict`` has :class:`~lit_ortho.models.GPT`'s keys
    (``transformer.h.0.mlp.c_fc.weight``), weights transposed to ``nn.Linear``'s layout, buffers dropped, the
    tied head left out, the token table unpadded (``vocab_size`` rows).
    """
    path = Path(path).expanduser()
    if path.is_file() and path.suffix == ".safetensors":
        files, hf_config = [path], None
        if (path.parent / "config.json").is_file():
            hf_config = json.loads((path.parent / "config.json").read_text())
    elif path.is_dir():
        if not (path / "config.json").is_file():
            raise UsageError(f"{str(path)!r} has no config.json: not a Hugging Face model directory")
        hf_config = json.loads((path / "config.json").read_text())
        files = _weight_files(path)
    else:
        raise _not_found(path)
    raw: dict[str, Tensor] = {}
    for file in files:
        raw.update(_read_tensors(file))
    state = {}
    for key, value in raw.items():
        key = key.removeprefix("transformer.")
        if tuple(key.split(".")[-2:]) in _BUFFERS or key == "lm_head.weight":
            continue
        if key.endswith(HF_CONV1D) and value.dim() == 2:
            value = value.t()
        state[f"transformer.{key}"] = value.contiguous()
    config = _config(hf_config, state, path)
    return config, state


def _config(hf: dict | None, state: Mapping[str, Tensor], path: Path) -> dict[str, Any]:
    try:
        vocab_size, n_embd = state["transformer.wte.weight"].shape
        block_size = state["transformer.wpe.weight"].shape[0]
    except KeyError as err:
        raise UsageError(f"{str(path)!r} is not a GPT-2 checkpoint: it has no {err.args[0].removeprefix('transformer.')!r}") from None
    n_layer = 1 + max((int(k.split(".")[2]) for k in state if k.startswith("transformer.h.")), default=-1)
    if hf is not None:
        if hf.get("model_type", "gpt2") != "gpt2":
            raise UsageError(f"{str(path)!r} holds a {hf.get('model_type')!r} model; GPT.from_pretrained reads GPT-2 checkpoints")
        n_head = int(hf["n_head"])
        activation = hf.get("activation_function", "gelu_new")
        eps = float(hf.get("layer_norm_epsilon", 1e-5))
        n_layer, n_embd = int(hf.get("n_layer", n_layer)), int(hf.get("n_embd", n_embd))
        block_size, vocab_size = int(hf.get("n_positions", block_size)), int(hf.get("vocab_size", vocab_size))
    else:
        if (n_layer, n_embd) not in GPT2_SIZES_BY_SHAPE:
            raise UsageError(
                f"{str(path)!r} has no config.json beside it and is not a released GPT-2 size "
                f"(n_layer={n_layer}, n_embd={n_embd}): put its config.json next to it"
            )
        n_head, activation, eps = GPT2_SIZES_BY_SHAPE[(n_layer, n_embd)], "gelu_new", 1e-5
    return dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size, vocab_size=vocab_size,
                activation_function=activation, layer_norm_epsilon=eps)  # fmt: skip


def save_gpt2_checkpoint(
    state_dict: Mapping[str, Tensor],
    config: Mapping[str, Any],
    output_dir: Union[str, os.PathLike],
    overwrite: bool = False,
    extra_files: Mapping[str, Union[str, os.PathLike]] = {},  # noqa: B006 - read only
) -> Path:
    """Write a Hugging Face GPT-2 directory (``config.json`` + ``model.safetensors``) that
    ``transformers.GPT2LMHeadModel.from_pretrained`` loads; the inverse of :func:`load_gpt2_checkpoint`.

    ``state_dict`` has :class:`~lit_ortho.models.GPT`'s keys; ``config`` its sizes and the Hugging Face
    ``activation_function``. The directory is built beside ``output_dir`` and renamed into place, so an
    interrupted export leaves no half-written model. ``extra_files`` (name -> path) are copied in
    (tokenizer files).
    """
    from safetensors.torch import save_file

    out = Path(output_dir).expanduser()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"{str(out)!r} exists and is not empty: choose another directory or pass --overwrite")
    vocab = int(config["vocab_size"])
    tensors = {}
    for key, value in state_dict.items():
        if key == "lm_head.weight":
            continue  # tied to wte
        name = key.removeprefix("transformer.")
        if name == "wte.weight":
            value = value[:vocab]  # lit-ortho pads the table; the padding is not part of the model
        if name.endswith(HF_CONV1D):
            value = value.t()
        tensors[name] = value.detach().to("cpu").contiguous()
    hf_config = {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "n_layer": int(config["n_layer"]),
        "n_head": int(config["n_head"]),
        "n_embd": int(config["n_embd"]),
        "n_positions": int(config["block_size"]),
        "n_ctx": int(config["block_size"]),
        "vocab_size": vocab,
        "activation_function": config["activation_function"],
        "layer_norm_epsilon": float(config.get("layer_norm_epsilon", 1e-5)),
        "resid_pdrop": float(config.get("dropout", 0.0)),
        "embd_pdrop": float(config.get("dropout", 0.0)),
        "attn_pdrop": float(config.get("dropout", 0.0)),
        "bos_token_id": vocab - 1,
        "eos_token_id": vocab - 1,
        "tie_word_embeddings": True,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        save_file(tensors, str(scratch / "model.safetensors"), metadata={"format": "pt"})
        (scratch / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        for name, source in extra_files.items():
            shutil.copyfile(source, scratch / name)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(scratch, out)
            shutil.rmtree(old)
        else:
            os.replace(scratch, out)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch)
    return out
