"""TensorFlow's process-wide defaults of the project's programs; import before TensorFlow.

oneDNN CPU kernels on by default: TensorFlow turns them on only on CPUs with AVX-512 VNNI/BF16 or
AMX; elsewhere, e.g. AVX2 CPUs such as the AMD EPYC this project is tested on, its plain Eigen
kernels run. There the oneDNN kernels trained and evaluated 1.0-SqNxt-23 (227 px, batch 64, float32)
1.9x and 1.6x as fast (17 -> 32 and 101 -> 166 images/s, bare loops, 2026-12-01; the README's speed
tables are measured with them). Their float32 results differ from Eigen's in the last bits (other
summation orders); a run is still bitwise reproducible on one machine. `TF_ENABLE_ONEDNN_OPTS=0` in
the environment keeps TensorFlow's own choice.
"""

import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
