"""TensorFlow's process-wide defaults of the project's programs; import before TensorFlow.

oneDNN CPU kernels on by default: TensorFlow turns them on only on CPUs with AVX-512 VNNI/BF16 or
AMX; elsewhere, e.g. AVX2 CPUs such as the AMD EPYC this project is tested on, its plain Eigen
kernels run. There the oneDNN kernels trained and evaluated 1.0-SqNxt-23 (227 px, batch 64, float32)
1.9x and 1.6x as fast (17 -> 32 and 101 -> 166 images/s, bare loops, 2026-12-01; the README's speed
tables are measured with them). Their float32 results differ from Eigen's in the last bits (other
summation orders); a run is still bitwise reproducible on one machine. `TF_ENABLE_ONEDNN_OPTS=0` in
the environment keeps TensorFlow's own choice.

TensorFlow's BFC allocator for CPU memory (`TF_CPU_ALLOCATOR_USE_BFC`): it keeps freed memory for
the next tensor. TensorFlow's default for the Eigen kernels returns large blocks to the system (glibc
unmaps blocks over 32 MB), so every batch of 64 float32 images at 224 px (38 MB) page-faults and
zeroes its pages again: the cast of a uint8 batch to float32 took 32 ms of CPU, 4 ms with BFC.
oneDNN's allocator pools the operations' memory, but tf.data's still gained: the input pipelines of
`benchmark input` (inception, 224 px) spent 2.7-2.8 ms of CPU per image without it, 2.0-2.3 with it
(two runs each, 2026-12-01, a test suite running beside). The pool grows to the process's peak use
and is not given back (limit `TF_CPU_BFC_MEM_LIMIT_IN_MB`, default 64 GB);
`TF_CPU_ALLOCATOR_USE_BFC=false` keeps TensorFlow's default.
"""

import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
