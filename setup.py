"""Build and install optiml-engine.

Always builds `optiml_engine._C`, a pybind11 module over numpy arrays (the sample packer and
index builders). The CUDA ops (`optiml_engine._cuda_ops`) are built only where both a CUDA
toolkit and a CUDA build of torch are present, so CPU machines and CI never need either.
"""

import os

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import find_packages, setup

ParallelCompile("OPTIML_BUILD_JOBS", default=2).install()


def cpu_extensions():
    return [
        Pybind11Extension(
            "optiml_engine._C",
            sorted(os.path.join("csrc", f) for f in os.listdir("csrc") if f.endswith(".cpp")),
            depends=sorted(os.path.join("csrc", f) for f in os.listdir("csrc") if f.endswith(".h")),
            cxx_std=17,
            extra_compile_args=["-O3"],
        )
    ]


def cuda_extensions():
    """CUDA ops need torch's extension helpers, a CUDA toolkit and a CUDA torch: all optional."""
    cuda_dir = os.path.join("csrc", "cuda")
    if os.environ.get("OPTIML_NO_CUDA") or not os.path.isdir(cuda_dir):
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError:
        return [], {}
    if CUDA_HOME is None or torch.version.cuda is None:
        return [], {}
    sources = sorted(os.path.join(cuda_dir, f) for f in os.listdir(cuda_dir))
    sources = [s for s in sources if s.endswith((".cpp", ".cu"))]
    ext = CUDAExtension(
        "optiml_engine._cuda_ops",
        sources,
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "--use_fast_math"]},
    )
    return [ext], {"build_ext": BuildExtension}


cuda_exts, cuda_cmdclass = cuda_extensions()

setup(
    name="optiml-engine",
    version="0.1.0",
    description="Instruction meta-learning (OPT-IML) of OPT models with Megatron-style parallelism",
    packages=find_packages(include=["optiml_engine", "optiml_engine.*"]),
    package_data={"optiml_engine": ["py.typed"]},
    python_requires=">=3.11",
    install_requires=[
        # Pinned: the CPU build of 2.13.0 is what CI and the demo install; an unpinned torch
        # would pull a multi-GB CUDA build.
        "torch==2.13.0",
        "triton>=3.0,<4",
        "numpy>=1.26",
        "pyyaml>=6",
        "tensorboard>=2.15",
        # HF `tokenizers` reads tokenizer.json / GPT-2 BPE files far faster than our own BPE would.
        "tokenizers>=0.19",
        # safetensors loads checkpoints without executing pickles.
        "safetensors>=0.4",
        "jinja2>=3.1",
        # The official Super-NI ROUGE-L is rouge-score's; re-implementing it would drift.
        "rouge-score>=0.1.2",
        "matplotlib>=3.8",
        # `optiml eval`'s progress bar on a terminal.
        "tqdm>=4.60",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            "pytest-timeout>=2.3",
            # HF parity tests compare against transformers' OPT.
            "transformers>=4.40",
            # `make test` and `make lint` run `ruff check .` (pyproject.toml: line length 100).
            "ruff>=0.4",
            # the bench tests read PromptSource rows from parquet and save_to_disk directories
            "datasets>=3",
        ],
        # `optiml data build` over PromptSource rows stored as parquet or by save_to_disk
        "bench": ["datasets>=3"],
        "apex": [],
    },
    entry_points={"console_scripts": ["optiml=optiml_engine.cli:main"]},
    ext_modules=cpu_extensions() + cuda_exts,
    cmdclass={"build_ext": build_ext, **cuda_cmdclass},
    zip_safe=False,
)
