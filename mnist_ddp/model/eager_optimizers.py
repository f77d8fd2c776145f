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

# torch's own methods under their wrappers, found once (inspect.unwrap follows ``__wrapped__``;
# a method with no wrapper is itself), not on every step.
ADD_PARAM_GROUP = inspect.unwrap(torch.optim.Optimizer.add_param_group)
ZERO_GRAD = inspect.unwrap(torch.optim.Optimizer.zero_grad)
STATE_DICT = inspect.unwrap(torch.optim.Optimizer.state_dict)
LOAD_STATE_DICT = inspect.unwrap(torch.optim.Optimizer.load_state_dict)


class WithoutDynamo:
    """Mixed in before a ``torch.optim.Optimizer`` subclass: the same methods, unwrapped. A
    subclass names its own class's unwrapped step as ``plain_step``."""

    plain_step: Callable[..., Any]

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        ADD_PARAM_GROUP(self, param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        ZERO_GRAD(self, set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return STATE_DICT(self)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        LOAD_STATE_DICT(self, state_dict)

    def step(self, closure: Callable[[], float] | None = None) -> Any:
        with torch.no_grad():
            return self.plain_step(closure)


class EagerSGD(WithoutDynamo, torch.optim.SGD):
    """``torch.optim.SGD`` that never imports TorchDynamo."""

    plain_step = inspect.unwrap(torch.optim.SGD.step)


class EagerAdamW(WithoutDynamo, torch.optim.AdamW):
    """``torch.optim.AdamW`` that never imports TorchDynamo."""

    plain_step = inspect.unwrap(torch.optim.AdamW.step)
