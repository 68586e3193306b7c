"""scripts/build_horovod.sh and its helper scripts/horovod_build_env.py: which Horovod build (CPU or GPU) a Python
gets, the environment of a GPU build, the cache, and the one-line errors. Nothing here compiles Horovod."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
HELPER = REPO / "scripts" / "horovod_build_env.py"
SCRIPT = REPO / "scripts" / "build_horovod.sh"


def load_helper():
    spec = importlib.util.spec_from_file_location("horovod_build_env", HELPER)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


hbe = load_helper()


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without the knobs the build reads, so the tests see the defaults."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BIGTRAIN_HOROVOD", "HOROVOD_")) and k not in ("NCCL_HOME", "CUDA_HOME")}
    env.update(extra)
    return env


def run_helper(tmp_path: Path, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HELPER), str(tmp_path)], env=clean_env(**extra),
                          capture_output=True, text=True, timeout=120)


def parse_plan(stdout: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in stdout.splitlines())


def fake_wheel_nccl(root: Path) -> Path:
    """The layout of the nvidia-nccl-cu13 wheel: nvidia/nccl/{include/nccl.h, lib/libnccl.so.2}."""
    nccl = root / "site-packages" / "nvidia" / "nccl"
    (nccl / "include").mkdir(parents=True)
    (nccl / "lib").mkdir()
    (nccl / "include" / "nccl.h").write_text("#define NCCL_MAJOR 2\n")
    (nccl / "include" / "nccl_device.h").write_text("/* included by nccl.h */\n")
    (nccl / "lib" / "libnccl.so.2").write_bytes(b"\x7fELF fake")
    return nccl


def fake_toolkit(root: Path) -> Path:
    """A CUDA toolkit folder whose nvcc answers the dry run as the real one does (it prints where it runs from)."""
    home = root / "cuda-13.0"
    (home / "bin").mkdir(parents=True)
    (home / "include").mkdir()
    (home / "include" / "cuda_runtime.h").write_text("")
    nvcc = home / "bin" / "nvcc"
    nvcc.write_text(f"#!/bin/sh\necho '#$ _HERE_={home / 'bin'}' >&2\n")
    nvcc.chmod(0o755)
    return home


CUDA_TORCH = dict(version="2.14.1+cu130", cuda="13.0", capabilities=[(9, 0)])


# --- the real interpreter of this project: a CPU torch on 3.11 here, PyPI's CUDA torch on 3.12/3.13 -------------
# (make test-other-pythons); CI machines have nvcc but no GPU, so either way the default is the CPU build.
CPU_TORCH_ONLY = pytest.mark.skipif(torch.version.cuda is not None, reason="about a CPU build of torch")


def test_project_python_gets_the_cpu_build_named_after_its_torch(tmp_path):
    result = run_helper(tmp_path)
    assert result.returncode == 0, result.stderr
    plan = parse_plan(result.stdout)
    assert plan["BIGTRAIN_HOROVOD_VARIANT"] == f"cpu-torch{torch.__version__}"
    assert plan["BIGTRAIN_HOROVOD_PYTAG"] == f"cp{sys.version_info.major}{sys.version_info.minor}"
    # The CPU build is exactly the one bigtrain always made: nothing GPU-related leaks into it.
    assert {k: plan[k] for k in hbe.CPU_BUILD_ENV} == hbe.CPU_BUILD_ENV
    assert not {"HOROVOD_GPU_OPERATIONS", "HOROVOD_CUDA_HOME", "HOROVOD_NCCL_HOME", "CXXFLAGS"} & plan.keys()


@CPU_TORCH_ONLY
def test_forced_gpu_build_with_a_cpu_torch_fails_naming_the_reason(tmp_path):
    result = run_helper(tmp_path, BIGTRAIN_HOROVOD_GPU="1")
    assert result.returncode == 2
    assert result.stdout == ""
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: BIGTRAIN_HOROVOD_GPU=1 but ")
    assert f"torch {torch.__version__} is a CPU build (torch.version.cuda is None)" in last


def test_build_script_forced_gpu_fails_in_one_line_and_builds_nothing(tmp_path):
    wheels = tmp_path / "wheels"
    result = subprocess.run(["bash", str(SCRIPT), sys.executable, str(wheels)], capture_output=True, text=True,
                            env=clean_env(BIGTRAIN_HOROVOD_GPU="1"), timeout=120)
    assert result.returncode != 0
    assert result.stdout == ""
    last = result.stderr.strip().splitlines()[-1]
    # With a CUDA torch on a host without GPUs, the missing piece is nvcc or the architectures to build for.
    assert last.startswith(("error: BIGTRAIN_HOROVOD_GPU=1 but torch ",) if torch.version.cuda is None
                           else ("error: BIGTRAIN_HOROVOD_GPU=1 but nvcc", "error: no GPU is visible to torch"))
    assert not wheels.exists()


def test_build_script_prints_only_the_absolute_path_of_the_cached_wheel(tmp_path):
    variant = parse_plan(run_helper(tmp_path).stdout)["BIGTRAIN_HOROVOD_VARIANT"]
    pytag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    wheels = tmp_path / "wheels"
    cached = wheels / "horovod-0.28.1" / variant / f"horovod-0.28.1-{pytag}-{pytag}-linux_x86_64.whl"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"cached")
    # Wheels of other variants and the old flat layout are never taken for this one.
    other = wheels / "horovod-0.28.1" / "cuda13.0-sm90-torch2.14.1+cu130" / cached.name
    other.parent.mkdir(parents=True)
    other.write_bytes(b"gpu")
    (wheels / cached.name).write_bytes(b"old layout")

    result = subprocess.run(["bash", str(SCRIPT), sys.executable, "wheels"], cwd=tmp_path, capture_output=True,
                            text=True, env=clean_env(), timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{cached}\n"
    assert "using the cached wheel" in result.stderr


# --- choosing the build ----------------------------------------------------------------------------------------

def test_cuda_torch_with_nvcc_gets_the_gpu_build(tmp_path):
    toolkit = fake_toolkit(tmp_path)
    info = hbe.TorchInfo(**CUDA_TORCH, nccl_dir=fake_wheel_nccl(tmp_path))
    plan = hbe.build_plan({"PATH": str(toolkit / "bin")}, info, tmp_path / "work")
    assert plan["BIGTRAIN_HOROVOD_VARIANT"] == "cuda13.0-sm90-torch2.14.1+cu130"
    assert plan["HOROVOD_GPU_OPERATIONS"] == "NCCL"
    assert plan["HOROVOD_CPU_OPERATIONS"] == "GLOO"
    assert plan["HOROVOD_CUDA_HOME"] == str(toolkit)
    assert plan["HOROVOD_BUILD_CUDA_CC_LIST"] == "90"
    assert plan["HOROVOD_NCCL_HOME"] == str(tmp_path / "work" / "nccl")
    assert plan["CMAKE_POLICY_VERSION_MINIMUM"] == "3.5"
    assert plan["CXXFLAGS"].split()[:6] == ["-include", "cstdint", "-include", "string", "-include", "stdexcept"]
    assert plan["PATH"].split(os.pathsep)[0] == str(toolkit / "bin")


def test_cuda_home_is_found_through_an_nvcc_wrapper(tmp_path):
    toolkit = fake_toolkit(tmp_path)
    wrapper = tmp_path / "usr-local" / "bin" / "nvcc"  # like /usr/local/bin/nvcc: `exec .../cuda-13.0/bin/nvcc`
    wrapper.parent.mkdir(parents=True)
    wrapper.write_text(f'#!/bin/sh\nexec {toolkit / "bin" / "nvcc"} "$@"\n')
    wrapper.chmod(0o755)
    assert hbe.find_nvcc({"PATH": str(wrapper.parent)}) == wrapper
    assert hbe.cuda_home_of(wrapper) == toolkit


def test_nvcc_without_a_toolkit_is_an_error_naming_it(tmp_path):
    nvcc = tmp_path / "bin" / "nvcc"
    nvcc.parent.mkdir()
    nvcc.write_text("#!/bin/sh\n")
    nvcc.chmod(0o755)
    with pytest.raises(hbe.BuildEnvError, match=r"cuda_runtime\.h missing.*CUDA_HOME"):
        hbe.cuda_home_of(nvcc)


def test_cuda_torch_without_nvcc_falls_back_to_cpu_unless_gpu_is_required(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(hbe, "DEFAULT_NVCC", tmp_path / "absent" / "nvcc")
    info = hbe.TorchInfo(**CUDA_TORCH)
    assert hbe.find_nvcc({"PATH": str(tmp_path)}) is None
    plan = hbe.build_plan({"PATH": str(tmp_path)}, info, tmp_path)
    assert plan["BIGTRAIN_HOROVOD_VARIANT"] == "cpu-torch2.14.1+cu130"
    assert "HOROVOD_GPU_OPERATIONS" not in plan
    assert "nvcc was not found" in capsys.readouterr().err
    with pytest.raises(hbe.BuildEnvError, match=r"BIGTRAIN_HOROVOD_GPU=1 but nvcc was not found.*CUDA_HOME"):
        hbe.build_plan({"PATH": str(tmp_path), "BIGTRAIN_HOROVOD_GPU": "1"}, info, tmp_path)


def test_cuda_torch_with_nvcc_but_no_gpu_falls_back_to_cpu_unless_architectures_are_named(tmp_path, capsys):
    """A CPU host with nvcc and PyPI's CUDA torch (Python 3.12/3.13): nothing to build GPU code for."""
    toolkit = fake_toolkit(tmp_path)
    info = hbe.TorchInfo(version="2.13.0+cu130", cuda="13.0", capabilities=[], nccl_dir=fake_wheel_nccl(tmp_path))
    plan = hbe.build_plan({"PATH": str(toolkit / "bin")}, info, tmp_path / "work")
    assert plan["BIGTRAIN_HOROVOD_VARIANT"] == "cpu-torch2.13.0+cu130"
    assert "HOROVOD_GPU_OPERATIONS" not in plan
    assert "but no GPU is visible to torch and HOROVOD_BUILD_CUDA_CC_LIST is not set" in capsys.readouterr().err
    named = hbe.build_plan({"PATH": str(toolkit / "bin"), "HOROVOD_BUILD_CUDA_CC_LIST": "90"}, info, tmp_path / "w2")
    assert named["BIGTRAIN_HOROVOD_VARIANT"] == "cuda13.0-sm90-torch2.13.0+cu130"
    with pytest.raises(hbe.BuildEnvError, match=r"no GPU is visible.*set HOROVOD_BUILD_CUDA_CC_LIST"):
        hbe.build_plan({"PATH": str(toolkit / "bin"), "BIGTRAIN_HOROVOD_GPU": "1"}, info, tmp_path / "w3")


def test_cpu_build_can_be_forced_on_a_gpu_host(tmp_path):
    toolkit = fake_toolkit(tmp_path)
    plan = hbe.build_plan({"PATH": str(toolkit / "bin"), "BIGTRAIN_HOROVOD_GPU": "0"},
                          hbe.TorchInfo(**CUDA_TORCH), tmp_path)
    assert plan["BIGTRAIN_HOROVOD_VARIANT"] == "cpu-torch2.14.1+cu130"
    assert "HOROVOD_GPU_OPERATIONS" not in plan


def test_unknown_gpu_mode_is_an_error_naming_the_variable():
    with pytest.raises(hbe.BuildEnvError, match=r"BIGTRAIN_HOROVOD_GPU='yes'.*auto, 0.*1"):
        hbe.gpu_mode({"BIGTRAIN_HOROVOD_GPU": "yes"})


# --- GPU architectures -----------------------------------------------------------------------------------------

def test_cc_list_override_wins_over_the_gpus_present():
    assert hbe.cuda_cc_list({"HOROVOD_BUILD_CUDA_CC_LIST": "90"}, [(8, 0)]) == "90"
    assert hbe.cuda_cc_list({"HOROVOD_BUILD_CUDA_CC_LIST": "80,90"}, []) == "80,90"


def test_cc_list_from_the_gpus_present():
    assert hbe.cuda_cc_list({}, [(9, 0), (9, 0), (8, 0)]) == "80,90"
    assert hbe.cuda_cc_list({}, [(12, 0)]) == "120"


def test_cc_list_without_gpu_or_override_is_an_error_naming_the_variable():
    with pytest.raises(hbe.BuildEnvError, match=r"no GPU is visible.*set HOROVOD_BUILD_CUDA_CC_LIST"):
        hbe.cuda_cc_list({}, [])


def test_malformed_cc_list_is_an_error_naming_the_variable():
    with pytest.raises(hbe.BuildEnvError, match=r"HOROVOD_BUILD_CUDA_CC_LIST='sm_90'"):
        hbe.cuda_cc_list({"HOROVOD_BUILD_CUDA_CC_LIST": "sm_90"}, [])


def test_the_architectures_are_part_of_the_variant(tmp_path):
    toolkit = fake_toolkit(tmp_path)
    info = hbe.TorchInfo(**CUDA_TORCH, nccl_dir=fake_wheel_nccl(tmp_path))
    plan = hbe.build_plan({"PATH": str(toolkit / "bin"), "HOROVOD_BUILD_CUDA_CC_LIST": "80,90"}, info, tmp_path)
    assert plan["BIGTRAIN_HOROVOD_VARIANT"] == "cuda13.0-sm80-sm90-torch2.14.1+cu130"


# --- NCCL ------------------------------------------------------------------------------------------------------

def test_nccl_home_links_into_the_torch_wheels_nccl(tmp_path):
    nccl = fake_wheel_nccl(tmp_path)
    env = hbe.nccl_home({}, nccl, tmp_path / "work", system_header=tmp_path / "no-system" / "nccl.h")
    home = Path(env["HOROVOD_NCCL_HOME"])
    assert home == tmp_path / "work" / "nccl"
    assert env["HOROVOD_NCCL_LINK"] == "SHARED"
    assert (home / "include" / "nccl.h").read_text() == "#define NCCL_MAJOR 2\n"
    assert (home / "include" / "nccl_device.h").is_file()
    assert (home / "lib" / "libnccl.so").resolve() == (nccl / "lib" / "libnccl.so.2").resolve()
    assert (home / "lib" / "libnccl.so").read_bytes() == b"\x7fELF fake"
    # Made again in the same folder (a rerun) it replaces its own links instead of failing.
    assert hbe.nccl_home({}, nccl, tmp_path / "work")["HOROVOD_NCCL_HOME"] == str(home)


def test_users_nccl_home_wins_and_is_checked(tmp_path):
    mine = tmp_path / "my-nccl"
    (mine / "include").mkdir(parents=True)
    (mine / "include" / "nccl.h").write_text("")
    (mine / "lib").mkdir()
    (mine / "lib" / "libnccl.so").write_bytes(b"")
    assert hbe.nccl_home({"NCCL_HOME": str(mine)}, fake_wheel_nccl(tmp_path), tmp_path / "w") \
        == {"HOROVOD_NCCL_HOME": str(mine)}
    with pytest.raises(hbe.BuildEnvError, match=r"HOROVOD_NCCL_HOME=.*empty has no include/nccl\.h"):
        hbe.nccl_home({"HOROVOD_NCCL_HOME": str(tmp_path / "empty")}, None, tmp_path / "w")
    (mine / "lib" / "libnccl.so").unlink()
    with pytest.raises(hbe.BuildEnvError, match=r"NCCL_HOME=.*my-nccl has no lib/libnccl\.so"):
        hbe.nccl_home({"NCCL_HOME": str(mine)}, None, tmp_path / "w")


def test_system_nccl_is_the_last_resort(tmp_path):
    header = tmp_path / "usr" / "include" / "nccl.h"
    header.parent.mkdir(parents=True)
    header.write_text("")
    assert hbe.nccl_home({}, None, tmp_path / "w", system_header=header) == {"HOROVOD_NCCL_HOME": str(tmp_path / "usr")}


def test_no_nccl_anywhere_is_an_error_saying_how_to_provide_one(tmp_path):
    broken = tmp_path / "nvidia" / "nccl"
    (broken / "include").mkdir(parents=True)  # a header folder without nccl.h
    with pytest.raises(hbe.BuildEnvError, match=r"no NCCL found.*nvidia-nccl.*HOROVOD_NCCL_HOME") as caught:
        hbe.nccl_home({}, broken, tmp_path / "w", system_header=tmp_path / "none" / "nccl.h")
    assert str(broken) in str(caught.value)


# --- the C++ standard of the torch extension --------------------------------------------------------------------

def test_cxx_standard_follows_what_torchs_headers_demand(tmp_path):
    all_h = tmp_path / "include" / "torch" / "csrc" / "api" / "include" / "torch" / "all.h"
    all_h.parent.mkdir(parents=True)
    all_h.write_text("#if !defined(_MSC_VER) && __cplusplus < 202002L\n"
                     "#error C++20 or later compatible compiler is required to use PyTorch.\n#endif\n")
    assert hbe.torch_cxx_standard(tmp_path / "include") == "20"
    assert hbe.torch_cxx_standard(tmp_path / "nowhere") == "17"
    # This project's torch 2.13 asks for C++17, the standard bigtrain's CPU wheel has always been built with.
    assert hbe.torch_cxx_standard(Path(torch.__file__).parent / "include") == "17"
