"""GPT-2 language modelling as a LightningModule."""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanMetric

from lit_ortho.models.gpt import GPT, GPTConfig
from lit_ortho.tasks.base import OrthoModule

__all__ = ["GPT2Module"]


class GPT2Module(OrthoModule):
    """Train GPT-2 (any size) with any activation spec, on one CPU, DDP or FSDP2, unchanged.

    Batches are ``(B, T + 1)`` token windows (what :class:`~lit_ortho.data.TextDataModule` yields):
    inputs are ``[:, :-1]``, targets ``[:, 1:]``. Logs ``train/loss``, ``train/ppl``, ``val/loss`` and
    ``val/ppl`` (token-weighted over the whole validation set, synchronised across processes).

    Args:
        size: ``tiny`` (a CPU model), ``gpt2`` (124 M), ``gpt2-medium``, ``gpt2-large``, ``gpt2-xl``.
        activation: the MLP activation spec, or a per-layer mapping ``{"0-3": "gelu", "*": "hermite:3"}``.
        vocab_size: tokenizer vocabulary; ``None`` takes the datamodule's ``vocab_size`` at setup
            (then saved in the checkpoint, so ``load_from_checkpoint`` needs nothing else).
        block_size, n_layer, n_head, n_embd: override the named size.
        dropout, bias: as in GPT-2 / nanoGPT.
        **kwargs: the optimiser / schedule / parallelism options of :class:`~lit_ortho.tasks.OrthoModule`
            (``lr``, ``min_lr``, ``weight_decay``, ``betas``, ``warmup_steps``, ...). Its defaults are the
            nanoGPT / paper recipe: AdamW(6e-4, betas 0.9/0.95, weight decay 0.1), cosine to lr/10.
    """

    def __init__(
        self,
        size: str = "tiny",
        activation: Union[str, dict[str, Any]] = "gelu",
        vocab_size: Optional[int] = None,
        block_size: Optional[int] = None,
        n_layer: Optional[int] = None,
        n_head: Optional[int] = None,
        n_embd: Optional[int] = None,
        dropout: float = 0.0,
        bias: bool = True,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.model: Optional[GPT] = None
        self.tokenizer_name: Optional[str] = None  # for generate(); from the datamodule or the checkpoint
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()
        if vocab_size is not None:
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
            activation=hp.activation,
            dropout=hp.dropout,
            bias=hp.bias,
            gradient_checkpointing=hp.activation_checkpointing,
            **{"vocab_size": hp.vocab_size, **overrides},
        )

    def _build(self) -> None:
        self.model = GPT(self._config())

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

    def num_parameters(self) -> int:
        return 0 if self.model is None else self.model.num_parameters(non_embedding=False)
