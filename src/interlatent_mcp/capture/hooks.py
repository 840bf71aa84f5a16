"""Hook points: naming, discovery and capture of a module's inputs and outputs.

A hook point is `<dotted module path>:pre` (the module's first input) or `:post` (its output). A
bare module path means `:post`. Capture wraps the `forward` of each hooked module once, whatever
the number of points on it, and keeps a reference to each step's tensors; at flush time the
references are concatenated into a preallocated buffer. On a policy as small as the CartPole demo
this costs a few microseconds per step, where `register_forward_hook` (which moves every call of
the module onto torch's slow hook path) plus a copy per call costs several times more
(bench/capture.py measures it). A module whose instance already has its own `forward` falls
back to a forward hook. TorchScript modules accept neither and are rejected with a clear error. If the model has in-place modules (for example `ReLU(inplace=True)`), a later
module could overwrite a referenced tensor, so each captured tensor is cloned instead.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn as nn

from interlatent_mcp.errors import InvalidArgumentError, UnknownLayerError, closest_names

logger = logging.getLogger(__name__)

Point = Literal["pre", "post"]


@dataclass(frozen=True)
class HookPoint:
    """A parsed layer name."""

    module_path: str
    point: Point

    @property
    def name(self) -> str:
        return f"{self.module_path}:{self.point}"


def parse_layer_name(name: str) -> HookPoint:
    """Parse 'a.b:pre' / 'a.b:post' / 'a.b' (meaning :post)."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidArgumentError(f"layer name must be a non-empty string, got {name!r}")
    path, _, point = name.strip().partition(":")
    point = point or "post"
    if point not in ("pre", "post"):
        raise InvalidArgumentError(
            f"layer {name!r} ends in ':{point}'; use ':pre' for a module's input or ':post' for "
            f"its output"
        )
    return HookPoint(path, point)  # type: ignore[arg-type]


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return None


def list_hook_points(module: nn.Module, sample_input: torch.Tensor, forward: Any = None) -> dict[str, int]:
    """Return every hookable point of `module` with its width (features per sample).

    Runs one forward pass on `sample_input` (a batch of one) with a hook on every submodule;
    points whose value is not a tensor are left out. `forward` replaces `module(sample_input)`
    when the policy's forward needs extra arguments.
    """
    widths: dict[str, int] = {}
    handles = []

    def make_hook(path: str):
        def hook(_module: nn.Module, inputs: tuple, output: Any) -> None:
            for point, value in (("pre", _first_tensor(inputs)), ("post", _first_tensor(output))):
                if value is not None and f"{path}:{point}" not in widths and value.dim() >= 1:
                    batch = max(int(value.shape[0]), 1)
                    widths[f"{path}:{point}"] = int(value.numel() // batch)
        return hook

    try:
        for path, sub in module.named_modules():
            if isinstance(sub, torch.jit.ScriptModule):
                raise InvalidArgumentError(
                    f"module {path or 'root'!r} is TorchScript, which accepts no forward hooks; "
                    f"record the eager (non-scripted) module instead"
                )
            if path:
                handles.append(sub.register_forward_hook(make_hook(path)))
        with torch.inference_mode():
            (forward or module)(sample_input)
    finally:
        for handle in handles:
            handle.remove()
    order = {path: i for i, (path, _) in enumerate(module.named_modules())}
    return dict(sorted(widths.items(), key=lambda item: (order[item[0].rpartition(":")[0]],
                                                        item[0].endswith(":post"))))


def resolve_layers(names: Sequence[str], known: dict[str, int]) -> list[str]:
    """Normalise layer names and check them against `known`; an unknown one lists valid names."""
    if not known:
        raise InvalidArgumentError(
            "the policy module has no submodules to hook; wrap it, e.g. in torch.nn.Sequential, "
            "so that its layers have names"
        )
    if not names:
        raise InvalidArgumentError("at least one layer is needed; known layers: "
                                   + ", ".join(known))
    resolved = []
    for name in names:
        full = parse_layer_name(name).name
        if full not in known:
            hint = closest_names(full, list(known))
            raise UnknownLayerError(
                f"layer {name!r} not found"
                + (f" (did you mean {hint[0]!r}?)" if hint else "")
                + f"; known layers: {', '.join(known)}"
            )
        if full not in resolved:
            resolved.append(full)
    return resolved


def _has_inplace_modules(module: nn.Module) -> bool:
    return any(getattr(sub, "inplace", False) is True for sub in module.modules())


class ActivationRecorder:
    """Collects each hook point's per-step tensors and turns them into (n, width) numpy blocks."""

    def __init__(self, points: Sequence[HookPoint], widths: dict[str, int], chunk_steps: int,
                 clone: bool) -> None:
        self.points = list(points)
        self.widths = widths
        self.chunk_steps = chunk_steps
        self.clone = clone
        self.pending: dict[str, list[torch.Tensor]] = {p.name: [] for p in points}
        # Preallocated (chunk_steps, *feature shape) buffers, made on the first `peek` once the
        # feature shape is known. The returned numpy arrays are (n, width) views of them.
        self._buffers: dict[str, torch.Tensor] = {}

    def make_hook(self, module_path: str, points: Sequence[Point]):
        """Return a forward hook `(module, inputs, output)` that records this module's points."""
        pre = self.pending[f"{module_path}:pre"] if "pre" in points else None
        post = self.pending[f"{module_path}:post"] if "post" in points else None
        clone = self.clone

        def hook(_module: nn.Module, inputs: tuple, output: Any) -> None:
            if pre is not None:
                value = inputs[0]
                pre.append(value.clone() if clone else value)
            if post is not None:
                value = output if isinstance(output, torch.Tensor) else output[0]
                post.append(value.clone() if clone else value)
        return hook

    def make_pre_hook(self, module_path: str):
        """Return a forward pre-hook that clones the module's input before the module runs."""
        pending = self.pending[f"{module_path}:pre"]

        def pre_hook(_module: nn.Module, inputs: tuple) -> None:
            pending.append(inputs[0].clone())
        return pre_hook

    def make_forward(self, module: nn.Module, module_path: str, points: Sequence[Point]):
        """Return a replacement for `module.forward` that records this module's points."""
        original = module.forward
        if self.clone:
            pre_points = self.pending[f"{module_path}:pre"] if "pre" in points else None
            post_points = self.pending[f"{module_path}:post"] if "post" in points else None

            def forward_cloning(x: Any, *args: Any, **kwargs: Any) -> Any:
                # The input is cloned before the call, because an in-place module overwrites it.
                if pre_points is not None:
                    pre_points.append(x.clone())
                output = original(x, *args, **kwargs)
                if post_points is not None:
                    value = output if isinstance(output, torch.Tensor) else output[0]
                    post_points.append(value.clone())
                return output
            return forward_cloning
        pre = self.pending[f"{module_path}:pre"].append if "pre" in points else None
        post = self.pending[f"{module_path}:post"].append if "post" in points else None
        if pre is not None and post is not None:
            def forward_both(x: Any, *args: Any, **kwargs: Any) -> Any:
                pre(x)
                output = original(x, *args, **kwargs)
                post(output if isinstance(output, torch.Tensor) else output[0])
                return output
            return forward_both
        if pre is not None:
            def forward_pre(x: Any, *args: Any, **kwargs: Any) -> Any:
                pre(x)
                return original(x, *args, **kwargs)
            return forward_pre

        def forward_post(*args: Any, **kwargs: Any) -> Any:
            output = original(*args, **kwargs)
            post(output if isinstance(output, torch.Tensor) else output[0])
            return output
        return forward_post

    def take(self, n_steps: int) -> dict[str, np.ndarray]:
        """Remove the first `n_steps` steps of every point and return them as float32 arrays.

        The arrays are views of the recorder's buffers: write them out before the next `take`.
        """
        blocks = self.peek(n_steps)
        self.drop(n_steps)
        return blocks

    def drop(self, n_steps: int) -> None:
        """Forget the first `n_steps` steps of every point, once they are written."""
        for pending in self.pending.values():
            del pending[:n_steps]

    def peek(self, n_steps: int) -> dict[str, np.ndarray]:
        """Return the first `n_steps` steps of every point as float32 arrays, keeping them.

        A write that fails (Ctrl-C during a transaction, say) can then be retried with the same
        steps. The arrays are views of the recorder's buffers, valid until the next call.
        """
        blocks = {}
        for name, pending in self.pending.items():
            if len(pending) < n_steps:
                raise InvalidArgumentError(
                    f"hook point {name} fired {len(pending)} times for {n_steps} steps; the "
                    f"policy's forward pass must run the hooked module once per step"
                )
            taken = pending[:n_steps]
            if not taken:
                blocks[name] = np.zeros((0, self.widths[name]), dtype=np.float32)
                continue
            # Each step's tensor is (1, *features), so concatenating on dim 0 gives (n, *features)
            # without a reshape per step. Inference mode on both sides, because buffers made
            # inside it cannot be written outside it.
            with torch.inference_mode():
                buffer = self._buffer(name, taken[0], n_steps)
                torch.cat(taken, dim=0, out=buffer[:n_steps])
            blocks[name] = buffer[:n_steps].numpy().reshape(n_steps, -1)
        return blocks

    def _buffer(self, name: str, example: torch.Tensor, n_steps: int) -> torch.Tensor:
        if example.dim() == 0 or example.shape[0] != 1:
            raise InvalidArgumentError(
                f"hook point {name} produced a tensor of shape {tuple(example.shape)}; recording "
                f"needs a batch of one observation per step"
            )
        features = tuple(example.shape[1:])
        buffer = self._buffers.get(name)
        if buffer is None or buffer.shape[1:] != features or buffer.shape[0] < n_steps:
            buffer = torch.empty((max(n_steps, self.chunk_steps), *features), dtype=torch.float32)
            self._buffers[name] = buffer
        return buffer

    def discard(self) -> None:
        for pending in self.pending.values():
            pending.clear()


@contextmanager
def capture(module: nn.Module, layer_names: Sequence[str], widths: dict[str, int],
            chunk_steps: int) -> Iterator[ActivationRecorder]:
    """Install one forward hook per module for `layer_names`; remove them all on exit."""
    points = [parse_layer_name(name) for name in layer_names]
    by_module: dict[str, list[Point]] = {}
    for point in points:
        by_module.setdefault(point.module_path, []).append(point.point)
    modules = dict(module.named_modules())
    recorder = ActivationRecorder(points, widths, chunk_steps, clone=_has_inplace_modules(module))
    handles = []
    wrapped: list[nn.Module] = []
    try:
        for path, module_points in by_module.items():
            target = modules[path]
            if "forward" in vars(target):
                if recorder.clone and "pre" in module_points:
                    # A forward hook runs after an in-place module has overwritten its input.
                    handles.append(target.register_forward_pre_hook(recorder.make_pre_hook(path)))
                    module_points = [point for point in module_points if point != "pre"]
                handles.append(target.register_forward_hook(recorder.make_hook(path, module_points)))
            else:
                # An instance attribute shadows the class's forward until it is deleted.
                target.forward = recorder.make_forward(target, path, module_points)
                wrapped.append(target)
        yield recorder
    finally:
        for handle in handles:
            handle.remove()
        for target in wrapped:
            del target.forward
