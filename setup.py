"""Build of the bpkernels._C extension: C++ CPU kernels always, CUDA kernels when torch has
CUDA and nvcc is found. Install with `pip install -e . --no-build-isolation` so that the
extension is built against the torch already installed (see README)."""

import glob
import os
import sys

from setuptools import find_packages, setup

# torch guesses CUDA_HOME from `which nvcc` at import time; on our machines that is a wrapper
# script in /usr/local/bin, so point it at the real toolkit first.
if not os.environ.get("CUDA_HOME") and os.path.exists("/usr/local/cuda/bin/nvcc"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

import torch  # noqa: E402
from torch.utils import cpp_extension  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))
DEBUG = os.environ.get("DEBUG", "0") == "1"


def want_cuda() -> bool:
    """BPK_CUDA=auto (default) builds CUDA kernels when possible, 1 insists, 0 never."""
    mode = os.environ.get("BPK_CUDA", "auto")
    possible = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if mode == "1" and not possible:
        sys.exit(
            "BPK_CUDA=1 but CUDA kernels cannot be built: torch.version.cuda="
            f"{torch.version.cuda}, CUDA_HOME={cpp_extension.CUDA_HOME}"
        )
    return possible and mode != "0"


def extensions():
    use_cuda = want_cuda()
    sources = ["csrc/ops.cpp", "csrc/checks.cpp", "csrc/linear_composite.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    opt = ["-O0", "-g"] if DEBUG else ["-O3"]
    # -fno-math-errno: sqrt becomes one instruction (and vectorises); nothing reads errno.
    cxx = opt + ["-fopenmp", "-fno-math-errno", "-DBPK_WITH_PYTHON"]
    nvcc = opt + ["-lineinfo", "--expt-relaxed-constexpr", "-DBPK_WITH_PYTHON"]
    include_dirs = [os.path.join(ROOT, "csrc"), os.path.join(ROOT, "csrc", "include")]
    kwargs = dict(
        include_dirs=include_dirs,
        extra_link_args=["-fopenmp"],
        py_limited_api=True,
    )
    if use_cuda:
        # Without a visible GPU torch cannot pick an architecture itself.
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        cxx.append("-DBPK_WITH_CUDA")
        nvcc.append("-DBPK_WITH_CUDA")
        ext = cpp_extension.CUDAExtension(
            "bpkernels._C", sources, extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **kwargs
        )
    else:
        ext = cpp_extension.CppExtension(
            "bpkernels._C", sources, extra_compile_args={"cxx": cxx}, **kwargs
        )
    print(
        f"bpkernels build: torch {torch.__version__}, torch.version.cuda={torch.version.cuda}, "
        f"CUDA_HOME={cpp_extension.CUDA_HOME}, CUDA kernels: {use_cuda}, "
        f"TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST')}"
    )
    return [ext]


setup(
    packages=find_packages(include=["bpkernels", "bpkernels.*"]),
    ext_modules=extensions(),
    cmdclass={"build_ext": cpp_extension.BuildExtension},
    options={"bdist_wheel": {"py_limited_api": "cp311"}},
)
