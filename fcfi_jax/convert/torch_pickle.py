"""Read official PyTorch checkpoints (`torch.save` zip files) without torch and without running pickled code.

A torch.save file (torch >= 1.6) is a zip archive holding `<name>/data.pkl` (a pickle, protocol 2) and one raw
storage per tensor in `<name>/data/<key>`. The pickle refers to storages by persistent id
`('storage', <torch.XStorage>, key, location, numel)` and rebuilds tensors with `torch._utils._rebuild_tensor_v2`.

`_SafeUnpickler.find_class` resolves only an explicit allow-list of names (OrderedDict, the tensor/parameter
rebuild functions, the typed storage classes) to local stand-ins; any other global -- `os.system`,
`builtins.eval`, ... -- raises `CheckpointError("refusing to load {module}.{name}: not an allow-listed tensor
type")` before anything is called. Every tensor comes back as a contiguous numpy array (float16, bfloat16 via
ml_dtypes, int64, bool, ...). All failures are raised as `CheckpointError` with a one-line message.

Memory is bounded by the file, whatever the file claims (hostile or corrupt input):
- every tensor record is checked against its storage before anything is allocated (integer size/stride/offset,
  every element inside the storage) and the bytes of all tensors built from a file may not exceed the file's
  size: a tiny file with a stride-0 30000x30000 view of a 4-byte storage is refused, not expanded to 3.6 GB.
  Views that torch itself writes (transposes, slices, small `expand`s) stay within that budget;
- `torch.save` writes storages uncompressed (ZIP_STORED), so a stored record can never be bigger than the file;
  deflate-compressed records (re-zipped files) are read only up to `MAX_COMPRESSED_BYTES` in total, so a 1 MB
  file inflating to 1 GiB is refused from its header, before inflating;
- `data.pkl` is at most `MAX_PICKLE_BYTES` (official ones are ~350 kB): each pickle opcode byte can create at
  most a small Python object, so this bounds the objects the unpickler can build.
"""
from __future__ import annotations

import collections
import os
import pickle
import zipfile

import ml_dtypes
import numpy as np

__all__ = ["CheckpointError", "load_torch_file", "read_official_checkpoint"]


# Official FCFI data.pkl files are ~350 kB (1961 tensors); 8 MiB leaves room for models ~25x larger.
MAX_PICKLE_BYTES = 8 << 20
# torch.save never compresses; this only serves re-zipped files (and bounds what a zip bomb can inflate to).
MAX_COMPRESSED_BYTES = 64 << 20


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


class _Budget:
    """Bytes of tensors built so far from one file; a tensor that would exceed the file size is refused.

    Official checkpoints hold one storage per tensor, so their tensors add up to less than the file."""

    def __init__(self, limit: int):
        self.limit, self.used, self.views = int(limit), 0, {}


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _rebuild_tensor_v2(budget: _Budget, storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    """Stand-in for `torch._utils._rebuild_tensor_v2`: a bounds-checked strided view, copied to a new array.

    Everything is checked with Python integers (no overflow) before numpy allocates anything."""
    if not isinstance(storage, np.ndarray):
        raise _Corrupt(f"malformed tensor record: storage is {type(storage).__name__}, not a storage")
    if not (isinstance(size, (tuple, list)) and isinstance(stride, (tuple, list)) and len(size) == len(stride) <= 32
            and all(map(_is_count, (storage_offset, *size, *stride)))):
        raise _Corrupt(f"malformed tensor record: offset, size and stride must be non-negative integers "
                       f"(size and stride of equal length <= 32), got {_brief(storage_offset)}, {_brief(size)}, "
                       f"{_brief(stride)}")
    size, stride = tuple(size), tuple(stride)
    numel = 1
    for n in size:
        numel *= n
    # as_strided does no bounds checking: make sure the view stays inside the storage (hostile files).
    if numel and storage_offset + sum((n - 1) * s for n, s in zip(size, stride)) >= storage.size:
        raise _Corrupt(f"malformed tensor record: size {size} stride {stride} offset {storage_offset} "
                       f"exceeds a storage of {storage.size} elements")
    if not numel and storage_offset > storage.size:
        raise _Corrupt(f"malformed tensor record: offset {storage_offset} beyond a storage of {storage.size} elements")
    key = (id(storage), storage_offset, size, stride)
    if key in budget.views:  # the same view pickled twice (tied weights): share it, it costs nothing more
        return budget.views[key]
    nbytes = numel * storage.dtype.itemsize
    if budget.used + nbytes > budget.limit:
        raise _Corrupt(f"tensor records expand to more than the file's {budget.limit} bytes (a {size} tensor with "
                       f"stride {stride} over a storage of {storage.size} elements: overlapping or stride-0 views "
                       "are only read while they fit in the file size); re-save such tensors with .clone()")
    budget.used += nbytes
    if numel == 0:
        out = np.zeros(size, storage.dtype)
    else:
        isz = storage.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(storage[storage_offset:], size, tuple(s * isz for s in stride),
                                               writeable=False)
        out = np.array(view, order="C")
    budget.views[key] = out
    return out


def _brief(value, limit: int = 60) -> str:
    """A short description of an untrusted value, safe for deep, shared or huge objects (no recursive repr)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    if isinstance(value, str):
        return repr(value[:limit]) + ("..." if len(value) > limit else "")
    if isinstance(value, (list, tuple, dict)):
        if len(value) <= 8 and all(v is None or isinstance(v, (bool, int, float)) for v in value):
            text = repr(value)   # flat and short: scalars only, so repr cannot recurse
            if len(text) <= limit:
                return text
        return f"a {type(value).__name__} of {len(value)} items"
    return f"a {type(value).__name__}"


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    """Stand-in for `torch._utils._rebuild_parameter(_with_state)`: a Parameter is just its data here."""
    return data


def _allowed_globals(budget: _Budget) -> dict:
    """The allow-list. Fresh stand-ins per load: a hostile BUILD opcode may set attributes on the objects it
    gets (e.g. `__defaults__`, `dtype`), and that must not leak into later loads in the same process."""
    return {
        ("collections", "OrderedDict"): collections.OrderedDict,  # a builtin type: its attributes are read-only
        ("torch._utils", "_rebuild_tensor_v2"): lambda *a: _rebuild_tensor_v2(budget, *a),
        ("torch._utils", "_rebuild_parameter"): lambda *a: _rebuild_parameter(*a),
        ("torch._utils", "_rebuild_parameter_with_state"): lambda *a: _rebuild_parameter(*a),
        **{("torch", n): _StorageType(n, d) for n, d in _STORAGE_DTYPES.items()},
    }


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allow-listed globals and reads storages from the zip (cached per key)."""

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, byteorder: str, file_size: int, progress=None):
        super().__init__(file)
        self._zip, self._prefix, self._byteorder = archive, prefix, byteorder
        self._progress = progress
        if progress is not None:   # the storage records in the archive: an upper bound on what the pickle reads
            self._n_records = sum(n.startswith(f"{prefix}/data/") for n in archive.namelist())
        self._storages: dict[str, np.ndarray] = {}
        self._file_size, self._inflated = file_size, 0
        self._allowed = _allowed_globals(_Budget(file_size))

    def find_class(self, module, name):
        try:
            return self._allowed[(module, name)]
        except (KeyError, TypeError):
            raise CheckpointError(f"refusing to load {module}.{name}: not an allow-listed tensor type") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)
                and isinstance(pid[2], str) and len(pid[2]) <= 64 and _is_count(pid[4])):
            raise _Corrupt(f"unsupported persistent id in pickle: {pid!r:.100}")
        _, stype, key, _location, numel = pid
        if key not in self._storages:
            self._storages[key] = self._read_storage(key, stype.dtype, numel)
            if self._progress is not None:
                self._progress(len(self._storages), self._n_records)
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
        self._check_member(info)
        raw = self._zip.read(info)
        if self._byteorder == "big" and dtype.itemsize > 1:  # swap whole elements, then reinterpret
            return np.frombuffer(raw, np.dtype(f"u{dtype.itemsize}")).byteswap().view(dtype)
        return np.frombuffer(raw, dtype)


    def _check_member(self, info: zipfile.ZipInfo):
        """Refuse, from the zip header and before inflating, a record bigger than the file could hold."""
        _check_member(info, self._file_size, self._inflated)
        if info.compress_type != zipfile.ZIP_STORED:
            self._inflated += info.file_size


def _check_member(info: zipfile.ZipInfo, file_size: int, inflated: int = 0):
    if info.compress_type == zipfile.ZIP_STORED:
        if info.file_size > file_size:
            raise _Corrupt(f"record {info.filename} claims {info.file_size} bytes in a file of {file_size} bytes")
    elif inflated + info.file_size > MAX_COMPRESSED_BYTES:
        raise CheckpointError(
            f"refusing to inflate record {info.filename} ({info.compress_size} bytes compressed, {info.file_size} "
            f"bytes inflated): torch.save writes storages uncompressed and fcfi_jax inflates at most "
            f"{MAX_COMPRESSED_BYTES >> 20} MiB per file; re-save the checkpoint with torch.save")


def _is_legacy_torch_file(path) -> bool:
    """Legacy (torch < 1.6) checkpoints are a bare pickle stream (or an old tar file), not a zip."""
    with open(path, "rb") as f:
        head = f.read(512)
    return head[:1] == b"\x80" or (len(head) >= 262 and head[257:262] == b"ustar")


def load_torch_file(path, progress=None) -> object:
    """Unpickle a torch.save zip safely; tensors become contiguous numpy arrays, containers stay as they are.

    progress(done, total): called after each storage record is read (records, i.e. tensors, of the archive)."""
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
                bo = archive.getinfo(f"{prefix}/byteorder")
                if bo.file_size > 16:
                    raise _Corrupt(f"byteorder record of {bo.file_size} bytes")
                byteorder = archive.read(bo).decode("ascii").strip()
            except KeyError:
                byteorder = "little"  # files from torch < 1.10 have no byteorder record and are little-endian
            if byteorder not in ("little", "big"):
                raise bad(f"unknown byteorder record {byteorder!r:.40}")
            file_size = os.path.getsize(path)
            info = archive.getinfo(pkls[0])
            _check_member(info, file_size)
            if info.file_size > MAX_PICKLE_BYTES:
                raise CheckpointError(f"refusing to unpickle {path}: its {pkls[0]} is {info.file_size} bytes, more "
                                      f"than the {MAX_PICKLE_BYTES >> 20} MiB fcfi_jax reads (official ones are "
                                      "~350 kB); is it a checkpoint of a much larger model?")
            with archive.open(info) as f:
                return _SafeUnpickler(f, archive, prefix, byteorder, file_size, progress).load()
    except CheckpointError:
        raise
    except _Corrupt as e:
        raise bad(str(e)) from None
    except Exception as e:  # zipfile / pickle / zlib errors on corrupt input: one line, no traceback chain
        raise bad(f"{type(e).__name__}: {e}"[:300]) from None


def read_official_checkpoint(path, progress=None) -> tuple[dict[str, np.ndarray], dict | None]:
    """Return (state_dict, config) of an official checkpoint: `{'state_dict', 'config'}` or a bare state_dict.

    The config comes back unchecked: `fcfi_jax.convert.config_schema` validates it before anything uses it.
    progress: as in `load_torch_file`."""
    return official_parts(load_torch_file(path, progress), path)


def official_parts(obj, path) -> tuple[dict[str, np.ndarray], dict | None]:
    """`read_official_checkpoint` of a file's already loaded content `obj` (path: for messages)."""

    def is_state_dict(d):
        return isinstance(d, dict) and all(isinstance(k, str) and len(k) <= 512 and isinstance(v, np.ndarray)
                                           for k, v in d.items())

    if isinstance(obj, dict) and "state_dict" in obj:
        state_dict, config = obj["state_dict"], obj.get("config")
        if not is_state_dict(state_dict):
            raise CheckpointError(f"{path}: 'state_dict' is {_brief(state_dict)}, not a mapping of names (at most "
                                  "512 characters) to tensors")
        if config is not None and not isinstance(config, dict):
            raise CheckpointError(f"{path}: 'config' is {_brief(config)}, expected a dict")
        return dict(state_dict), config
    if is_state_dict(obj) and obj:
        return dict(obj), None
    if isinstance(obj, dict):
        keys = sorted(k[:40] if isinstance(k, str) else _brief(k, 40) for k in list(obj)[:64])
        found = f"a dict with keys {keys[:8]}"
    else:
        found = _brief(obj)
    raise CheckpointError(f"{path}: expected {{'state_dict': ..., 'config': ...}} or a bare state_dict, found {found}")
