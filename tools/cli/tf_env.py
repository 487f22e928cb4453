"""TensorFlow's process-wide defaults of the project's programs; import before TensorFlow.

oneDNN CPU kernels on by default: TensorFlow turns them on only on CPUs with AVX-512 VNNI/BF16 or
AMX; elsewhere, e.g. AVX2 CPUs such as the AMD EPYC this project is tested on, its plain Eigen
kernels run. There the oneDNN kernels trained and evaluated 1.0-SqNxt-23 much faster (figures in
docs/BENCHMARKS.md, "Measurements behind the code"; the speed tables are measured with them). Their float32 results differ from Eigen's in the last bits (other
summation orders); a run is still bitwise reproducible on one machine. `TF_ENABLE_ONEDNN_OPTS=0` in
the environment keeps TensorFlow's own choice.

TensorFlow's BFC allocator for CPU memory (`TF_CPU_ALLOCATOR_USE_BFC`): it keeps freed memory for
the next tensor. TensorFlow's default for the Eigen kernels returns large blocks to the system (glibc
unmaps blocks over 32 MB), so every batch of 64 float32 images at 224 px (38 MB) page-faults and
zeroes its pages again (the cast of a uint8 batch to float32 costs several times the CPU).
oneDNN's allocator pools the operations' memory, but tf.data's still gains: the input pipelines
spend less CPU per image with it (docs/BENCHMARKS.md). The pool grows to the process's peak use
and is not given back (limit `TF_CPU_BFC_MEM_LIMIT_IN_MB`, default 64 GB);
`TF_CPU_ALLOCATOR_USE_BFC=false` keeps TensorFlow's default.

TensorFlow is imported here, after these settings and with scikit-learn hidden: TensorFlow's import
loads Keras's tf.keras API, whose scikit-learn wrappers import scikit-learn when it is installed (it
is: the demo data's digits come from it), nearly a second of CPU in every program's start (docs/BENCHMARKS.md). The
programs never use those wrappers (`keras.wrappers.SKLearnClassifier` and its kind then say
scikit-learn is missing); scikit-learn itself imports as usual afterwards.
"""

import os
import sys

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")


def _import_tensorflow_without_sklearn():
  if "sklearn" in sys.modules:  # imported already: nothing to save
    return
  sys.modules["sklearn"] = None  # `import sklearn` raises ImportError meanwhile
  try:
    import tensorflow  # pylint: disable=import-outside-toplevel,unused-import
  finally:
    if "sklearn" in sys.modules and sys.modules["sklearn"] is None:
      del sys.modules["sklearn"]


_import_tensorflow_without_sklearn()
