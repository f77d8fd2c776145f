"""One training step: a batch of this rank's indices in; gradients, an optimizer step and a
schedule step; the batch's mean loss recorded in the epoch's loss buffer and the NaN guard.

Eagerly, the gradients may come from train.accumulate_steps micro-batches, DDP syncing during
the last one only. With train.cuda_graphs=true every full batch replays one CUDA graph holding
the whole step (:class:`mnist_ddp.training.cuda_graphs.GraphedStep`); a short last batch runs eagerly.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mnist_ddp.base import fault_injection
from mnist_ddp.base.errors import InputError
from mnist_ddp.config.schema import TrainConfig
from mnist_ddp.data.order import shift_images, step_images
from mnist_ddp.data.splits import Splits, normalize_pixels
from mnist_ddp.model.mlp import BitsDropout
from mnist_ddp.model.optimizer import HOST_SCHEDULES, step_schedule
from mnist_ddp.model.sample_noise import DROPOUT_STREAM, SHIFT_STREAM, epoch_keys, shift_offsets
from mnist_ddp.training.cuda_graphs import GraphedStep, uncaptured_steps_expected
from mnist_ddp.training.guard import StopGuard


def check_step_options(tc: TrainConfig, device: torch.device, world_size: int) -> None:
    """CUDA graphs need a setting they can work with (config.check_world_size checks the rest)."""
    if tc.cuda_graphs and (device.type != "cuda" or world_size > 1 or tc.accumulate_steps > 1):
        raise InputError(
            "train.cuda_graphs=true needs one CUDA rank and train.accumulate_steps=1"
            f" (here: {world_size} rank(s) on {device.type}, accumulate_steps={tc.accumulate_steps});"
            " set train.cuda_graphs=false"
        )
    if tc.cuda_graphs and tc.schedule not in HOST_SCHEDULES:
        # onecycle also cycles momentum, cosine reads the rate back from the device: neither can
        # feed a captured step without a host sync.
        raise InputError(
            f"train.cuda_graphs=true works with train.schedule={' or '.join(HOST_SCHEDULES)}, not"
            f" {tc.schedule}; choose one of them or set train.cuda_graphs=false"
        )


def smoothed_targets(smoothing: float, classes: int, device: torch.device) -> torch.Tensor | None:
    """Row ``c``: the target distribution of label ``c`` under label smoothing (None without).

    Cross-entropy against a gathered row is label-smoothed cross-entropy, in 11 kernels forward
    and backward where ``F.cross_entropy(..., label_smoothing=)`` runs 22: on a GPU a step is
    its kernel launches.
    """
    if smoothing == 0:
        return None
    return torch.full((classes, classes), smoothing / classes, device=device) + torch.eye(classes, device=device) * (
        1 - smoothing
    )


def normalized_inputs(images: torch.Tensor, bf16: bool) -> torch.Tensor:
    """The training images normalized once, as a GPU step gathers them (188 MB of float32 for
    MNIST, half that in bf16): one gather per step instead of a gather, a conversion and the
    normalizing. In bf16 when the forward is, so that autocast has no input to cast either. The
    same bits as per step: normalizing and rounding are elementwise."""
    inputs = normalize_pixels(images)
    return inputs.to(torch.bfloat16) if bf16 else inputs


@dataclass
class StepParts:
    """What a step trains with: the data on the device, the model (and its DDP wrapper, or the
    model itself), optimizer, schedule, stop guard, this rank's images in a full step, the
    precision, what to call when backward returns (the end of the wait for the others'
    gradients), the number of ranks and the global batch they share (0: ``batch_size``, one rank)."""

    data: Splits
    model: nn.Module
    ddp_model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Any
    guard: StopGuard
    batch_size: int
    bf16: bool = False  # forward in bf16 autocast, as mnist_ddp.model.precision.choose_bf16 decided
    backward_returned: Callable[[], None] = lambda: None
    world_size: int = 1
    global_batch: int = 0


class TrainStep:
    """The step as the training loop calls it, eager or replayed from a CUDA graph."""

    def __init__(self, tc: TrainConfig, parts: StepParts, fault: fault_injection.Fault | None = None, seed: int = 0):
        """``parts``: what the step trains with, built once (:func:`mnist_ddp.training.build.build_parts`)."""
        data, model, ddp_model = parts.data, parts.model, parts.ddp_model
        self.tc, self.data, self.model, self.ddp_model = tc, data, model, ddp_model
        self.optimizer, self.schedule, self.guard = parts.optimizer, parts.schedule, parts.guard
        self.batch_size, self.fault, self.seed = parts.batch_size, fault, seed
        self.world_size, self.global_batch = parts.world_size, parts.global_batch or parts.batch_size
        self.backward_returned = parts.backward_returned  # the end of the wait for the other ranks' gradients
        self.forward = torch.compile(ddp_model) if tc.compile else ddp_model
        device_type = data.train_images.device.type
        self.autocast = torch.autocast(device_type, dtype=torch.bfloat16) if parts.bf16 else nullcontext()
        self.train_inputs = normalized_inputs(data.train_images, parts.bf16) if device_type == "cuda" else None
        self.soft_targets = smoothed_targets(
            tc.label_smoothing, model.layers[-1].out_features, data.train_labels.device
        )
        self.dropout = any(isinstance(m, BitsDropout) and m.p > 0 for m in model.modules())
        # The epoch's plan, one column per position of the shard: the sample, then its dropout key
        # and its shift (row, column) where the config has them (start_epoch).
        self.plan_rows = 1 + self.dropout + 2 * bool(tc.augment_shift)
        self.plan = torch.zeros(self.plan_rows, 0, dtype=torch.int64, device=data.train_labels.device)
        self.graph: GraphedStep | None = None

    def capture(self, step_losses: torch.Tensor, shard_len: int) -> None:
        """Capture the whole step as one CUDA graph (train.cuda_graphs=true); nothing trains meanwhile.

        A shard shorter than one batch has no full batch to replay: every step then runs eagerly.
        """
        if shard_len < self.batch_size:
            return
        self.graph = GraphedStep(self.step_body, self.batch_size, shard_len, step_losses, self.plan_rows)
        self.graph.capture(self.model, self.optimizer, [self.guard.first_bad, self.guard.step])

    def start_epoch(self, shard: torch.Tensor, epoch_start_step: int, first_position: int) -> None:
        """Plan the epoch: ``shard``, this rank's samples in order, from global step
        ``epoch_start_step`` on; every sample's dropout key and shift computed once, here, instead
        of in every step (bit for bit the same). The graph also gets the position it starts from
        (after a resume, mid-epoch)."""
        rows = [shard]
        if self.dropout:
            rows.append(epoch_keys(self.seed, shard, epoch_start_step, self.batch_size, DROPOUT_STREAM))
        if self.tc.augment_shift:
            keys = epoch_keys(self.seed, shard, epoch_start_step, self.batch_size, SHIFT_STREAM)
            rows += shift_offsets(keys, self.tc.augment_shift).unbind(1)
        self.plan = torch.stack(rows)
        if self.graph is not None:
            self.graph.start_epoch(self.plan, first_position)

    def batch(self, position: int) -> torch.Tensor:
        """The samples that the epoch's step at ``position`` (0-based) trains on this rank."""
        return self.plan[0, position * self.batch_size : (position + 1) * self.batch_size]

    def __call__(self, position: int, global_step: int, step_losses: torch.Tensor) -> None:
        """The epoch's step at ``position`` (0-based); its loss goes to ``step_losses[position]`` and
        the guard (the graph knows both from its own counters, set by :meth:`start_epoch`)."""
        columns = self.plan[:, position * self.batch_size : (position + 1) * self.batch_size]
        if self.graph is not None and columns.shape[1] == self.batch_size:
            fault_injection.inject(self.fault, global_step, None)  # a crash or kill -9; no NaN in a graph
            self.graph.replay()
        else:
            # With CUDA graphs the .grad tensors belong to the graph: zero them, keep them. Under
            # DDP, None is the cheaper choice too: DDP writes each new gradient into its bucket
            # scaled, one kernel each, where zeroed bucket views cost a zeroing, an add and a divide.
            self.optimizer.zero_grad(set_to_none=self.graph is None)
            loss = self.loss_and_grads(columns, global_step, position)
            with uncaptured_steps_expected() if self.graph is not None else nullcontext():
                self.optimizer.step()
            step_losses[position] = loss
            self.guard.record(loss)
        step_schedule(self.schedule)

    def step_body(self, columns: torch.Tensor) -> torch.Tensor:
        """What the graph holds, given the batch's columns of the plan: forward, backward (into
        gradients that were None at capture, so written, not added), optimizer step; the mean loss."""
        loss = self.batch_loss(columns)
        loss.backward()
        self.optimizer.step()
        loss = loss.detach()
        self.guard.record(loss)
        return loss

    def batch_loss(self, columns: torch.Tensor) -> torch.Tensor:
        """Mean loss over a batch, given its columns of the epoch's plan: the samples, each shifted
        (train.augment_shift > 0) and dropped out as its plan says."""
        batch = columns[0]
        if self.train_inputs is not None:
            images = self.train_inputs[batch]
        else:
            images = normalize_pixels(self.data.train_images[batch])
        if self.tc.augment_shift:
            images = shift_images(images, self.tc.augment_shift, columns[-2:].T)
        keys = columns[1] if self.dropout else None
        with self.autocast:
            logits = self.forward(images, keys).float()
        labels = self.data.train_labels[batch]
        if len(labels) == 0:  # no image of the epoch's short last step: zero gradients, for DDP all the same
            return logits.sum()
        if self.soft_targets is None:
            return F.cross_entropy(logits, labels)
        return F.cross_entropy(logits, self.soft_targets[labels])

    def loss_and_grads(self, columns: torch.Tensor, global_step: int, position: int) -> torch.Tensor:
        """Gradients of the global batch's mean loss into .grad, from this rank's images in
        accumulate_steps micro-batches (as even as they can be).

        DDP averages the ranks' gradients with equal weight, during the last micro-batch's
        backward only (no_sync). So each micro-batch's mean loss is scaled by its images times
        ranks over the global batch's images: the average over ranks is then the mean over the
        global batch, however unevenly it split (some ranks may hold one image fewer, or none of
        an epoch's short last step). Where the ranks' shares are equal the factor is 1.
        """
        accumulate, size = self.tc.accumulate_steps, columns.shape[1]
        global_images = step_images(position, self.global_batch, len(self.data.train_labels))
        parts = columns.tensor_split(min(accumulate, max(size, 1)), dim=1)
        total = torch.zeros((), device=columns.device)
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            with nullcontext() if last or self.ddp_model is self.model else self.ddp_model.no_sync():
                loss = self.batch_loss(part) * (part.shape[1] * self.world_size / global_images)
                loss = fault_injection.inject(self.fault, global_step, loss)
                loss.backward()  # DDP averages the gradients across ranks here (last micro-batch)
            self.backward_returned()
            total += loss.detach()
        return total
