"""What the machine offers the kernels: the CPU's model and vector features, TensorFlow's oneDNN
switch, the GPUs' compute capability, and oneDNN's kernels as it reports them.

Why it matters: the same network trains at different speeds in float32 and bfloat16 depending on
these facts (model.default_dtype chooses by them), and benchmark figures of machines of different
kinds must never be mixed (scripts/benchmark.py states them beside every table).
Nothing here reads flags; reading /proc/cpuinfo is Linux-only (elsewhere the features are unknown).
"""

import collections
import os
import platform
import re
import subprocess
import sys

from tools.common import REPO_ROOT

# The CPU features that decide which kernels run, with the /proc/cpuinfo flags that declare them
# (Linux names): AVX2 (Eigen's and oneDNN's avx2 kernels), AVX-512 (oneDNN's avx512_core),
# AVX512-BF16 (bfloat16 dot products: avx512_core_bf16), AMX (bfloat16 tile matrix units:
# avx512_core_amx; Intel Sapphire Rapids and later).
CPU_FEATURES = (("AVX2", "avx2"), ("AVX-512", "avx512f"), ("AVX512-BF16", "avx512_bf16"),
                ("AMX", "amx_bf16"))
# CPU features with which oneDNN computes bfloat16 natively (no emulation through float32).
BFLOAT16_CPU_FEATURES = ("AVX512-BF16", "AMX")
# GPUs with bfloat16 tensor cores: NVIDIA compute capability 8.0 (Ampere) and later.
BFLOAT16_GPU_CAPABILITY = (8, 0)


def _cpuinfo_field(name):
  """The value of the first `name : value` line of /proc/cpuinfo, or None."""
  if not os.path.exists("/proc/cpuinfo"):
    return None
  with open("/proc/cpuinfo") as f:
    for line in f:
      key, _, value = line.partition(":")
      if key.strip() == name:
        return value.strip()
  return None


def cpu_model():
  """The CPU's model name (/proc/cpuinfo `model name`, else platform.processor()), a str."""
  return _cpuinfo_field("model name") or platform.processor() or "unknown CPU"


def cpu_features():
  """The names in CPU_FEATURES this CPU declares (/proc/cpuinfo flags), in that order; a tuple
  (empty when unknown)."""
  flags = set((_cpuinfo_field("flags") or "").split())
  return tuple(name for name, flag in CPU_FEATURES if flag in flags)


def onednn_enabled():
  """True unless TF_ENABLE_ONEDNN_OPTS turns TensorFlow's oneDNN CPU kernels off (the programs
  turn them on: tools/cli/tf_env.py; TensorFlow itself does on CPUs with AVX512-BF16 or AMX)."""
  return os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1").strip().lower() not in ("0", "false")


def gpu_capabilities():
  """[(device name, (major, minor) compute capability or None)] of the visible GPUs."""
  # Imported here: the programs import this module before TensorFlow (tools/tf_env.py first).
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  gpus = []
  for gpu in tf.config.list_physical_devices("GPU"):
    details = tf.config.experimental.get_device_details(gpu)
    gpus.append((details.get("device_name", gpu.name), details.get("compute_capability")))
  return gpus


# A training step of a network in each dtype, run in a child process with ONEDNN_VERBOSE=1:
# argv = configuration, dtypes...; 32 px and batch 2 (the network's channel counts decide the kernels).
_PROBE = """
import sys
from tools.cli import tf_env
import tensorflow as tf
import model
for dtype in sys.argv[2:]:
  network = model.build_network(sys.argv[1], 4, 32, dtype=model.dtype_policy(dtype))
  images = tf.random.uniform([2, 32, 32, 3])
  @tf.function
  def step():
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(network(images, training=True))
    return tape.gradient(loss, network.trainable_variables)
  print("probe-dtype", dtype, flush=True)
  step()
"""
# ONEDNN_VERBOSE lines: onednn_verbose,v1,primitive,exec,cpu,<primitive>,<implementation>,... and
# onednn_verbose,v1,info,oneDNN v3.7.3 (...) / ...,info,cpu,isa:<description>.
_VERBOSE_EXEC = re.compile(r"onednn_verbose,(?:v\d+,)?(?:primitive,)?exec,cpu,(\w+),([^,]+),")
_VERBOSE_INFO = re.compile(r"onednn_verbose,(?:v\d+,)?info,(?:(oneDNN v[\d.]+)|cpu,isa:(.+))")


def onednn_kernels(configuration, dtypes, timeout=300):
  """What oneDNN runs on this CPU for `configuration`'s training step: {"version", "isa": oneDNN's
  version and ISA lines, "kernels": {dtype: {primitive: [implementations]}}} (e.g. convolution:
  brgconv_1x1:avx512_core_bf16; `nspc_bnorm:any` or a `ref` name is a reference loop), from one
  step at 32 px per dtype in a child process with ONEDNN_VERBOSE=1 (reorders left out). Empty
  values when oneDNN is off or the child fails.

  Args:
    configuration: a name in model.CONFIGURATIONS.
    dtypes: compute dtypes, names in model.DTYPES.
    timeout: seconds the child may take (building and tracing: 10-30 s on 2 cores).
  """
  result = {"version": "", "isa": "", "kernels": {}}
  if not onednn_enabled():
    return result
  try:
    child = subprocess.run([sys.executable, "-c", _PROBE, configuration, *dtypes], cwd=REPO_ROOT,
                           timeout=timeout, capture_output=True, text=True,
                           env={**os.environ, "ONEDNN_VERBOSE": "1", "TF_CPP_MIN_LOG_LEVEL": "2"})
  except (OSError, subprocess.SubprocessError):
    return result
  dtype, kernels = None, collections.defaultdict(dict)
  for line in child.stdout.splitlines():
    if line.startswith("probe-dtype "):
      dtype = line.split()[1]
    elif (match := _VERBOSE_INFO.match(line)):
      result["version"] = match.group(1) or result["version"]
      result["isa"] = (match.group(2) or result["isa"]).strip()
    elif dtype and (match := _VERBOSE_EXEC.match(line)) and match.group(1) != "reorder":
      kernels[dtype].setdefault(match.group(1), set()).add(match.group(2))
  result["kernels"] = {d: {p: sorted(names) for p, names in sorted(k.items())}
                       for d, k in kernels.items()}
  return result


def kernel_isas(implementations):
  """The instruction sets of oneDNN implementation names, e.g. ["brg_conv_bwd:avx512_core+
  brgconv_1x1:avx512_core", "nspc_bnorm:any"] -> ["avx512_core", "reference"] (sorted)."""
  isas = set()
  for name in implementations:
    for part in name.split("+"):
      isa = part.rpartition(":")[2]
      isas.add("reference" if isa == "any" or "ref" in part.split(":")[0] else isa)
  return sorted(isas)


def default_dtype():
  """(dtype, reason): the compute dtype that trains fastest here, for a run that sets none.

  GPUs visible: bfloat16 when every one has compute capability >= 8.0 (bfloat16 tensor cores,
  BFLOAT16_GPU_CAPABILITY), else float32 (float16 needs loss scaling: only on request).
  CPU only: bfloat16 when the CPU declares AVX512-BF16 or AMX and TensorFlow runs oneDNN's kernels
  (onednn_enabled), else float32: without them bfloat16 is computed through float32, more
  work than float32 itself. Measured on a 2-core AMD EPYC with AVX512-BF16 (2026-12-04, bare
  training loops in one process, alternating rounds): 1.0-SqNxt-23 batch 64 trained 1.46x as fast
  in bfloat16 at 227 px, 1.19x at 64 px, and tiny_SqNxt at 32 px batch 4 1.08x (docs/BENCHMARKS.md).
  The choice depends on the machine only, never on load or timing, so that a run restarted on it
  computes as it began. reason: one sentence naming the facts, for the log.
  """
  gpus = gpu_capabilities()
  if gpus:
    slow = [f"{name} ({'.'.join(map(str, cc)) if cc else 'unknown'})" for name, cc in gpus
            if not cc or tuple(cc) < BFLOAT16_GPU_CAPABILITY]
    if slow:
      return "float32", (f"float32: GPU compute capability below 8.0 (no bfloat16 tensor cores): "
                         f"{', '.join(slow)}")
    return "bfloat16", "bfloat16: every GPU has compute capability >= 8.0 (bfloat16 tensor cores)"
  features = [f for f in cpu_features() if f in BFLOAT16_CPU_FEATURES]
  cpu = cpu_model()
  if features and onednn_enabled():
    return "bfloat16", f"bfloat16: {cpu} has {' and '.join(features)} (oneDNN bfloat16 kernels)"
  if features:
    return "float32", "float32: TF_ENABLE_ONEDNN_OPTS=0 turns oneDNN's bfloat16 kernels off"
  return "float32", f"float32: {cpu} has neither AVX512-BF16 nor AMX (bfloat16 would be emulated)"
