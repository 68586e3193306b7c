"""Decide how scripts/build_horovod.sh builds Horovod: CPU operations only (Gloo) or GPU operations too (NCCL).

Run by the build script with the interpreter Horovod is built for (it must see that interpreter's torch):

    PYTHON scripts/horovod_build_env.py WORK_DIR

and prints NAME=VALUE lines on stdout: BIGTRAIN_HOROVOD_VARIANT (the cache folder, e.g. ``cpu-torch2.13.0+cpu`` or
``cuda13.0-sm90-torch2.14.1+cu130``), BIGTRAIN_HOROVOD_PYTAG (``cp311``), BIGTRAIN_HOROVOD_TORCH_CXX_STANDARD
(17, or 20 from torch 2.14 on), BIGTRAIN_HOROVOD_NEEDS_CFFI (1 when cffi is missing), then the environment of the
build itself. Notes go to stderr. A missing piece is one line ``error: ...`` on stderr and exit status 2.
WORK_DIR receives the NCCL folder of a GPU build (the build script moves it next to the cached wheel).

``BIGTRAIN_HOROVOD_GPU`` chooses: ``auto`` (default: GPU when torch is a CUDA build, nvcc is found and there are
GPUs to build for, visible or named in ``HOROVOD_BUILD_CUDA_CC_LIST``), ``1``
(GPU or fail saying why), ``0`` (CPU even on a GPU host).
"""
from __future__ import annotations

import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

# Exactly the CPU build bigtrain has always made (docs/stack.md); the GPU build adds to it.
CPU_BUILD_ENV = {
    "HOROVOD_WITH_PYTORCH": "1", "HOROVOD_WITH_GLOO": "1", "HOROVOD_WITHOUT_MPI": "1",
    "HOROVOD_WITHOUT_TENSORFLOW": "1", "HOROVOD_WITHOUT_MXNET": "1", "HOROVOD_CPU_OPERATIONS": "GLOO",
}
# Newer GCC no longer includes these transitively, and Horovod 0.28.1 (group_table.h, common.h, ...) relies on it.
STANDARD_HEADERS = ("cstdint", "string", "stdexcept", "limits", "memory", "functional", "algorithm")
SYSTEM_NCCL_HEADER = Path("/usr/include/nccl.h")
DEFAULT_NVCC = Path("/usr/local/cuda/bin/nvcc")
CC_LIST_VAR = "HOROVOD_BUILD_CUDA_CC_LIST"


class BuildEnvError(Exception):
    """A piece the requested Horovod build needs is missing; the message says which and how to provide it."""


@dataclass
class TorchInfo:
    version: str
    cuda: str | None                 # torch.version.cuda: None for a CPU build
    capabilities: list[tuple[int, int]] = field(default_factory=list)  # one per visible GPU
    nccl_dir: Path | None = None     # the nvidia.nccl package that CUDA wheels of torch depend on
    cxx_standard: str = "17"         # what torch's headers need


def probe_torch() -> TorchInfo:
    try:
        with warnings.catch_warnings():  # e.g. "Failed to initialize NumPy" where numpy is not installed yet
            warnings.simplefilter("ignore")
            import torch
    except ImportError as exc:
        raise BuildEnvError(f"{sys.executable} cannot import torch ({exc}): install torch first") from exc
    capabilities = []
    if torch.version.cuda:
        try:
            capabilities = [torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())]
        except RuntimeError as exc:  # a driver that does not work: no GPU to read architectures from
            print(f"note: torch cannot query the GPUs ({exc})", file=sys.stderr)
    return TorchInfo(version=torch.__version__, cuda=torch.version.cuda, capabilities=capabilities,
                     nccl_dir=_package_dir("nvidia.nccl"),
                     cxx_standard=torch_cxx_standard(Path(torch.__file__).parent / "include"))


def torch_cxx_standard(torch_include: Path) -> str:
    """The C++ standard torch's headers demand (their all.h says so in an #error): 17 up to torch 2.13, 20 from 2.14
    on (std::strong_ordering in c10/util/intrusive_ptr.h). Horovod's torch extension must be compiled with it."""
    all_h = torch_include / "torch" / "csrc" / "api" / "include" / "torch" / "all.h"
    try:
        found = re.search(r"C\+\+(\d+) or later compatible compiler is required", all_h.read_text(errors="replace"))
    except OSError:
        found = None
    return found.group(1) if found else "17"


def _package_dir(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except ImportError:  # the parent package `nvidia` is absent
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def find_nvcc(environ: Mapping[str, str]) -> Path | None:
    """nvcc on PATH, else in $CUDA_HOME/bin, else in /usr/local/cuda/bin (DEFAULT_NVCC)."""
    on_path = shutil.which("nvcc", path=environ.get("PATH", ""))
    candidates = [on_path] if on_path else []
    if environ.get("CUDA_HOME"):
        candidates.append(os.path.join(environ["CUDA_HOME"], "bin", "nvcc"))
    candidates.append(str(DEFAULT_NVCC))
    for candidate in candidates:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def cuda_home_of(nvcc: Path) -> Path:
    """The toolkit folder above nvcc's bin/. nvcc can be a wrapper script (here /usr/local/bin/nvcc execs the real
    one), so ask nvcc where it runs from (its dry run prints _HERE_) before trusting the path it was found at."""
    bin_dir = nvcc.resolve().parent
    try:
        dry_run = subprocess.run([str(nvcc), "--dryrun", "-x", "cu", "-E", os.devnull],
                                 capture_output=True, text=True, timeout=60)
        here = re.search(r"^#\$ _HERE_=(.+)$", dry_run.stdout + dry_run.stderr, re.MULTILINE)
        if here:
            bin_dir = Path(here.group(1).strip())
    except (OSError, subprocess.SubprocessError):
        pass
    home = bin_dir.parent
    if not (home / "include" / "cuda_runtime.h").is_file():
        raise BuildEnvError(f"nvcc {nvcc} has no CUDA toolkit around it ({home}/include/cuda_runtime.h missing): "
                            "install the full CUDA toolkit or set CUDA_HOME to it")
    return home


def gpu_mode(environ: Mapping[str, str]) -> str:
    mode = environ.get("BIGTRAIN_HOROVOD_GPU", "auto").strip().lower() or "auto"
    if mode not in ("auto", "0", "1"):
        raise BuildEnvError(f"BIGTRAIN_HOROVOD_GPU={mode!r}: use auto, 0 (CPU build) or 1 (GPU build)")
    return mode


def wants_gpu_build(mode: str, torch_info: TorchInfo, nvcc: Path | None, environ: Mapping[str, str]) -> bool:
    missing = []
    if torch_info.cuda is None:
        missing.append(f"torch {torch_info.version} is a CPU build (torch.version.cuda is None): "
                       "install a CUDA build of torch")
    if nvcc is None:
        missing.append("nvcc was not found on PATH, in $CUDA_HOME/bin or in /usr/local/cuda/bin: "
                       "install the CUDA toolkit or set CUDA_HOME")
    if mode == "auto" and not missing and not torch_info.capabilities and not environ.get(CC_LIST_VAR, "").strip():
        # A CUDA torch and nvcc on a host without a GPU (PyPI's torch for Python >= 3.12 is a CUDA build): no
        # architectures to build for. BIGTRAIN_HOROVOD_GPU=1 makes this the error cuda_cc_list raises.
        missing.append(f"no GPU is visible to torch and {CC_LIST_VAR} is not set: it names the architectures")
    if mode == "0" or (mode == "auto" and missing):
        if mode == "auto" and torch_info.cuda is not None:
            print(f"note: torch {torch_info.version} is a CUDA build but {missing[0].split(':')[0]}; "
                  "building Horovod for CPU only", file=sys.stderr)
        return False
    if missing:
        raise BuildEnvError("BIGTRAIN_HOROVOD_GPU=1 but " + "; and ".join(missing))
    return True


def cuda_cc_list(environ: Mapping[str, str], capabilities: list[tuple[int, int]]) -> str:
    """The user's HOROVOD_BUILD_CUDA_CC_LIST, else the architectures of the GPUs present (e.g. "90" for an H200).
    Horovod's default is every architecture nvcc knows, which CUDA 13 no longer builds."""
    given = environ.get(CC_LIST_VAR, "").strip()
    if given:
        if not re.fullmatch(r"\d+(,\d+)*", given):
            raise BuildEnvError(f"{CC_LIST_VAR}={given!r}: expected compute capabilities like 90 or 80,90")
        return given
    if not capabilities:
        raise BuildEnvError(f"no GPU is visible to torch to choose the CUDA architectures: set {CC_LIST_VAR} "
                            "(e.g. 90 for H100/H200, 80 for A100)")
    return ",".join(str(cc) for cc in sorted({major * 10 + minor for major, minor in capabilities}))


def nccl_home(environ: Mapping[str, str], nccl_dir: Path | None, work_dir: Path,
              system_header: Path = SYSTEM_NCCL_HEADER) -> dict[str, str]:
    """The NCCL Horovod compiles against, as build environment: the user's NCCL home, else the NCCL of torch's
    nvidia-nccl wheel (the library torch itself loads, so one NCCL per process), else a system NCCL."""
    for var in ("HOROVOD_NCCL_HOME", "NCCL_HOME"):
        if environ.get(var):
            home = Path(environ[var])
            if not (home / "include" / "nccl.h").is_file():
                raise BuildEnvError(f"{var}={home} has no include/nccl.h: point it at an NCCL install")
            if not any(glob.glob(str(home / pattern)) for pattern in ("lib*/libnccl*", "lib/*/libnccl*")):
                raise BuildEnvError(f"{var}={home} has no lib/libnccl.so: point it at an NCCL install")
            return {"HOROVOD_NCCL_HOME": str(home)}
    if nccl_dir is not None and (nccl_dir / "include" / "nccl.h").is_file() \
            and (nccl_dir / "lib" / "libnccl.so.2").is_file():
        return {"HOROVOD_NCCL_HOME": str(link_wheel_nccl(nccl_dir, work_dir / "nccl")),
                # The wheel has no static library; never let CMake pick a system libnccl_static.a beside its header.
                "HOROVOD_NCCL_LINK": "SHARED"}
    if system_header.is_file():
        return {"HOROVOD_NCCL_HOME": str(system_header.parent.parent)}
    where = f"{nccl_dir} lacks include/nccl.h or lib/libnccl.so.2" if nccl_dir else "no nvidia.nccl package"
    raise BuildEnvError(f"no NCCL found ({where}; no {system_header}): pip install the nvidia-nccl wheel "
                        "matching torch's CUDA (e.g. nvidia-nccl-cu13) or set HOROVOD_NCCL_HOME to a folder "
                        "with include/nccl.h and lib/libnccl.so")


def link_wheel_nccl(nccl_dir: Path, home: Path) -> Path:
    """A folder laid out as FindNCCL.cmake expects (include/, lib/libnccl.so), made of symlinks into the wheel,
    which ships only lib/libnccl.so.2 (no unversioned name for the linker)."""
    (home / "lib").mkdir(parents=True, exist_ok=True)
    links = {home / "include": nccl_dir / "include",  # the whole folder: nccl.h includes nccl_device.h
             home / "lib" / "libnccl.so": nccl_dir / "lib" / "libnccl.so.2",
             home / "lib" / "libnccl.so.2": nccl_dir / "lib" / "libnccl.so.2"}
    for link, target in links.items():
        if link.is_symlink():
            link.unlink()
        link.symlink_to(target)
    return home


def gpu_build_env(environ: Mapping[str, str], torch_info: TorchInfo, nvcc: Path, work_dir: Path) -> dict[str, str]:
    cuda_home = cuda_home_of(nvcc)
    cxxflags = " ".join(f"-include {header}" for header in STANDARD_HEADERS)
    env = {
        "HOROVOD_GPU_OPERATIONS": "NCCL",
        "HOROVOD_CUDA_HOME": str(cuda_home),
        CC_LIST_VAR: cuda_cc_list(environ, torch_info.capabilities),
        # CMake 4 refuses the cmake_minimum_required of the gloo bundled in the sdist; older CMake ignores this.
        "CMAKE_POLICY_VERSION_MINIMUM": "3.5",
        "CXXFLAGS": f"{environ.get('CXXFLAGS', '')} {cxxflags}".strip(),
        # The build is RelWithDebInfo (209 MB wheel); the linker drops the debug sections from the .so files.
        "LDFLAGS": f"{environ.get('LDFLAGS', '')} -Wl,--strip-debug".strip(),
        # Horovod's nvcc flags come from the `nvcc` on PATH: make it the one CMake compiles with.
        "PATH": f"{cuda_home / 'bin'}{os.pathsep}{environ.get('PATH', '')}",
    }
    env.update(nccl_home(environ, torch_info.nccl_dir, work_dir))
    return env


def variant_name(torch_info: TorchInfo, env: Mapping[str, str]) -> str:
    """The cache folder of a wheel: what it was built for (CPU, or CUDA version and architectures) and the torch
    it was compiled against, so no wheel is ever reused for another variant or another torch."""
    if "HOROVOD_GPU_OPERATIONS" not in env:
        return f"cpu-torch{torch_info.version}"
    archs = "-".join(f"sm{cc}" for cc in env[CC_LIST_VAR].split(","))
    return f"cuda{torch_info.cuda}-{archs}-torch{torch_info.version}"


def build_plan(environ: Mapping[str, str], torch_info: TorchInfo, work_dir: Path) -> dict[str, str]:
    nvcc = find_nvcc(environ)
    env = dict(CPU_BUILD_ENV)
    if wants_gpu_build(gpu_mode(environ), torch_info, nvcc, environ):
        env.update(gpu_build_env(environ, torch_info, nvcc, work_dir))
    plan = {"BIGTRAIN_HOROVOD_VARIANT": variant_name(torch_info, env),
            "BIGTRAIN_HOROVOD_PYTAG": f"cp{sys.version_info.major}{sys.version_info.minor}",
            "BIGTRAIN_HOROVOD_TORCH_CXX_STANDARD": torch_info.cxx_standard,
            # Horovod's setup.py lists cffi in setup_requires for bdist: without it, it tries to download it.
            "BIGTRAIN_HOROVOD_NEEDS_CFFI": "0" if importlib.util.find_spec("cffi") else "1"}
    plan.update(env)
    return plan


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: horovod_build_env.py WORK_DIR", file=sys.stderr)
        return 2
    try:
        plan = build_plan(os.environ, probe_torch(), Path(args[0]).resolve())
    except BuildEnvError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, value in plan.items():
        print(f"{name}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
