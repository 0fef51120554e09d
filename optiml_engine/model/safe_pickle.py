"""Read a `torch.save` file that holds more than tensors (a metaseq/fairseq checkpoint: an
omegaconf config, argparse args, meters) without running any of its code.

The pickle's globals are listed first, statically (`torch.serialization.
get_unsafe_globals_in_checkpoint`, no unpickling). Every global must belong to a known,
inert namespace (omegaconf, metaseq, fairseq, typing, numpy values, plain builtin types);
each such name is replaced by a `Stub` class registered under that name, so that torch's
`weights_only` unpickler (which never imports a module) builds stubs that only store what they
are given. Any other global (`posix.system`, `builtins.eval`, ...) refuses the whole file before
anything is unpickled. omegaconf and metaseq are never imported, and need not be installed.
"""

from __future__ import annotations

import pickle
from collections import OrderedDict
from pathlib import Path

import torch

from optiml_engine.errors import OptimlError

TRUSTED_FIX = "load only checkpoints from a source you trust"

# Namespaces whose objects a metaseq checkpoint carries besides tensors: its config (omegaconf
# containers and nodes, typing markers, metaseq enums and dataclasses), argparse args, and the
# training state's meters and numpy scalars. None of their values is needed but the config's.
STUB_MODULES = ("omegaconf", "metaseq", "fairseq", "fairscale", "typing", "numpy", "argparse")
# Types that omegaconf's metadata names (object_type, ref_type): the type object itself.
STUB_BUILTINS = {f"builtins.{t}" for t in ("dict", "list", "tuple", "set", "str", "int", "float",
                                           "bool", "bytes", "object", "NoneType", "type")}


class Stub:
    """Stands in for a global of a stubbed namespace: calling, constructing or restoring it
    only records its arguments and state."""

    stub_of = "?"

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        self.state = state

    def __repr__(self) -> str:
        return f"<stub {self.stub_of}>"


def _ordered_dict(*_args):
    """collections.defaultdict(factory): its items follow as SETITEMS, which torch's unpickler
    allows only on real dicts; the factory is dropped."""
    return OrderedDict()


def _stand_in(name: str):
    if name == "collections.defaultdict":
        return _ordered_dict
    if name in STUB_BUILTINS or name.split(".", 1)[0] in STUB_MODULES:
        return type(name.rsplit(".", 1)[-1], (Stub,), {"stub_of": name})
    return None


def stub_globals(path: Path) -> list:
    """[(stand-in, qualified name)] for every non-torch global of the pickle at `path`; refuses
    the file when one of them is not inert."""
    try:
        names = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except (ValueError, RuntimeError, OSError, EOFError, pickle.UnpicklingError) as err:
        why = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise OptimlError(str(path), f"not a readable torch.save file ({why})",
                          "re-download the checkpoint") from None
    stubs, refused = [], []
    for name in names:
        stand_in = _stand_in(name)
        if stand_in is None:
            refused.append(name)
        else:
            stubs.append((stand_in, name))
    if refused:
        more = f" and {len(refused) - 3} more" if len(refused) > 3 else ""
        raise OptimlError(str(path), f"refused: the pickle calls {', '.join(refused[:3])}{more}, "
                          "which a checkpoint never needs (nothing was run)", TRUSTED_FIX)
    return stubs


def load_untrusted(path: str | Path, mmap: bool = True):
    """The object saved at `path`, its tensors memory-mapped, foreign objects as stubs."""
    path = Path(path)
    stubs = stub_globals(path)
    try:
        with torch.serialization.safe_globals(stubs):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:  # e.g. an opcode that builds something else
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        raise OptimlError(str(path), f"refused: {lines[0] if lines else 'unsafe pickle'}",
                          TRUSTED_FIX) from None
    except (RuntimeError, OSError, EOFError, ValueError, TypeError) as err:
        text = str(err).strip()
        first = text.splitlines()[0].split(". ")[0] if text else type(err).__name__
        raise OptimlError(str(path), f"not a readable torch.save file ({first})",
                          "re-download the checkpoint") from None


def plain(obj, depth: int = 0):
    """Stubs of omegaconf containers and nodes (and argparse Namespaces) as plain dicts, lists
    and values: DictConfig/ListConfig keep their items in `_content`, value nodes in `_val`."""
    if depth > 64:
        return None
    if isinstance(obj, Stub):
        state = getattr(obj, "state", None)
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
            state = state[0]  # (dict state, slot state)
        if isinstance(state, dict):
            if "_content" in state:
                return plain(state["_content"], depth + 1)
            if "_val" in state:
                return plain(state["_val"], depth + 1)
            return {k: plain(v, depth + 1) for k, v in state.items()}
        return obj
    if isinstance(obj, dict):
        return {k: plain(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v, depth + 1) for v in obj]
    return obj
