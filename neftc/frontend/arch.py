"""The module a state_dict is loaded into: a zoo model (sized from the state_dict's head) or a
``package.module:Class`` built with no arguments, with every key checked."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from neftc.errors import ModelFileError, did_you_mean
from neftc.frontend.model_file import first_line
from neftc.frontend.zoo import InputShape, build, zoo


def state_dict_of(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {str(k): v for k, v in obj.items()}
    raise ModelFileError(f"'{path}' holds a {type(obj).__name__}, not a state_dict of tensors "
                         "nor a checkpoint with a 'state_dict' entry")


def build_arch(arch: str, input_shape: InputShape, state: dict[str, torch.Tensor],
               path: Path) -> nn.Module:
    if ":" in arch:
        module = _import_class(arch)
    else:
        if arch not in zoo():
            raise ModelFileError(f"unknown architecture '{arch}'.{did_you_mean(arch, zoo())} "
                                 f"Built-in: {', '.join(zoo())}; or pass package.module:Class "
                                 "(your own nn.Module, built with no arguments)")
        entry = zoo().get(arch)
        head = state.get(entry.head_key) if entry is not None else None
        num_classes = int(head.shape[0]) if head is not None and head.dim() == 2 else 10
        table = state.get(entry.vocab_key) if entry is not None and entry.vocab_key else None
        vocab = int(table.shape[0]) if table is not None and table.dim() == 2 else None
        module = build(arch, input_shape, num_classes, vocab)
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        mismatches = [line.strip().rstrip(".") for line in str(exc).splitlines()
                      if "size mismatch" in line]
        raise ModelFileError(f"'{path}' does not match architecture '{arch}': "
                             + "; ".join(mismatches[:3])
                             + (f" and {len(mismatches) - 3} more" if len(mismatches) > 3 else "")
                             + ". Check --arch and --input-shape") from None
    problems = []
    if result.missing_keys:
        problems.append(f"missing {_some(result.missing_keys)}")
    if result.unexpected_keys:
        problems.append(f"unexpected {_some(result.unexpected_keys)}")
    if problems:
        raise ModelFileError(f"'{path}' does not match architecture '{arch}': "
                             + "; ".join(problems) + ". Check --arch and --input-shape")
    return module.eval()


def _some(keys: list[str]) -> str:
    shown = ", ".join(keys[:4])
    return shown + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")


def _import_class(spec: str) -> nn.Module:
    """Build ``module:Class`` (the user's own code, run at their explicit request), the module
    found on the import path or in the current directory."""
    module_name, _, class_name = spec.partition(":")
    try:
        cls = getattr(import_from_cwd(module_name), class_name)
    except ModuleNotFoundError as exc:
        raise ModelFileError(f"cannot import architecture '{spec}': {first_line(exc)}; neftc "
                             f"looked in the current directory ({os.getcwd()}) and on the import "
                             "path: run neftc where the module's file is, or add its folder to "
                             "PYTHONPATH") from None
    except (ImportError, AttributeError) as exc:
        raise ModelFileError(f"cannot import architecture '{spec}': {first_line(exc)}") from None
    try:
        module = cls()
    except Exception as exc:
        raise ModelFileError(f"architecture '{spec}' could not be built with no arguments: "
                             f"{first_line(exc)}") from None
    if not isinstance(module, nn.Module):
        raise ModelFileError(f"architecture '{spec}' is not an nn.Module")
    return module


def import_from_cwd(module_name: str) -> ModuleType:
    """Import ``module_name`` with the current directory first on the import path for this one
    import (``python -m`` would put it there; the ``neftc`` script does not); the path is left as
    it was."""
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)
