"""torch's SGD and AdamW, their own kernels and state, without importing TorchDynamo.

``torch.optim`` wraps an optimizer's ``step``, ``zero_grad``, ``add_param_group`` (which the
constructor calls) and ``state_dict`` methods so that ``torch.compile`` can trace or skip them,
and each wrapper imports ``torch._dynamo`` on its first call: 0.65 s on a fast CPU, as long as
``import torch`` itself, before the first step of a job that never compiles its optimizer. The
wrappers keep the method they wrap as ``__wrapped__`` (``functools.wraps``); these classes call
it directly, with gradients off as the step's wrapper would turn them off. A torch whose methods
are not wrapped this way just runs its own (and imports TorchDynamo).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch


def undecorated(method: Callable[..., Any]) -> Callable[..., Any]:
    """torch's own function under its wrappers (itself when it has none)."""
    return inspect.unwrap(method)


class WithoutDynamo:
    """Mixed in before a ``torch.optim.Optimizer`` subclass: the same methods, unwrapped."""

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        undecorated(torch.optim.Optimizer.add_param_group)(self, param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        undecorated(torch.optim.Optimizer.zero_grad)(self, set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return undecorated(torch.optim.Optimizer.state_dict)(self)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        undecorated(torch.optim.Optimizer.load_state_dict)(self, state_dict)

    def step(self, closure: Callable[[], float] | None = None) -> Any:
        with torch.no_grad():
            return undecorated(super().step)(self, closure)  # type: ignore[misc]


class EagerSGD(WithoutDynamo, torch.optim.SGD):
    """``torch.optim.SGD`` that never imports TorchDynamo."""


class EagerAdamW(WithoutDynamo, torch.optim.AdamW):
    """``torch.optim.AdamW`` that never imports TorchDynamo."""
