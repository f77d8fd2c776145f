"""The blog's MLP: 784-256-256-256-128-128-10, ReLU, dropout before the last layer."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from mnist_ddp.config.schema import Config
from mnist_ddp.model import sample_noise


class BitsDropout(nn.Module):
    """Dropout whose mask comes from 16 random bits per element.

    Given each sample's key (:func:`mnist_ddp.model.sample_noise.sample_keys`: seed, global step, the
    sample's index in the dataset), the mask is a hash of (key, unit): the same for a sample at
    any world size, after any resume, on CPU or GPU. Without keys it draws from the generator,
    ``randint`` over whole 64-bit words: on CPUs ``nn.Dropout``'s ``bernoulli_`` costs ~1 ms for a
    512 x 128 batch, about 8% of a training step, and this a tenth of that. ``p`` is kept to
    1/65536 (0.5 exactly).
    """

    def __init__(self, p: float, width: int) -> None:
        super().__init__()
        self.p, self.width = p, width
        self.draw_threshold = round(p * 65536)  # keep an element when its 16-bit draw is at least this
        self.scale = 1 / (1 - self.draw_threshold / 65536)
        self.register_buffer("unit_words", sample_noise.unit_words(width), persistent=False)
        # The mask in bf16 when the scale is exact there (p = 0.5: 2): under autocast the
        # activations stay bf16, with no cast forward or back, and the products round once, as
        # in float32 then cast. Other scales keep a float32 mask (bf16 would round them).
        exact = torch.tensor(self.scale, dtype=torch.bfloat16, device="cpu").item() == self.scale
        self.register_buffer(
            "bf16_scale", torch.tensor(self.scale, dtype=torch.bfloat16 if exact else torch.float32), persistent=False
        )

    def forward(self, x: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if keys is not None:
            keep = sample_noise.keep_mask(keys, self.unit_words, self.draw_threshold)
        else:
            words = torch.randint(-(2**63), 2**63 - 1, (-(-x.numel() // 4),), dtype=torch.int64, device=x.device)
            keep = words.view(torch.int16)[: x.numel()].view(x.shape) >= self.draw_threshold - 32768
        return x * (keep * (self.bf16_scale if x.dtype == torch.bfloat16 else self.scale))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class MLP(nn.Module):
    """A ReLU MLP that takes normalized pixels (N, in_features; see ``data.normalize_pixels``) and returns logits.

    The blog's model applied log_softmax and then nn.CrossEntropyLoss, which applies
    log_softmax again (a double softmax that flattens the gradients). This model returns
    raw logits and training uses ``F.cross_entropy`` on them once.
    """

    def __init__(self, in_features: int, hidden: list[int], dropout: float, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers += [BitsDropout(dropout, width), nn.Linear(width, num_classes)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, sample_keys: torch.Tensor | None = None) -> torch.Tensor:
        """Logits; ``sample_keys`` (one per row of ``x``) key the dropout masks to the samples."""
        for layer in self.layers:
            x = layer(x, sample_keys) if isinstance(layer, BitsDropout) else layer(x)
        return x


def build_model(cfg: Config, in_features: int) -> MLP:
    """The model that ``cfg`` describes for inputs of ``in_features`` pixels (on the CPU)."""
    return MLP(in_features, list(cfg.model.hidden), cfg.model.dropout)


def parameter_count(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def parameter_hash(model: nn.Module) -> str:
    """SHA-256 of every parameter's bytes, in order: equal hashes mean bit-identical weights."""
    digest = hashlib.sha256()
    for p in model.parameters():
        digest.update(p.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
