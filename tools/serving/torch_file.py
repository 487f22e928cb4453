"""Reads the tensors of a PyTorch `torch.save` file (a state_dict) without PyTorch, and without
running or importing anything the file names.

Formats (PyTorch's torch/serialization.py):
  zip     torch >= 1.6: a zip archive whose one folder holds `data.pkl` (the pickled object, each
          storage a persistent id `("storage", <torch.*Storage>, key, location, numel)`),
          `data/<key>` (each storage's raw bytes) and `byteorder` ("little" or "big"; absent in
          older files: little).
  legacy  earlier versions (and `_use_new_zipfile_serialization=False`): pickles of the magic
          number 0x1950a86a20f9469cfc6c, the protocol version 1001 and a system-information dict,
          then the object (persistent ids `("storage", <type>, key, location, numel, view)`), then
          the sorted list of storage keys, then for each key an int64 element count and the
          storage's bytes, both little-endian.

Safety: the pickles are read by `_Unpickler`, whose `find_class` gives only the few names a
state_dict of tensors uses (collections.OrderedDict, torch._utils._rebuild_tensor_v2 and
_rebuild_parameter, the torch.<Type>Storage classes) and gives them as stand-ins defined here;
any other name is refused before anything is called. This is the idea of torch.load's
`weights_only=True`, in a few lines that need no PyTorch.

`read_state_dict(path)` returns {name: numpy array} in the file's order (dtypes float32, float64,
float16, int64, int32, int16, int8, uint8, bool; bfloat16 as float32, exactly).
"""

import collections
import dataclasses
import io
import os
import pickle
import struct
import zipfile
import zlib

import numpy as np

from tools.common import one_line
from tools.common import UserError

_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
_LEGACY_PROTOCOL = 1001
_ZIP_SIGNATURE = b"PK\x03\x04"
# torch.<Type>Storage -> numpy dtype ("bfloat16": read as uint16, widened to float32).
_STORAGE_DTYPES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
}


class _Refused(ValueError):
  """The file is readable but is not a state_dict of tensors (another object, a refused name)."""


class _Damaged(ValueError):
  """The file is of torch.save's format but incomplete or inconsistent (truncated, damaged)."""


@dataclasses.dataclass(frozen=True)
class _StorageType:
  """Stands for a torch.<Type>Storage class named in the pickle."""
  dtype: str


@dataclasses.dataclass(frozen=True)
class _Storage:
  """A storage the object refers to: its key, dtype, element count and, in legacy files, the view
  (offset, numel) of a larger storage it is."""
  key: str
  dtype: str
  numel: int
  view: tuple | None = None


@dataclasses.dataclass(frozen=True)
class _Tensor:
  """What torch._utils._rebuild_tensor_v2 would build: a strided view of a storage."""
  storage: _Storage
  offset: int
  shape: tuple
  stride: tuple


def _rebuild_tensor(storage, offset, shape, stride, *unused):
  del unused  # requires_grad, backward hooks, metadata: nothing a weight needs
  if not isinstance(storage, _Storage):
    raise _Refused("a tensor without a storage")
  return _Tensor(storage, int(offset), tuple(int(s) for s in shape), tuple(int(s) for s in stride))


def _rebuild_parameter(data, *unused):
  del unused  # requires_grad, backward hooks
  return data


_ALLOWED = {("collections", "OrderedDict"): collections.OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter}


class _Unpickler(pickle.Unpickler):
  """pickle.Unpickler that resolves only the names of `_ALLOWED` and the storage types."""

  def find_class(self, module, name):
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(_STORAGE_DTYPES[name])
    raise _Refused(f"it names {module}.{name}, which a state_dict of tensors does not use; "
                   f"refused (nothing from the file is run)")

  def persistent_load(self, pid):
    kind = pid[0].decode() if isinstance(pid[0], bytes) else pid[0]
    if kind != "storage" or len(pid) not in (5, 6) or not isinstance(pid[1], _StorageType):
      raise _Refused(f"an unknown persistent id {str(pid)[:80]}")
    view = tuple(pid[5][1:]) if len(pid) == 6 and pid[5] is not None else None
    return _Storage(str(pid[2]), pid[1].dtype, int(pid[4]), view)


def _numpy_dtype(dtype, byteorder):
  return np.dtype("uint16" if dtype == "bfloat16" else dtype).newbyteorder(
      "<" if byteorder == "little" else ">")


def _array(tensor, raw, byteorder, name):
  """The numpy array of a _Tensor whose storage's bytes are `raw`; _Damaged when they are short or
  the view reaches past them."""
  storage = tensor.storage
  dtype = _numpy_dtype(storage.dtype, byteorder)
  offset = storage.view[0] if storage.view else 0
  numel = storage.view[1] if storage.view else storage.numel
  values = np.frombuffer(raw, dtype, count=len(raw) // dtype.itemsize)
  if offset + numel > len(values):
    raise _Damaged(f"{name}: its storage holds {len(values)} values, {offset + numel} expected")
  values = values[offset:offset + numel]
  extent = tensor.offset + sum((n - 1) * s for n, s in zip(tensor.shape, tensor.stride))
  if 0 in tensor.shape:
    array = np.zeros(tensor.shape, dtype)
  elif min(tensor.stride, default=0) < 0 or extent >= len(values):
    raise _Damaged(f"{name}: shape {list(tensor.shape)} reaches past its storage")
  else:
    array = np.lib.stride_tricks.as_strided(
        values[tensor.offset:], tensor.shape, [s * dtype.itemsize for s in tensor.stride])
  array = np.array(array, dtype.newbyteorder("="))  # a copy in native order
  if storage.dtype == "bfloat16":
    array = (array.astype(np.uint32) << 16).view(np.float32)
  return array


def _state_dict(obj):
  """The {name: _Tensor} dict of a loaded object: a state_dict, or one under "state_dict" /
  "model" (training checkpoints); _Refused otherwise."""
  if isinstance(obj, dict):
    for key in ("state_dict", "model"):
      if isinstance(obj.get(key), dict):
        obj = obj[key]
        break
  if not isinstance(obj, dict) or not obj or not all(
      isinstance(k, str) and isinstance(v, _Tensor) for k, v in obj.items()):
    raise _Refused("it holds no state_dict (a dict of named tensors)")
  return obj


def _read_zip(path):
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    pickles = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
    if len(pickles) != 1:
      raise _Refused("a zip archive without torch.save's <name>/data.pkl")
    folder = pickles[0][:-len("data.pkl")]
    byteorder = "little"
    if f"{folder}byteorder" in names:
      byteorder = archive.read(f"{folder}byteorder").decode().strip()
    tensors = _state_dict(_Unpickler(io.BytesIO(archive.read(pickles[0]))).load())
    storages = {t.storage.key: archive.read(f"{folder}data/{t.storage.key}")
                for t in tensors.values()}
  return {name: _array(t, storages[t.storage.key], byteorder, name) for name, t in tensors.items()}


def _read_legacy(path):
  with open(path, "rb") as f:
    try:
      magic, protocol = _Unpickler(f).load(), _Unpickler(f).load()
    except Exception as e:  # pickle raises many types on bytes that are not a pickle
      raise _Refused("neither torch.save's zip archive nor its legacy format") from e
    if (magic, protocol) != (_LEGACY_MAGIC, _LEGACY_PROTOCOL):
      raise _Refused("neither torch.save's zip archive nor its legacy format (no magic number)")
    _Unpickler(f).load()  # the saving system's information: the data are little-endian anyway
    tensors = _state_dict(_Unpickler(f).load())
    keys = _Unpickler(f).load()
    dtypes = {t.storage.key: t.storage.dtype for t in tensors.values()}
    storages = {}
    for key in keys:
      (numel,) = struct.unpack("<q", f.read(8))
      size = numel * _numpy_dtype(dtypes.get(str(key), "uint8"), "little").itemsize
      storages[str(key)] = f.read(size)
      if len(storages[str(key)]) != size:
        raise _Damaged(f"storage {key} ends after {len(storages[str(key)])} of {size} bytes")
  # Legacy data are little-endian whatever the saving machine (torch's THPStorage_writeFileRaw).
  return {name: _array(t, storages[t.storage.key], "little", name) for name, t in tensors.items()}


def read_state_dict(path):
  """{name: numpy array} of the state_dict saved with torch.save at `path` (module docstring).

  Raises:
    UserError naming the file: missing, not a torch.save file, truncated or damaged, holding other
      objects than tensors (refused before anything is called), or no state_dict.
  """
  if not os.path.isfile(path):
    raise UserError(f"weights={path}: no such file", param="weights")
  with open(path, "rb") as f:
    zipped = f.read(4) == _ZIP_SIGNATURE
  try:
    return _read_zip(path) if zipped else _read_legacy(path)
  except _Refused as e:
    raise UserError(f"weights={path}: not a PyTorch state_dict saved with torch.save "
                    f"({one_line(e, 160)})", param="weights") from e
  except (_Damaged, zipfile.BadZipFile, zlib.error, EOFError, struct.error, KeyError,
          pickle.UnpicklingError, ValueError, TypeError, IndexError, AttributeError) as e:
    # A pickle cut short or damaged raises any of these (e.g. "pickle data was truncated").
    raise UserError(f"weights={path}: cannot be read, truncated or damaged "
                    f"({type(e).__name__}: {one_line(e, 120)})", param="weights") from e
