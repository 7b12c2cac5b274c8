"""Finds and loads libdynamoe_ops.so, which registers torch.ops.dynamoe.*."""
import os
import pathlib

import torch

_LOADED = None


def _candidates():
    env = os.environ.get("DYNAMOE_OPS_LIBRARY")
    if env:
        yield pathlib.Path(env)
    root = pathlib.Path(__file__).resolve().parents[2]
    for preset in ("default", "cuda", "asan"):
        yield root / "build" / preset / "bindings" / "libdynamoe_ops.so"
    yield pathlib.Path(__file__).resolve().parent / "libdynamoe_ops.so"


def load():
    """Loads the op library once; returns its path."""
    global _LOADED
    if _LOADED is None:
        tried = []
        for path in _candidates():
            tried.append(str(path))
            if path.is_file():
                torch.ops.load_library(str(path))
                _LOADED = str(path)
                break
        else:
            raise ImportError(
                "dynamoe: libdynamoe_ops.so not found (looked in: " + ", ".join(tried) + "). "
                "Build it with ./scripts/test.sh, or cmake --preset default && cmake --build build/default, "
                "or set DYNAMOE_OPS_LIBRARY to its path.")
    return _LOADED


def ops():
    load()
    return torch.ops.dynamoe
