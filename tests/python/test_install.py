"""pip install and cmake --install, done as users do them, checked from outside the checkout.

The pip build reuses the build directory (build/default or build/torch2) that
was configured against the running torch, with that directory's own options
(pip must not switch them), so CI compiles nothing a second time: the
pip path (scikit-build-core configure, build, install, wheel, pip) still runs
whole. DYNAMOE_INSTALL_BUILD_DIR names another directory; a fresh one gets
pyproject.toml's settings (Release, no tests or benchmarks), as a user does.
"""
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import sysconfig

import pytest
import torch

from dynamoe import _ops

ROOT = pathlib.Path(__file__).resolve().parents[2]
PYDEPS = ROOT / "build" / "pydeps"  # scikit-build-core, pinned by scripts/deps.sh
# Options of a reused build directory that pyproject.toml would otherwise set.
KEPT = ("DYNAMOE_BUILD_TESTS", "DYNAMOE_BUILD_BENCH", "DYNAMOE_ENABLE_CUDA")
FORWARD = """
import json, torch, dynamoe
from dynamoe import _ops
torch.manual_seed(0)
moe = dynamoe.MoE(d_model=8, d_hidden=16, num_experts=4, top_k=2)
y = moe(torch.randn(5, 8))
y.sum().backward()
result = {"lib": _ops.load(), "package": dynamoe.__file__, "y": y.tolist(), "grad": moe.w1.grad.abs().sum().item()}
print(json.dumps(result))
"""


def _run(cmd, timeout=1800, **kwargs):
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kwargs)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout + done.stderr


def _cache(build_dir):
    text = (build_dir / "CMakeCache.txt").read_text(errors="replace")
    return dict(re.findall(r"^([A-Za-z_][A-Za-z0-9_]*):[A-Z]+=(.*)$", text, re.M))


def _build_dir():
    named = os.environ.get("DYNAMOE_INSTALL_BUILD_DIR")
    if named:
        return (ROOT / named).resolve()
    for preset in ("default", "torch2"):
        build = ROOT / "build" / preset
        if (build / "CMakeCache.txt").is_file() and _ops._other_torch(build) is None:
            return build
    pytest.fail(f"no build directory for torch {torch.__version__} (build/default or build/torch2); "
                "run ./scripts/build.sh or set DYNAMOE_INSTALL_BUILD_DIR")


def _clean_env(**extra):
    """The caller's environment without what points Python at the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DYNAMOE_OPS_LIBRARY")}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A fresh venv seeing this interpreter's packages (its torch, pip)."""
    if not (PYDEPS / "scikit_build_core").is_dir():
        pytest.fail(f"scikit-build-core is not in {PYDEPS}; run ./scripts/deps.sh")
    path = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", path])
    python = path / "bin" / "python"
    if sys.prefix != sys.base_prefix:  # we run in a venv: the new one sees its packages too
        site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip()
        pathlib.Path(site, "parent.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return path


def _pip_install(venv, *mode):
    build = _build_dir()
    settings = [f"build-dir={build}"]
    if (build / "CMakeCache.txt").is_file():
        cache = _cache(build)
        settings.append(f"cmake.build-type={cache.get('CMAKE_BUILD_TYPE', '')}")
        settings += [f"cmake.define.{name}={cache[name]}" for name in KEPT if name in cache]
    # -v: pip shows the backend's output, CMake's summary lines among it.
    return _run([venv / "bin" / "python", "-m", "pip", "install", "-v", "--no-build-isolation", "--no-deps",
                 "--disable-pip-version-check", *[f"--config-settings={s}" for s in settings], *mode, ROOT],
                env=_clean_env(PYTHONPATH=str(PYDEPS)))


def _site_packages(venv):
    return pathlib.Path(_run([venv / "bin" / "python", "-c",
                              "import sysconfig; print(sysconfig.get_paths()['platlib'])"]).strip())


def test_pip_install_runs_from_another_directory(venv, tmp_path):
    log = _pip_install(venv)
    # The build says which optional parts it built.
    assert re.search(r"dynamoe: CUDA kernels: ", log), log[-3000:]
    assert re.search(r"dynamoe: metrics: (ON|OFF)", log), log[-3000:]
    site = _site_packages(venv)
    assert (site / "dynamoe" / "libdynamoe_ops.so").is_file()

    got = json.loads(_run([venv / "bin" / "python", "-c", FORWARD], cwd=tmp_path, env=_clean_env()).splitlines()[-1])
    assert pathlib.Path(got["lib"]).resolve() == (site / "dynamoe" / "libdynamoe_ops.so").resolve()
    assert pathlib.Path(got["package"]).resolve().parent == (site / "dynamoe").resolve()
    assert got["grad"] > 0
    # The same layer from the checkout gives the same numbers.
    here = {}
    exec(FORWARD, here)
    assert torch.allclose(torch.tensor(got["y"]), torch.tensor(here["result"]["y"]), rtol=1e-5, atol=1e-6)

    # dynamoe-replay lands on the environment's PATH.
    replay = venv / "bin" / "dynamoe-replay"
    assert replay.is_file()
    usage = subprocess.run([replay], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert "usage: dynamoe-replay" in usage.stdout + usage.stderr


def test_pip_editable_install(venv, tmp_path):
    _pip_install(venv, "-e")
    site = _site_packages(venv)
    installed = site / "dynamoe" / "libdynamoe_ops.so"
    assert installed.is_file()
    probe = ("import json, dynamoe; from dynamoe import _ops; "
             "print(json.dumps({'package': dynamoe.__file__, 'candidates': [str(p) for p, _ in _ops._candidates()]}))")
    got = json.loads(_run([venv / "bin" / "python", "-c", probe], cwd=tmp_path, env=_clean_env()).splitlines()[-1])
    # Python files come from the checkout; the library pip installed is still found.
    assert pathlib.Path(got["package"]).resolve() == ROOT / "python" / "dynamoe" / "__init__.py"
    assert str(installed.resolve()) in got["candidates"]
    got = json.loads(_run([venv / "bin" / "python", "-c", FORWARD], cwd=tmp_path, env=_clean_env()).splitlines()[-1])
    assert got["grad"] > 0


def test_cmake_package_consumer(tmp_path):
    build = _build_dir()
    prefix = tmp_path / "prefix"
    _run(["cmake", "--install", build, "--prefix", prefix])
    assert (prefix / "include" / "bindings" / "moe_layer.h").is_file()
    assert (prefix / "bin" / "dynamoe-replay").is_file()
    assert not list(prefix.rglob("libdynamoe_ops.so")), "the Python ops library belongs to the pip package"
    consumer = tmp_path / "consumer"
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    _run(["cmake", "-S", ROOT / "tests" / "install", "-B", consumer, *generator,
          f"-DCMAKE_PREFIX_PATH={prefix}", "-DCMAKE_BUILD_TYPE=Release"], env=_clean_env())
    _run(["cmake", "--build", consumer, "-j", "2"])
    assert "consumer: ok" in _run([consumer / "consumer"], timeout=120, cwd=tmp_path)
