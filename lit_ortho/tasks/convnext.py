"""ConvNeXt image classification as a LightningModule."""

from __future__ import annotations

from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from lit_ortho.activations import spec_of
from lit_ortho.errors import UsageError
from lit_ortho.models.convnext import check_convnext_name, create_convnext, freeze_all_but_activations_and_head
from lit_ortho.tasks.base import OrthoModule

__all__ = ["ConvNeXtModule"]


class ConvNeXtModule(OrthoModule):
    """Train a timm ConvNeXt with any activation spec: from scratch, or the paper's fine-tune recipe.

    Batches are ``(images, labels)``; labels are class indices, or ``(B, num_classes)`` soft targets
    when the datamodule applies mixup/cutmix. Logs ``train/loss``, ``train/acc1`` (hard labels only),
    ``val/loss``, ``val/acc1``, ``val/acc5`` (top-5 when there are more than 5 classes), and the same
    ``test/...`` metrics under ``Trainer.test``.

    Args:
        model_name: timm ConvNeXt variant (``convnext_atto`` ... ``convnext_xlarge``, ``convnextv2_*``).
        activation: activation spec for every block's MLP.
        num_classes: ``None`` takes the datamodule's ``num_classes`` at setup.
        pretrained: local weights file (nothing is downloaded). Its GELUs are replaced by
            ``activation``, initialised by ``activation_init``; a different ``num_classes`` gets a new head.
        activation_init: ``"gelu"`` (fit to GELU: the paper's fine-tune), ``"replaced"`` or ``None``.
        freeze_backbone: train only the learnable activations and the classifier (the paper's CIFAR-10
            fine-tune).
        drop_path_rate: stochastic depth (ConvNeXt-T recipe: 0.1).
        label_smoothing: applied to the loss, for hard and mixed targets alike (recipe: 0.1).
        in_chans: input channels.
        lr, min_lr, weight_decay, betas: as in :class:`~lit_ortho.tasks.OrthoModule`, with the ConvNeXt
            recipe's defaults (AdamW 4e-3 at batch 4096, betas 0.9/0.999, weight decay 0.05, cosine to 1e-6).
        **kwargs: the other options of :class:`~lit_ortho.tasks.OrthoModule` (``eps``, ``warmup_steps``,
            ``warmup_epochs``, ``lr_decay_steps``, ``activation_checkpointing``, ``compile``, ...).
    """

    def __init__(
        self,
        model_name: str = "convnext_atto",
        activation: Union[str, dict[str, Any]] = "gelu",
        num_classes: Optional[int] = None,
        pretrained: Optional[str] = None,
        activation_init: Optional[str] = "gelu",
        freeze_backbone: bool = False,
        drop_path_rate: float = 0.0,
        label_smoothing: float = 0.0,
        in_chans: int = 3,
        lr: float = 4e-3,
        min_lr: Optional[float] = 1e-6,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        **kwargs: Any,
    ):
        # the ConvNeXt recipe's defaults for these four; every other option comes from OrthoModule unchanged
        super().__init__(lr=lr, min_lr=min_lr, weight_decay=weight_decay, betas=betas, **kwargs)
        check_convnext_name(model_name)  # now, not when the class count is known at setup
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
        self.model = None
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()
        if num_classes is not None:
            self._build()

    # ---- construction ------------------------------------------------------------------------------
    def _build(self) -> None:
        hp = self.hparams
        if not isinstance(hp.num_classes, int) or hp.num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {hp.num_classes!r}")
        self.model = create_convnext(
            hp.model_name,
            activation=hp.activation,
            num_classes=hp.num_classes,
            pretrained=hp.pretrained,
            activation_init=hp.activation_init,
            drop_path_rate=hp.drop_path_rate,
            in_chans=hp.in_chans,
        )
        if hp.freeze_backbone:
            freeze_all_but_activations_and_head(self.model)
        top5 = min(5, hp.num_classes)
        # average="micro": the share of correct images (torchmetrics' default is a per-class mean)
        self.train_acc1 = MulticlassAccuracy(hp.num_classes, top_k=1, average="micro")
        self.val_acc1 = MulticlassAccuracy(hp.num_classes, top_k=1, average="micro")
        self.val_acc5 = MulticlassAccuracy(hp.num_classes, top_k=top5, average="micro") if hp.num_classes > 5 else None
        self.test_acc1 = MulticlassAccuracy(hp.num_classes, top_k=1, average="micro")
        self.test_acc5 = MulticlassAccuracy(hp.num_classes, top_k=top5, average="micro") if hp.num_classes > 5 else None

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        data_classes = getattr(datamodule, "num_classes", None)
        if self.model is None:
            if data_classes is None:
                raise ValueError(
                    "ConvNeXtModule(num_classes=None) takes the class count from the datamodule, but "
                    f"{type(datamodule).__name__ if datamodule is not None else 'no datamodule'} has no num_classes: "
                    "pass num_classes (e.g. --model.num_classes=1000) or use ImageDataModule"
                )
            self.hparams.num_classes = int(data_classes)
            self._build()
        elif data_classes is not None and data_classes != self.hparams.num_classes:
            raise ValueError(
                f"the data has {data_classes} classes but the model has num_classes={self.hparams.num_classes}; "
                "set model.num_classes to match (or null to take it from the data)"
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The checkpoint holds every weight and the activations the blocks really have (replaced after
        construction, fitted to a pretrained model's GELU...): reloading needs neither the pretrained file
        nor the original spec."""
        hp = checkpoint.setdefault("hyper_parameters", {})
        hp["pretrained"] = None
        if self.model is None:
            return
        specs = [spec_of(block.mlp.act) for stage in self.model.stages for block in stage.blocks]
        if any(s != specs[0] for s in specs):
            raise UsageError(
                "ConvNeXtModule rebuilds one activation for every block, but the blocks hold different ones "
                f"({sorted({str(s) for s in specs})}): give all blocks the same activation, or save the model's state_dict"
            )
        hp["activation"], hp["activation_init"] = specs[0], None  # the spec carries its own init

    # ---- sharding hooks ----------------------------------------------------------------------------
    def shard_units(self):
        return list(self.model.stages)

    def set_activation_checkpointing(self, enabled: bool) -> None:
        self.model.set_grad_checkpointing(enabled)

    # ---- steps ------------------------------------------------------------------------------------
    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def _loss(self, logits: Tensor, target: Tensor) -> Tensor:
        eps = self.hparams.label_smoothing
        if target.is_floating_point():  # soft targets from mixup / cutmix
            if eps:
                target = target * (1.0 - eps) + eps / logits.size(-1)
            return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        return F.cross_entropy(logits.float(), target, label_smoothing=eps)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        images, target = batch
        logits = self.model(images)
        loss = self._loss(logits, target)
        self.log("train/loss", loss, prog_bar=True)
        if not target.is_floating_point():
            self.train_acc1(logits.detach(), target)
            self.log("train/acc1", self.train_acc1, prog_bar=True)
        return loss

    def _evaluate(self, batch, split: str, loss: MeanMetric, acc1: MulticlassAccuracy, acc5: Optional[MulticlassAccuracy]) -> None:
        images, target = batch
        logits = self.model(images)
        loss.update(F.cross_entropy(logits.float(), target), weight=target.numel())
        acc1.update(logits, target)
        self.log(f"{split}/acc1", acc1, prog_bar=True)
        if acc5 is not None:
            acc5.update(logits, target)
            self.log(f"{split}/acc5", acc5)
        self.log(f"{split}/loss", loss, prog_bar=True)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_loss, self.val_acc1, self.val_acc5)

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_loss, self.test_acc1, self.test_acc5)

    def predict_step(self, batch, batch_idx: int) -> Tensor:
        """Class probabilities ``(B, num_classes)``."""
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self.model(images).softmax(dim=-1)
