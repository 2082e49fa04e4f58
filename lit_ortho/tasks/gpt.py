"""GPT-2 language modelling as a LightningModule."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanMetric

from lit_ortho.errors import UsageError
from lit_ortho.models.gpt import GPT, GPTConfig, set_trainable_parts
from lit_ortho.tasks.base import OrthoModule

__all__ = ["GPT2Module"]

_HF_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


class GPT2Module(OrthoModule):
    """Train GPT-2 (any size) with any activation spec, on one CPU, DDP or FSDP2, unchanged.

    Batches are ``(B, T + 1)`` token windows (what :class:`~lit_ortho.data.TextDataModule` yields):
    inputs are ``[:, :-1]``, targets ``[:, 1:]``. Logs ``train/loss``, ``train/ppl``, ``val/loss`` and
    ``val/ppl`` (token-weighted over the whole validation set, synchronised across processes).

    Args:
        size: ``tiny`` (a CPU model), ``gpt2`` (124 M), ``gpt2-medium``, ``gpt2-large``, ``gpt2-xl``.
        activation: the MLP activation spec, or a per-layer mapping ``{"0-3": "gelu", "*": "hermite:3"}``
            (``None``: ``gelu``, or with ``pretrained`` the checkpoint's own activation).
        vocab_size: tokenizer vocabulary; ``None`` takes the datamodule's ``vocab_size`` at setup
            (then saved in the checkpoint, so ``load_from_checkpoint`` needs nothing else).
        block_size, n_layer, n_head, n_embd: override the named size.
        dropout, bias: as in GPT-2 / nanoGPT.
        pretrained: a local Hugging Face GPT-2 directory (or ``.safetensors`` file): its weights and sizes
            are loaded (:meth:`GPT.from_pretrained`) and each MLP activation is replaced by ``activation``,
            a learnable one fitted to the checkpoint's own (the paper's swap). The directory's tokenizer is
            the default for ``generate``. Checkpoints written afterwards need no access to it.
        freeze: parts not to train (``embeddings``, ``attention``, ``mlp``, ``norms``, ``activations``).
        trainable: the only parts to train, e.g. ``activations``; the opposite of ``freeze``.
        **kwargs: the optimiser / schedule / parallelism options of :class:`~lit_ortho.tasks.OrthoModule`
            (``lr``, ``min_lr``, ``weight_decay``, ``betas``, ``warmup_steps``, ...). Its defaults are the
            nanoGPT / paper recipe: AdamW(6e-4, betas 0.9/0.95, weight decay 0.1), cosine to lr/10.
    """

    def __init__(
        self,
        size: str = "tiny",
        activation: Union[str, dict[str, Any], None] = None,
        vocab_size: Optional[int] = None,
        block_size: Optional[int] = None,
        n_layer: Optional[int] = None,
        n_head: Optional[int] = None,
        n_embd: Optional[int] = None,
        dropout: float = 0.0,
        bias: bool = True,
        pretrained: Optional[str] = None,
        freeze: Union[str, list[str], None] = None,
        trainable: Union[str, list[str], None] = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.model: Optional[GPT] = None
        self.tokenizer_name: Optional[str] = None  # for generate(); from the datamodule or the checkpoint
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()
        if pretrained is not None or vocab_size is not None:
            self._build()
        else:  # validate the rest of the config now, not at setup
            self._config(vocab_size=257)

    # ---- construction ------------------------------------------------------------------------------
    def _config(self, **overrides: Any) -> GPTConfig:
        hp = self.hparams
        shape = {k: hp[k] for k in ("block_size", "n_layer", "n_head", "n_embd") if hp[k] is not None}
        return GPTConfig.from_name(
            hp.size,
            **shape,
            activation="gelu" if hp.activation is None else hp.activation,
            dropout=hp.dropout,
            bias=hp.bias,
            gradient_checkpointing=hp.activation_checkpointing,
            **{"vocab_size": hp.vocab_size, **overrides},
        )

    def _build(self) -> None:
        hp = self.hparams
        if hp.pretrained is None:
            self.model = GPT(self._config())
        else:
            given = {k: hp[k] for k in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd") if hp[k] is not None}
            self.model = GPT.from_pretrained(hp.pretrained, activation=hp.activation, dropout=hp.dropout,
                                             gradient_checkpointing=hp.activation_checkpointing)  # fmt: skip
            found = {k: getattr(self.model.config, k) for k in given}
            if found != given:
                raise UsageError(f"pretrained={hp.pretrained!r} has {found}, but the module was given {given}: leave them unset")
            self._adopt_pretrained_tokenizer(hp.pretrained)
        set_trainable_parts(self.model, hp.freeze, hp.trainable)

    def _adopt_pretrained_tokenizer(self, path: str) -> None:
        """The checkpoint directory's own tokenizer files are the default tokenizer (for ``generate``)."""
        from lit_ortho.data.tokenizers import hf_tokenizer_dir

        directory = hf_tokenizer_dir(path)
        if directory is not None and self.tokenizer_name is None:
            self.tokenizer_name = str(directory)

    @property
    def config(self) -> Optional[GPTConfig]:
        return None if self.model is None else self.model.config

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        data_vocab = getattr(datamodule, "vocab_size", None)
        if getattr(datamodule, "tokenizer_name", None) is not None:
            self.tokenizer_name = datamodule.tokenizer_name
        if self.model is None:
            if data_vocab is None:
                raise ValueError(
                    "GPT2Module(vocab_size=None) takes the vocabulary size from the datamodule, but "
                    f"{type(datamodule).__name__ if datamodule is not None else 'no datamodule'} has no vocab_size: "
                    "pass vocab_size (e.g. --model.vocab_size=50257) or use TextDataModule"
                )
            self.hparams.vocab_size = int(data_vocab)
            self._build()
        if data_vocab is not None and data_vocab > self.config.vocab_size:
            raise ValueError(
                f"the data's tokenizer has {data_vocab} tokens but the model's vocab_size is {self.config.vocab_size}; "
                f"set model.vocab_size to at least {data_vocab} (or null to take it from the data)"
            )
        seq_length = getattr(datamodule, "seq_length", None)
        if seq_length is not None and seq_length > self.config.block_size:
            raise ValueError(
                f"data.seq_length={seq_length} is longer than the model's context (block_size={self.config.block_size}, "
                f"size {self.hparams.size!r}); lower data.seq_length or raise model.block_size"
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["tokenizer_name"] = self.tokenizer_name
        if self.model is not None:  # the model as it is (replaced activations, pretrained sizes): no file needed
            hp = checkpoint.setdefault("hyper_parameters", {})
            config = self.model.config
            hp.update(activation=self.model.activation_specs(), pretrained=None, vocab_size=config.vocab_size,
                      block_size=config.block_size, n_layer=config.n_layer, n_head=config.n_head, n_embd=config.n_embd,
                      bias=config.bias)  # fmt: skip

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.tokenizer_name = checkpoint.get("tokenizer_name", self.tokenizer_name)

    # ---- sharding hooks ----------------------------------------------------------------------------
    def shard_units(self):
        return list(self.model.transformer.h)

    def set_activation_checkpointing(self, enabled: bool) -> None:
        self.model.config.gradient_checkpointing = enabled

    # ---- steps ------------------------------------------------------------------------------------
    def forward(self, idx: Tensor) -> Tensor:
        return self.model(idx)

    def _loss(self, batch: Tensor) -> tuple[Tensor, int]:
        if isinstance(batch, (list, tuple)):  # (inputs, targets) pairs are accepted too
            x, y = (t.long() for t in batch)
        else:
            batch = batch.long()
            x, y = batch[:, :-1], batch[:, 1:]
        logits = self.model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        return loss, y.numel()

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        loss, _ = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/ppl", torch.exp(loss.detach()))
        return loss

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        loss, n = self._loss(batch)
        self.val_loss.update(loss, weight=n)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_loss(self.val_loss, "val")

    def test_step(self, batch: Tensor, batch_idx: int) -> None:
        loss, n = self._loss(batch)
        self.test_loss.update(loss, weight=n)

    def on_test_epoch_end(self) -> None:
        self._log_epoch_loss(self.test_loss, "test")

    def _log_epoch_loss(self, metric: MeanMetric, split: str) -> None:
        if metric.update_count == 0:
            return
        loss = metric.compute()  # token-weighted mean over all batches and processes
        # already reduced over processes: sync_dist only averages identical values (and keeps Lightning quiet)
        self.log(f"{split}/loss", loss, prog_bar=True, sync_dist=True)
        self.log(f"{split}/ppl", torch.exp(loss), sync_dist=True)
        metric.reset()

    def predict_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        """Per-sequence mean negative log-likelihood (nats per token) of each window."""
        batch = batch.long()
        x, y = batch[:, :-1], batch[:, 1:]
        logits = self.model(x)
        nll = F.cross_entropy(logits.transpose(1, 2), y, reduction="none")
        return nll.mean(dim=1)

    # ---- text generation ---------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        prompt: Union[str, Tensor, Sequence[int]] = "",
        max_new_tokens: int = 200,
        temperature: float = 0.8,
        top_k: Optional[int] = 200,
        seed: Optional[int] = None,
        stop_at_eos: bool = True,
        tokenizer: Optional[str] = None,
    ) -> Union[str, Tensor]:
        """Continue ``prompt``. A string prompt returns the decoded text (prompt included); token ids
        (a list or a ``(T,)``/``(B, T)`` tensor) return token ids. An empty prompt starts a new document.

        ``tokenizer`` (``"byte"``, ``"gpt2"``) defaults to the one the model was trained with (saved in
        its checkpoint).
        """
        from lit_ortho.data.tokenizers import get_tokenizer

        if self.model is None:
            raise RuntimeError("the model is not built yet: give vocab_size or run setup with a datamodule first")
        as_text = isinstance(prompt, str)
        tok = None
        if as_text:
            name = tokenizer or self.tokenizer_name
            if name is None:
                raise ValueError("this GPT2Module does not know its tokenizer; pass tokenizer='byte' or 'gpt2', or token ids")
            tok = get_tokenizer(name)
            ids = tok.encode(prompt) if prompt else [tok.eot_id]
            idx = torch.tensor([ids], dtype=torch.long)
        else:
            idx = torch.as_tensor(prompt, dtype=torch.long)
            if idx.dim() == 1:
                idx = idx[None]
        idx = idx.to(self.device)
        generator = None
        if seed is not None:
            generator = torch.Generator(device=idx.device).manual_seed(seed)
        eos = tok.eot_id if (tok is not None and stop_at_eos) else None
        was_training = self.model.training
        self.model.eval()
        try:
            out = self.model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, eos_id=eos, generator=generator)
        finally:
            self.model.train(was_training)
        if not as_text:
            return out if torch.as_tensor(prompt).dim() > 1 else out[0]
        start = 1 if not prompt else 0  # drop the document-start token of an empty prompt
        return tok.decode(out[0, start:].tolist())

    def save_hf(self, output_dir: str, overwrite: bool = False) -> Path:
        """Write the model as a Hugging Face GPT-2 directory that ``transformers.GPT2LMHeadModel.from_pretrained``
        loads with the same logits (and the tokenizer files, when it came from a Hugging Face directory).

        Only activations transformers has can go there: GELU and its variants, ReLU, SiLU, tanh. A learnable
        activation is refused: keep the lit-ortho checkpoint, or the weights plus the spec.
        """
        from lit_ortho.activations import hf_activation_name
        from lit_ortho.data.tokenizers import hf_tokenizer_dir
        from lit_ortho.models.hf import save_gpt2_checkpoint

        if self.model is None:
            raise UsageError("the model is not built yet: nothing to export")
        specs = self.model.activation_specs()
        names = {hf_activation_name(s) if isinstance(s, str) else None for s in (specs if isinstance(specs, list) else [specs])}
        if len(names) != 1 or None in names:
            raise UsageError(
                f"cannot export to Hugging Face: the model's MLP activations are {specs!r}, and a GPT-2 in transformers has "
                f"one built-in activation_function for all layers (gelu, gelu_new, gelu_pytorch_tanh, relu, silu, ...), no "
                f"learnable one. Keep the lit-ortho checkpoint (GPT2Module.load_from_checkpoint), or save the weights "
                f"(safetensors.torch.save_file(module.model.state_dict(), ...)) together with the spec {specs!r}"
            )
        if not self.model.config.bias:
            raise UsageError("cannot export to Hugging Face: this GPT has no biases (bias=false); transformers' GPT-2 always has them")
        config = {**vars(self.model.config), "activation_function": names.pop()}
        tokenizer_dir = hf_tokenizer_dir(self.tokenizer_name) if self.tokenizer_name not in (None, "byte", "gpt2") else None
        extra = {}
        if tokenizer_dir is not None:
            extra = {f: tokenizer_dir / f for f in _HF_TOKENIZER_FILES if (tokenizer_dir / f).is_file()}
        return save_gpt2_checkpoint(self.model.state_dict(), config, output_dir, overwrite=overwrite, extra_files=extra)

    def num_parameters(self) -> int:
        return 0 if self.model is None else self.model.num_parameters(non_embedding=False)
