"""Read official PyTorch checkpoints (`torch.save` zip files) without torch and without running pickled code.

A torch.save file (torch >= 1.6) is a zip archive holding `<name>/data.pkl` (a pickle, protocol 2) and one raw
storage per tensor in `<name>/data/<key>`. The pickle refers to storages by persistent id
`('storage', <torch.XStorage>, key, location, numel)` and rebuilds tensors with `torch._utils._rebuild_tensor_v2`.

`_SafeUnpickler.find_class` resolves only an explicit allow-list of names (OrderedDict, the tensor/parameter
rebuild functions, the typed storage classes) to local stand-ins; any other global -- `os.system`,
`builtins.eval`, ... -- raises `CheckpointError("refusing to load {module}.{name}: not an allow-listed tensor
type")` before anything is called. Every tensor comes back as a contiguous numpy array (float16, bfloat16 via
ml_dtypes, int64, bool, ...). All failures are raised as `CheckpointError` with a one-line message.
"""
from __future__ import annotations

import collections
import os
import pickle
import zipfile

import ml_dtypes
import numpy as np

__all__ = ["CheckpointError", "load_torch_file", "read_official_checkpoint"]


class CheckpointError(Exception):
    """The file cannot be read as an official checkpoint (missing, corrupt, unsafe or unexpected content)."""


class _Corrupt(Exception):
    """Malformed record inside an otherwise readable archive; reported as "not a PyTorch checkpoint"."""


class _StorageType:
    """Stand-in for a `torch.XStorage` class: only carries the element dtype of a storage record."""

    def __init__(self, name: str, dtype):
        self.name, self.dtype = name, np.dtype(dtype)

    def __repr__(self):
        return f"torch.{self.name}"


_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    """Stand-in for `torch._utils._rebuild_tensor_v2`: a bounds-checked strided view, copied to a new array."""
    if not isinstance(storage, np.ndarray):
        raise _Corrupt(f"malformed tensor record: storage is {type(storage).__name__}, not a storage")
    size, stride = tuple(size), tuple(stride)
    ints = (storage_offset,) + size + stride
    if len(size) != len(stride) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ints):
        raise _Corrupt(f"malformed tensor record: offset {storage_offset}, size {size}, stride {stride}")
    # as_strided does no bounds checking: make sure the view stays inside the storage (hostile files).
    if 0 not in size and storage_offset + sum((n - 1) * s for n, s in zip(size, stride)) >= storage.size:
        raise _Corrupt(f"malformed tensor record: size {size} stride {stride} offset {storage_offset} "
                       f"exceeds a storage of {storage.size} elements")
    if 0 in size:
        return np.zeros(size, storage.dtype)
    isz = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(storage[storage_offset:], size, tuple(s * isz for s in stride),
                                           writeable=False)
    return np.array(view, order="C")


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    """Stand-in for `torch._utils._rebuild_parameter(_with_state)`: a Parameter is just its data here."""
    return data


def _allowed_globals() -> dict:
    """The allow-list. Fresh stand-ins per load: a hostile BUILD opcode may set attributes on the objects it
    gets (e.g. `__defaults__`, `dtype`), and that must not leak into later loads in the same process."""
    return {
        ("collections", "OrderedDict"): collections.OrderedDict,  # a builtin type: its attributes are read-only
        ("torch._utils", "_rebuild_tensor_v2"): lambda *a: _rebuild_tensor_v2(*a),
        ("torch._utils", "_rebuild_parameter"): lambda *a: _rebuild_parameter(*a),
        ("torch._utils", "_rebuild_parameter_with_state"): lambda *a: _rebuild_parameter(*a),
        **{("torch", n): _StorageType(n, d) for n, d in _STORAGE_DTYPES.items()},
    }


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allow-listed globals and reads storages from the zip (cached per key)."""

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, byteorder: str):
        super().__init__(file)
        self._zip, self._prefix, self._byteorder = archive, prefix, byteorder
        self._storages: dict[str, np.ndarray] = {}
        self._allowed = _allowed_globals()

    def find_class(self, module, name):
        try:
            return self._allowed[(module, name)]
        except (KeyError, TypeError):
            raise CheckpointError(f"refusing to load {module}.{name}: not an allow-listed tensor type") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and isinstance(pid[4], int)):
            raise _Corrupt(f"unsupported persistent id in pickle: {pid!r:.100}")
        _, stype, key, _location, numel = pid
        if key not in self._storages:
            self._storages[key] = self._read_storage(key, stype.dtype, numel)
        arr = self._storages[key]
        if arr.dtype != stype.dtype:  # one storage is only ever pickled with one type by torch.save
            raise _Corrupt(f"storage {key} used as both {arr.dtype} and {stype.dtype}")
        return arr

    def _read_storage(self, key, dtype, numel):
        name = f"{self._prefix}/data/{key}"
        try:
            info = self._zip.getinfo(name)
        except KeyError:
            raise _Corrupt(f"missing storage record {name}") from None
        if info.file_size != numel * dtype.itemsize:
            raise _Corrupt(f"storage record {name} has {info.file_size} bytes, expected {numel} x {dtype.itemsize}")
        raw = self._zip.read(info)
        if self._byteorder == "big" and dtype.itemsize > 1:  # swap whole elements, then reinterpret
            return np.frombuffer(raw, np.dtype(f"u{dtype.itemsize}")).byteswap().view(dtype)
        return np.frombuffer(raw, dtype)


def _is_legacy_torch_file(path) -> bool:
    """Legacy (torch < 1.6) checkpoints are a bare pickle stream (or an old tar file), not a zip."""
    with open(path, "rb") as f:
        head = f.read(512)
    return head[:1] == b"\x80" or (len(head) >= 262 and head[257:262] == b"ustar")


def load_torch_file(path) -> object:
    """Unpickle a torch.save zip safely; tensors become contiguous numpy arrays, containers stay as they are."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")

    def bad(reason):
        return CheckpointError(f"{path} is not a PyTorch checkpoint (torch.save zip): {reason}")

    if not zipfile.is_zipfile(path):
        if _is_legacy_torch_file(path):
            raise CheckpointError(f"{path} is a legacy (non-zip, torch < 1.6) PyTorch checkpoint; re-save it with a "
                                  "recent torch: torch.save(torch.load(f), f2)")
        raise bad("not a zip archive (or truncated)")
    try:
        with zipfile.ZipFile(path) as archive:
            pkls = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
            if len(pkls) != 1:
                raise bad(f"expected exactly one '<name>/data.pkl' record, found {len(pkls)}")
            prefix = pkls[0][: -len("/data.pkl")]
            try:
                byteorder = archive.read(f"{prefix}/byteorder").decode("ascii").strip()
            except KeyError:
                byteorder = "little"  # files from torch < 1.10 have no byteorder record and are little-endian
            if byteorder not in ("little", "big"):
                raise bad(f"unknown byteorder record {byteorder!r:.40}")
            with archive.open(pkls[0]) as f:
                return _SafeUnpickler(f, archive, prefix, byteorder).load()
    except CheckpointError:
        raise
    except _Corrupt as e:
        raise bad(str(e)) from None
    except Exception as e:  # zipfile / pickle / zlib errors on corrupt input: one line, no traceback chain
        raise bad(f"{type(e).__name__}: {e}"[:300]) from None


def read_official_checkpoint(path) -> tuple[dict[str, np.ndarray], dict | None]:
    """Return (state_dict, config) of an official checkpoint: `{'state_dict', 'config'}` or a bare state_dict."""
    obj = load_torch_file(path)

    def is_state_dict(d):
        return isinstance(d, dict) and all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in d.items())

    if isinstance(obj, dict) and "state_dict" in obj:
        state_dict, config = obj["state_dict"], obj.get("config")
        if not is_state_dict(state_dict):
            raise CheckpointError(f"{path}: 'state_dict' is a {type(state_dict).__name__} that is not a mapping of "
                                  "names to tensors")
        if config is not None and not isinstance(config, dict):
            raise CheckpointError(f"{path}: 'config' is a {type(config).__name__}, expected a dict")
        return dict(state_dict), config
    if is_state_dict(obj) and obj:
        return dict(obj), None
    found = f"a dict with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, dict) else f"a {type(obj).__name__}"
    raise CheckpointError(f"{path}: expected {{'state_dict': ..., 'config': ...}} or a bare state_dict, found {found}")
