"""torch.compile of the fused step's per-chunk functions, when asked for (`model.training.compile`).

The pair chunk's algebra is a few hundred elementwise operations on (chunk,)
rows, forward and backward; eager PyTorch runs each as its own pass over
memory. Inductor fuses them into a few loops: a training step at N = 1e4 took
0.275 s compiled against 0.316 s eager (benchmarks/results/model.md), after
about 30 s of compilation, once per process and dtype. It needs a C++
compiler on CPU; where compiling fails, the function runs uncompiled, with a
warning. Rollouts and the scripted step stay uncompiled.
"""
from __future__ import annotations

import logging
import weakref
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)

_compiled: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class CompiledOrPlain:
    """function(module, *args) through torch.compile; if its first call fails (no C++ compiler, an operation
    inductor cannot take), a warning and the plain function from then on. An error of the plain function
    itself is raised by the plain call that follows."""

    def __init__(self, function: Callable, name: str):
        self.function = function
        self.name = name
        self.compiled: Callable | None = torch.compile(function, dynamic=True)
        self.proven = False

    def __call__(self, *args):
        if self.compiled is None:
            return self.function(*args)
        if self.proven:
            return self.compiled(*args)
        try:
            out = self.compiled(*args)
        except Exception as error:  # noqa: BLE001 (inductor and its C++ compiler fail in many ways)
            first_line = (str(error).strip().splitlines() or [""])[0][:300]
            log.warning("torch.compile of %s failed (%s: %s); it runs uncompiled", self.name,
                        type(error).__name__, first_line)
            self.compiled = None
            return self.function(*args)
        self.proven = True
        return out


def enable(module: torch.nn.Module, functions: dict[str, Callable]) -> None:
    """Compile `functions` (name -> function(module, *args)) for this module instance.

    Inductor compiles in parallel worker processes, as many as the machine has cores by default: it is held
    to the threads this process was given (`torch.get_num_threads`, which `mpd.threads.limit_threads` sets).
    """
    import torch._inductor.config as inductor_config

    inductor_config.compile_threads = max(1, torch.get_num_threads())
    _compiled[module] = {name: CompiledOrPlain(f, f"{type(module).__name__}.{name}") for name, f in functions.items()}


def disable(module: torch.nn.Module) -> None:
    _compiled.pop(module, None)


def function(module: torch.nn.Module, name: str, plain: Callable) -> Callable:
    """The compiled function `name` of this module when enabled, else `plain`; both take (module, *args)."""
    table = _compiled.get(module)
    return plain if table is None else table[name]


def is_enabled(module: torch.nn.Module) -> bool:
    return module in _compiled


__all__ = ["CompiledOrPlain", "disable", "enable", "function", "is_enabled"]
