"""GPT-2 in one file (nanoGPT layout), with the MLP activation taken from an activation spec.

    config = GPTConfig.from_name("gpt2", activation="hermite:3")
    model = GPT(config)
    logits = model(idx)                        # idx: (B, T) token ids -> (B, T, padded_vocab_size)

Parameter names follow nanoGPT / Hugging Face GPT-2 (``transformer.h.0.mlp.c_fc.weight``), so GPT-2
state dicts map over by name (HF stores the Linear weights transposed, as Conv1D).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lit_ortho.activations import replace_activations, spec_for_hf_activation, spec_of
from lit_ortho.activations.spec import build_activation, parse_activation_spec
from lit_ortho.errors import UsageError, check_choice
from lit_ortho.models.hf import load_gpt2_checkpoint
from lit_ortho.models.mlp import linear_activation_linear

__all__ = ["GPTConfig", "GPT", "Block", "CausalSelfAttention", "MLP", "GPT_SIZES", "GPT_PARTS", "layer_activation_specs",
           "set_trainable_parts"]

# name -> (n_layer, n_head, n_embd, block_size); the GPT-2 family as released, plus a CPU-sized model.
GPT_SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(n_layer=4, n_head=4, n_embd=128, block_size=256),  # ~0.8 M non-embedding params
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),  # 124 M
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024, block_size=1024),  # 350 M
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280, block_size=1024),  # 774 M
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600, block_size=1024),  # 1558 M
}


@dataclass
class GPTConfig:
    """Hyperparameters of :class:`GPT`. ``GPTConfig.from_name("gpt2")`` gives the 124 M model.

    Args:
        vocab_size: the tokenizer's vocabulary (50257 for GPT-2 BPE, 257 for bytes).
        padding_multiple: the embedding/output table is padded up to a multiple of this
            (50257 -> 50304, nanoGPT's faster size); padded ids are never generated.
        activation: the MLP activation: any activation spec (``"gelu"``, ``"hermite:3"``, a mapping with
            ``name``), or per layer: ``{"0-3": "gelu", "*": "hermite:3"}`` (keys: a layer ``"5"``, a range
            ``"0-3"``, a list ``"0,2,4"``, or ``"*"`` for every other layer) or a list with one spec per layer.
        bias: biases in Linear layers and LayerNorms (GPT-2: True).
        dropout: dropout on embeddings, attention weights and residual branches.
        gradient_checkpointing: recompute each block in backward instead of storing its activations.
        recompute_activation: the MLP keeps only its activation's input for backward and recomputes the
            output (:mod:`lit_ortho.models.mlp`): a quarter less saved per block, bitwise the same result.
    """

    vocab_size: int = 50257
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    mlp_ratio: int = 4
    padding_multiple: int = 64
    activation: Any = "gelu"
    bias: bool = True
    dropout: float = 0.0
    gradient_checkpointing: bool = False
    recompute_activation: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "mlp_ratio", "padding_multiple"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig: n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout!r}")
        for spec in layer_activation_specs(self.activation, self.n_layer):  # fail now on a bad spec
            if isinstance(spec, (str, Mapping)):
                parse_activation_spec(spec)

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> "GPTConfig":
        """A named size (``tiny``, ``gpt2``, ``gpt2-medium``, ``gpt2-large``, ``gpt2-xl``) with overrides."""
        check_choice(name, GPT_SIZES, "GPT-2 size")
        return cls(**{**GPT_SIZES[name], **overrides})

    @property
    def padded_vocab_size(self) -> int:
        return math.ceil(self.vocab_size / self.padding_multiple) * self.padding_multiple

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_LAYER_KEY = re.compile(r"^\s*(-?\d+)\s*(?:-\s*(-?\d+)\s*)?$")


def layer_activation_specs(activation: Any, n_layer: int) -> list[Any]:
    """Expand ``GPTConfig.activation`` into one spec per layer.

    A string, a callable or a mapping with a ``name`` key applies to every layer. A list gives one spec
    per layer. Any other mapping is per layer: ``{"0-3": "gelu", "4,6": "fourier:5", "*": "hermite:3"}``
    (ranges are inclusive; ``"*"`` covers the layers no other key names).
    """
    if isinstance(activation, (list, tuple)):
        if len(activation) != n_layer:
            raise ValueError(f"a per-layer activation list needs {n_layer} entries (n_layer), got {len(activation)}")
        return list(activation)
    if not isinstance(activation, Mapping) or "name" in activation:
        return [activation] * n_layer
    layer_keys = any(str(key).strip() == "*" or _LAYER_KEY.match(part) for key in activation for part in str(key).split(","))
    if not layer_keys and not all(isinstance(v, (str, Mapping)) or callable(v) for v in activation.values()):
        raise UsageError(
            f"the activation mapping {dict(activation)!r} has no 'name' key: write {{name: hermite, degree: 3}} for "
            f"one activation, or layer keys {{'0-3': gelu, '*': 'hermite:3'}} for one per layer"
        )
    specs: list[Any] = [None] * n_layer
    default = None
    for key, spec in activation.items():
        if str(key).strip() == "*":
            default = spec
            continue
        layers: list[int] = []
        for part in str(key).split(","):
            match = _LAYER_KEY.match(part)
            if not match:
                raise ValueError(
                    f"bad per-layer activation key {key!r}: use a layer index '5', a range '0-3', "
                    f"a list '0,2,4' or '*' (layers are 0..{n_layer - 1})"
                )
            lo, hi = int(match.group(1)), int(match.group(2) if match.group(2) is not None else match.group(1))
            if lo > hi:
                raise UsageError(f"per-layer activation key {key!r} is a reversed range: write '{hi}-{lo}'")
            if not (0 <= lo <= hi < n_layer):
                raise ValueError(f"per-layer activation key {key!r} is outside the model's layers 0..{n_layer - 1}")
            layers.extend(range(lo, hi + 1))
        for i in layers:
            if specs[i] is not None:
                raise ValueError(f"layer {i} is named by more than one per-layer activation key ({key!r} and another)")
            specs[i] = spec
    missing = [i for i, s in enumerate(specs) if s is None]
    if missing:
        if default is None:
            raise ValueError(f"per-layer activation mapping leaves layers {missing} without a spec; add a '*' key")
        for i in missing:
            specs[i] = default
    return specs


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig, activation: Any = "gelu"):
        super().__init__()
        hidden = config.mlp_ratio * config.n_embd
        self.c_fc = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.act = build_activation(activation)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

        self.recompute_activation = config.recompute_activation

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(linear_activation_linear(x, self.c_fc, self.act, self.c_proj, self.recompute_activation))


class Block(nn.Module):
    def __init__(self, config: GPTConfig, activation: Any = "gelu"):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config, activation)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """The GPT-2 language model: token + position embeddings, ``n_layer`` pre-norm blocks, tied output."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        acts = layer_activation_specs(config.activation, config.n_layer)
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList(Block(config, act) for act in acts),
                ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.reset_parameters()

    @classmethod
    def from_pretrained(cls, path: str, activation: Any = None, **overrides: Any) -> "GPT":
        """A GPT-2 from a local Hugging Face checkpoint (any size; see :mod:`lit_ortho.models.hf` for the files).

        The checkpoint's own activation (``activation_function``, e.g. ``gelu_new``) is reproduced with Hugging
        Face's exact formula, so fp32 logits equal ``transformers.GPT2LMHeadModel``'s. ``activation`` then
        replaces every MLP activation (the paper's swap): a learnable spec is fitted to the activation it
        replaces (value and slope), a fixed one is used as is. ``overrides`` set other :class:`GPTConfig`
        fields (``dropout`` defaults to 0, ``gradient_checkpointing``); the sizes come from the checkpoint.
        Nothing is downloaded.
        """
        found, state = load_gpt2_checkpoint(path)
        if abs(found["layer_norm_epsilon"] - 1e-5) > 1e-12:
            raise UsageError(f"{path!r}: layer_norm_epsilon={found['layer_norm_epsilon']}, but GPT's LayerNorms use 1e-5")
        sizes = {k: found[k] for k in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")}
        clash = sorted(k for k in overrides if k in sizes or k in ("activation", "bias"))
        if clash:
            raise UsageError(f"GPT.from_pretrained takes the sizes from the checkpoint; remove {clash} from the overrides")
        config = GPTConfig(**sizes, activation=spec_for_hf_activation(found["activation_function"]), bias=True,
                           **{"dropout": 0.0, **overrides})  # fmt: skip
        model = cls(config)
        model.load_unpadded_state_dict(state, source=str(path))
        if activation is not None:
            model.replace_mlp_activations(activation)
        return model

    @torch.no_grad()
    def load_unpadded_state_dict(self, state: dict[str, Tensor], source: str = "the checkpoint") -> None:
        """Load weights whose token table has ``vocab_size`` rows (the padding rows are zeroed; their logits
        are masked anyway). Missing, unexpected and mis-shaped keys are named in one error."""
        own = {k: v for k, v in self.state_dict().items() if k != "lm_head.weight"}
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        vocab = self.config.vocab_size
        shapes = {k: (tuple(state[k].shape), tuple(own[k].shape)) for k in set(own) & set(state)
                  if tuple(state[k].shape) != (tuple(own[k].shape) if k != "transformer.wte.weight" else (vocab, own[k].shape[1]))}  # fmt: skip
        if missing or unexpected or shapes:
            parts = [f"missing keys {missing}" if missing else "", f"unexpected keys {unexpected}" if unexpected else "",
                     "mis-shaped keys " + ", ".join(f"{k} {a} (expected {b})" for k, (a, b) in sorted(shapes.items())) if shapes else ""]  # fmt: skip
            raise UsageError(f"{source} does not fit this GPT: " + "; ".join(p for p in parts if p))
        for key, value in state.items():
            target = own[key][:vocab] if key == "transformer.wte.weight" else own[key]
            target.copy_(value)
        self.transformer.wte.weight[vocab:].zero_()

    def replace_mlp_activations(self, activation: Any) -> list[str]:
        """Replace every block's MLP activation by ``activation`` (a learnable spec is fitted to the module it
        replaces), and record the result in ``config.activation``, so the config rebuilds this model."""
        learnable = callable(getattr(build_activation(activation), "config", None))
        replaced = replace_activations(self, activation, types=None, names=["transformer.h.*.mlp.act"],
                                       init="replaced" if learnable else None)  # fmt: skip
        self.config.activation = self.activation_specs()
        return replaced

    def activation_specs(self) -> Any:
        """The spec of the activations the model really has: one spec, or one per layer when they differ."""
        specs = [spec_of(block.mlp.act) for block in self.transformer.h]
        declared = layer_activation_specs(self.config.activation, self.config.n_layer)
        if all(spec_of(build_activation(d)) == s for d, s in zip(declared, specs)):
            return self.config.activation  # as the user wrote it ("hermite:3"), when that is still what the model has
        return specs[0] if all(s == specs[0] for s in specs) else specs

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """GPT-2 init: N(0, 0.02) weights, zero biases, residual projections scaled by 1/sqrt(2 n_layer).

        Activation modules keep their own initialisation.
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()
        std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for block in self.transformer.h:
            nn.init.normal_(block.attn.c_proj.weight, mean=0.0, std=std)
            nn.init.normal_(block.mlp.c_proj.weight, mean=0.0, std=std)

    def num_parameters(self, non_embedding: bool = True) -> int:
        """Parameter count; ``non_embedding`` leaves out the position table (the token table is tied)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def forward(self, idx: Tensor) -> Tensor:
        """Token ids ``(B, T)`` -> logits ``(B, T, padded_vocab_size)``."""
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds the model's block_size {self.config.block_size}")
        pos = torch.arange(T, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            if self.config.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        if self.config.padded_vocab_size > self.config.vocab_size:  # padding ids are no tokens: probability 0
            logits[..., self.config.vocab_size :] = float("-inf")
        return logits

    @torch.no_grad()
    def generate(
        self,
        idx: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: Optional[int] = None,
        eos_id: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
    ) -> Tensor:
        """Sample ``max_new_tokens`` continuations of ``idx`` ``(B, T)``; ``temperature=0`` is greedy.

        The context is cropped to the last ``block_size`` tokens; ids beyond ``vocab_size`` (padding)
        are never sampled. Stops early when every row has produced ``eos_id``.
        """
        finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        for _ in range(max_new_tokens):
            logits = self(idx[:, -self.config.block_size :])[:, -1, : self.config.vocab_size].float()
            if temperature <= 0:
                next_id = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = F.softmax(logits, dim=-1)
                next_id = torch.multinomial(probs, num_samples=1, generator=generator)
            idx = torch.cat((idx, next_id), dim=1)
            if eos_id is not None:
                finished |= next_id.squeeze(1) == eos_id
                if bool(finished.all()):
                    break
        return idx


# Parameter groups for partial fine-tuning, by name glob (the head is tied to wte: it is an embedding).
GPT_PARTS: dict[str, tuple[str, ...]] = {
    "embeddings": ("transformer.wte.*", "transformer.wpe.*", "lm_head.*"),
    "attention": ("transformer.h.*.attn.*",),
    "mlp": ("transformer.h.*.mlp.c_fc.*", "transformer.h.*.mlp.c_proj.*"),
    "norms": ("transformer.h.*.ln_*", "transformer.ln_f.*"),
    "activations": ("transformer.h.*.mlp.act.*",),
}


def set_trainable_parts(model: GPT, freeze: Any = None, trainable: Any = None) -> list[str]:
    """Freeze the :data:`GPT_PARTS` named in ``freeze``, or everything but those in ``trainable`` (a name or a
    list: ``trainable="activations"`` trains only the learnable activations, as the paper's fine-tune);
    returns the names of the parameters left trainable."""
    import fnmatch

    if freeze is not None and trainable is not None:
        raise UsageError("give freeze or trainable, not both")
    chosen = freeze if freeze is not None else trainable
    if chosen is None:
        return [n for n, p in model.named_parameters() if p.requires_grad]
    parts = [chosen] if isinstance(chosen, str) else list(chosen)
    for part in parts:
        check_choice(part, GPT_PARTS, "GPT part")
    patterns = [g for part in parts for g in GPT_PARTS[part]]
    names = []
    for name, p in model.named_parameters(remove_duplicate=False):
        named = any(fnmatch.fnmatchcase(name, g) for g in patterns)
        p.requires_grad_(named if trainable is not None else not named)
    for name, p in model.named_parameters():
        if p.requires_grad:
            names.append(name)
    if not names:
        raise UsageError(f"nothing left to train: freeze={freeze!r}, trainable={trainable!r}")
    return names
