"""Structured pruning for PyTorch sources: remove whole channels with torch-pruning.

Removing channels (not zeroing weights) makes the exported graph itself smaller, so every
runtime gets faster without sparse kernels. torch-pruning's dependency graph keeps the network
valid: channels joined by a residual add, a concat or a depthwise conv are removed together, and
the layers that produce the model's outputs keep all their output channels.

    result = prune(module, torch.rand(1, 3, 224, 224), ratio=0.3)          # 30 % per layer
    result = prune(module, example, macs_budget=0.6, finetune=load_finetune("ft.py:fn"))
    export_torch(result.module, spec, workdir, input_shape)                 # then as usual

Every layer keeps a multiple of `round_to` channels (8 by default, at least 8): the conv kernels
of onnxruntime (NCHWc blocks of 8/16), TensorRT and NEON pad odd widths, so unaligned pruning
cuts MACs but hardly latency (a 48/96/192-channel CNN pruned to 34/67/134 ran at 0.87x the
latency; pruned to 32/64/136, at 0.46x). The fraction of channels actually removed is recorded.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from optimize.errors import ToolchainError

if TYPE_CHECKING:
    import torch
    from torch import nn

MAX_RATIO = 0.9  # a MACs-budget search never removes more than this per layer
ROUND_TO = 8
_SEARCH_STEPS = 6  # bisection steps for a MACs budget: ratio known to within 0.9 / 64


class PruneError(ToolchainError):
    """Pruning cannot be done as asked (bad ratio or budget, broken fine-tune hook...)."""


@dataclass(frozen=True)
class PruneResult:
    """The pruned module and the numbers a report shows before and after."""

    module: nn.Module = field(repr=False, compare=False)
    ratio: float  # fraction of each layer's channels asked to be removed
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    channels_before: int  # output channels of the prunable layers (output layers excluded)
    channels_after: int
    round_to: int
    macs_budget: float | None = None
    kept_layers: tuple[str, ...] = ()  # layers that produce the outputs: never pruned
    finetune: str | None = None  # qualified name of the fine-tune hook that ran

    @property
    def macs_ratio(self) -> float:
        return self.macs_after / self.macs_before if self.macs_before else 1.0

    @property
    def params_ratio(self) -> float:
        return self.params_after / self.params_before if self.params_before else 1.0

    @property
    def channels_removed(self) -> float:
        """Fraction of channels actually removed (rounding makes it differ from `ratio`)."""
        return 1 - self.channels_after / self.channels_before if self.channels_before else 0.0

    def to_dict(self) -> dict:
        """The record kept in the manifest and the report (no module)."""
        return {
            "step": "prune",
            "tool": "torch_pruning.pruner.BasePruner",
            "importance": "group L2 magnitude",
            "ratio": round(self.ratio, 4),
            "macs_budget": self.macs_budget,
            "round_to": self.round_to,
            "channels_before": self.channels_before,
            "channels_after": self.channels_after,
            "channels_removed": round(self.channels_removed, 4),
            "params_before": self.params_before,
            "params_after": self.params_after,
            "params_ratio": round(self.params_ratio, 4),
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "macs_ratio": round(self.macs_ratio, 4),
            "kept_layers": list(self.kept_layers),
            "finetune": self.finetune,
        }


def check_args(ratio: float | None, macs_budget: float | None) -> None:
    """Refuse bad --prune / --prune-macs values before any heavy work."""
    if ratio is None and macs_budget is None:
        raise PruneError("pruning needs a ratio (--prune 0.3) or a MACs budget (--prune-macs 0.6)")
    if ratio is not None and macs_budget is not None:
        raise PruneError("give either a pruning ratio (--prune 0.3: remove 30 % of each layer's "
                         "channels) or a MACs budget (--prune-macs 0.6: keep at most 60 % of the "
                         "MACs), not both")
    for name, flag, value, example in (("ratio", "--prune", ratio, "0.3"),
                                       ("MACs budget", "--prune-macs", macs_budget, "0.6")):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PruneError(f"pruning {name} must be a number, got {value!r}")
        if not 0 < value < 1:
            raise PruneError(f"{flag} {value:g} is out of range: the pruning {name} is a fraction "
                             f"strictly between 0 and 1, e.g. {flag} {example}")


def prune(module: nn.Module, example_input: torch.Tensor, ratio: float | None = None,
          macs_budget: float | None = None,
          finetune: Callable[[nn.Module], nn.Module | None] | None = None,
          round_to: int = ROUND_TO) -> PruneResult:
    """Prune a copy of `module` (the argument is left as it was) and optionally fine-tune it.

    `ratio`: fraction of channels removed from every prunable layer. `macs_budget`: the largest
    fraction of the original MACs allowed; the smallest uniform ratio that meets it is found by
    bisection. `finetune(model) -> model` runs on the pruned model (it may train in place and
    return None).
    """
    check_args(ratio, macs_budget)
    if not isinstance(round_to, int) or round_to < 1:
        raise PruneError(f"round_to must be a positive integer, got {round_to!r}")
    model = copy.deepcopy(module).eval()
    outputs_before = _output_shapes(model, example_input, "the model")
    keep = _output_layers(model, example_input)
    macs_before, params_before = _count(model, example_input)
    channels_before = _channels(model, keep)
    if channels_before == 0:
        raise PruneError("nothing to prune: the model has no conv or linear layer besides the "
                         "ones producing its outputs, which are never pruned")
    if ratio is not None:
        _prune_once(model, example_input, ratio, round_to, keep)
    else:
        model, ratio = _meet_budget(model, example_input, macs_budget, macs_before, round_to)
    _check_outputs(model, example_input, outputs_before, "pruning")
    finetune_name = None
    if finetune is not None:
        finetune_name = _name_of(finetune)
        model = _run_finetune(finetune, model, finetune_name)
        _check_outputs(model, example_input, outputs_before, f"fine-tune hook {finetune_name}")
    macs_after, params_after = _count(model, example_input)
    keep = _output_layers(model, example_input)  # the budget search and the hook made new ones
    names = {m: n for n, m in model.named_modules()}
    kept_names = tuple(names.get(m, type(m).__name__) for m in keep)
    return PruneResult(
        module=model, ratio=float(ratio), params_before=params_before,
        params_after=params_after, macs_before=macs_before, macs_after=macs_after,
        channels_before=channels_before, channels_after=_channels(model, keep),
        round_to=round_to, macs_budget=macs_budget, kept_layers=kept_names,
        finetune=finetune_name,
    )


def _prune_once(model: nn.Module, example: torch.Tensor, ratio: float, round_to: int,
                keep: list[nn.Module]) -> None:
    """Remove `ratio` of every prunable layer's channels in place, lowest group L2 norm first."""
    import torch_pruning as tp

    try:
        pruner = tp.pruner.BasePruner(
            model, example, importance=tp.importance.MagnitudeImportance(p=2),
            pruning_ratio=ratio, pruning_ratio_dict=_layer_ratios(model, ratio, round_to, keep),
            ignored_layers=keep, global_pruning=False,
        )
        pruner.step()
    except Exception as exc:  # torch-pruning's own tracing bugs, on graphs it misreads
        raise PruneError(_cannot_trace(exc)) from None
    model.eval()


def _cannot_trace(exc: Exception) -> str:
    """Why torch-pruning failed, in a line: its errors come from deep inside its dependency
    graph (an IndexError on YOLO11n's split/concat graph) and mean nothing to a user."""
    first = (str(exc).strip().splitlines() or [""])[0][:160]
    return (f"torch-pruning cannot work out which channels of this model depend on each other "
            f"({type(exc).__name__}{': ' + first if first else ''}); export it without "
            "--prune/--prune-macs, or prune it with your own code and export the pruned model")


def _layer_ratios(model: nn.Module, ratio: float, round_to: int,
                  keep: list[nn.Module]) -> dict:
    """Per-layer ratios that leave the nearest multiple of `round_to` channels (at least one
    multiple; a layer of `round_to` channels or fewer is left alone).

    torch-pruning keeps int(C * (1 - r)) channels; aiming half a channel above the wanted count
    makes that int() land on it despite float rounding.
    """
    from torch import nn

    ratios = {}
    for m in model.modules():
        if m in keep or not isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            continue
        c = m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else m.out_features
        target = max(round_to, int(c * (1 - ratio) / round_to + 0.5) * round_to)
        ratios[m] = 0.0 if target >= c else (c - target - 0.5) / c
    return ratios


def _meet_budget(model: nn.Module, example: torch.Tensor, budget: float, macs_before: int,
                 round_to: int) -> tuple[nn.Module, float]:
    """The smallest uniform ratio whose pruned copy has at most `budget` of the MACs."""
    limit = budget * macs_before

    def trial(r: float) -> tuple[nn.Module, int]:
        candidate = copy.deepcopy(model)
        _prune_once(candidate, example, r, round_to, _output_layers(candidate, example))
        return candidate, _count(candidate, example)[0]

    best, macs = trial(MAX_RATIO)
    if macs > limit:
        raise PruneError(
            f"a MACs budget of {budget:g} cannot be met: removing {MAX_RATIO:.0%} of every "
            f"layer's channels still leaves {macs / macs_before:.1%} of the MACs (input, output "
            "and small layers are kept); raise --prune-macs"
        )
    lo, hi = 0.0, MAX_RATIO
    for _ in range(_SEARCH_STEPS):
        mid = (lo + hi) / 2
        candidate, macs = trial(mid)
        if macs <= limit:
            best, hi = candidate, mid
        else:
            lo = mid
    return best, hi


def _output_layers(model: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """The conv/linear layers nearest to each model output in the autograd graph.

    Walking back from the outputs finds them through flatten, softmax, concat or sigmoid, so a
    classifier behind a softmax or a detector's several heads all keep their output channels.
    """
    import torch
    from torch import nn

    produced: dict = {}

    def hook(mod, _inputs, out):
        if isinstance(out, torch.Tensor) and out.grad_fn is not None:
            produced[out.grad_fn] = mod

    layers = [m for m in model.modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        with torch.enable_grad():
            out = model(example)
    finally:
        for h in handles:
            h.remove()
    found: list[nn.Module] = []
    stack = [t.grad_fn for t in _tensors(out) if t.grad_fn is not None]
    seen = set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if fn in produced:
            if produced[fn] not in found:
                found.append(produced[fn])
            continue
        stack.extend(next_fn for next_fn, _ in fn.next_functions)
    return found


def _tensors(out) -> list:
    import torch

    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for item in out for t in _tensors(item)]
    return []


def _output_shapes(model: nn.Module, example: torch.Tensor, what: str) -> list[tuple]:
    import torch

    try:
        with torch.no_grad():
            out = model(example)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise PruneError(f"{what} does not run on an input of shape "
                         f"{tuple(example.shape)}: {first}") from None
    return [tuple(t.shape) for t in _tensors(out)]


def _check_outputs(model: nn.Module, example: torch.Tensor, expected: list[tuple],
                   after: str) -> None:
    got = _output_shapes(model, example, f"the model after {after}")
    if got != expected:
        raise PruneError(f"the model's output shapes changed after {after} ({expected} -> {got}); "
                         "this model cannot be pruned safely")


def _count(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """(MACs, parameters) of one forward pass."""
    import torch
    import torch_pruning as tp

    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(model, example)
    return int(macs), int(params)


def _channels(model: nn.Module, keep: list[nn.Module]) -> int:
    from torch import nn

    total = 0
    for m in model.modules():
        if m in keep:
            continue
        if isinstance(m, nn.modules.conv._ConvNd):
            total += m.out_channels
        elif isinstance(m, nn.Linear):
            total += m.out_features
    return total


def _name_of(fn: Callable) -> str:
    module = getattr(fn, "__module__", None) or ""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    return name if module.startswith("_edge_opt_finetune_") or not module else f"{module}.{name}"


def _run_finetune(fn: Callable, model: nn.Module, name: str) -> nn.Module:
    from torch import nn

    try:
        returned = fn(model)
    except Exception as exc:
        raise PruneError(f"fine-tune hook {name} raised {type(exc).__name__}: {exc}") from None
    if returned is None:
        returned = model  # trained in place
    if not isinstance(returned, nn.Module):
        raise PruneError(f"fine-tune hook {name} returned {type(returned).__name__}; it must "
                         "return the model it was given (or None after training it in place)")
    return returned.eval()


def load_finetune(spec: str) -> Callable[[nn.Module], nn.Module | None]:
    """Resolve `--finetune file.py:fn` or `package.module:fn` to the function.

    The function takes the pruned nn.Module, trains it for a few steps and returns it.
    """
    from optimize.callables import load_callable

    return load_callable(spec, "fine-tune hook (--finetune)", PruneError,
                         "fn(model) -> model, training the pruned model for a few steps")

