"""Finds and loads libdynamoe_ops.so, which registers torch.ops.dynamoe.*."""
import os
import pathlib
import re

import torch
import torch.utils

_LOADED = None
_LIBRARY = "libdynamoe_ops.so"
_HERE = pathlib.Path(__file__).resolve().parent


def _other_torch(build_dir):
    """Names the LibTorch `build_dir` was configured with when it is not the
    running torch's (loading it would mix two torches in one process), else None."""
    try:
        cache = (build_dir / "CMakeCache.txt").read_text(errors="replace")
    except OSError:
        return None
    found = re.search(r"^Torch_DIR:PATH=(.*)$", cache, re.M)
    if not found:
        return None
    built = os.path.realpath(found.group(1))
    ours = os.path.realpath(os.path.join(torch.utils.cmake_prefix_path, "Torch"))
    if os.path.isdir(ours):  # a pip torch ships its LibTorch's CMake files
        return None if built == ours else built
    # Debian's python3-torch has none; it pairs with the system LibTorch, not with a pip torch's copy.
    return built if "/torch/share/cmake/" in built + "/" else None


def _candidates():
    """(path, why it is skipped or None), in the order they are tried."""
    env = os.environ.get("DYNAMOE_OPS_LIBRARY")
    if env:
        yield pathlib.Path(env), None
    # A source checkout's builds first, for development.
    root = _HERE.parents[1]
    for preset in ("default", "torch2", "cuda", "asan"):
        build = root / "build" / preset
        other = _other_torch(build)
        yield build / "bindings" / _LIBRARY, other and f"built against another torch ({other})"
    # Installed by pip: next to this file; an editable install keeps it in
    # site-packages, which the package's __path__ also names.
    import dynamoe
    seen = set()
    for folder in [_HERE, *map(pathlib.Path, dynamoe.__path__)]:
        if folder.resolve() not in seen:
            seen.add(folder.resolve())
            yield folder.resolve() / _LIBRARY, None


def load():
    """Loads the op library once; returns its path."""
    global _LOADED
    if _LOADED is None:
        tried = []
        for path, skip in _candidates():
            if path.is_file() and not skip:
                torch.ops.load_library(str(path))
                _LOADED = str(path)
                break
            tried.append(f"{path}{' (' + skip + ')' if skip and path.is_file() else ''}")
        else:
            raise ImportError(
                "dynamoe: libdynamoe_ops.so not found (looked in: " + ", ".join(tried) + "). "
                "Build it with ./scripts/test.sh, or cmake --preset default && cmake --build build/default, "
                "or pip install --no-build-isolation . (into this torch's environment), "
                "or set DYNAMOE_OPS_LIBRARY to its path.")
    return _LOADED


def ops():
    load()
    return torch.ops.dynamoe
