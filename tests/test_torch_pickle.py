"""Torch-free checkpoint reader: bit-equality with torch.load(weights_only=True), and refusal of hostile files."""
import collections
import io
import json
import pickle
import types
import zipfile

import ml_dtypes
import numpy as np
import pytest

from fcfi_jax.convert.torch_pickle import CheckpointError, load_torch_file, read_official_checkpoint

torch = pytest.importorskip("torch")


def _to_np(t):
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def assert_same(ours, ref, where="obj"):
    """Walk containers; tensors must match dtype, shape and bytes exactly (NaN payloads included)."""
    if isinstance(ref, torch.Tensor):
        ref = _to_np(ref)
        assert isinstance(ours, np.ndarray), where
        assert (ours.dtype, ours.shape) == (ref.dtype, ref.shape), where
        assert ours.flags.c_contiguous and ours.tobytes() == ref.tobytes(), where
    elif isinstance(ref, dict):
        assert type(ours) is type(ref) and list(ours) == list(ref), where
        for k in ref:
            assert_same(ours[k], ref[k], f"{where}[{k!r}]")
    elif isinstance(ref, (list, tuple)):
        assert type(ours) is type(ref) and len(ours) == len(ref), where
        for i, (a, b) in enumerate(zip(ours, ref)):
            assert_same(a, b, f"{where}[{i}]")
    else:
        assert type(ours) is type(ref) and ours == ref, where


def save_and_check(obj, path):
    torch.save(obj, path)
    ours = load_torch_file(path)
    assert_same(ours, torch.load(path, weights_only=True))
    return ours


def test_dtypes_bit_equal(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, generator=g)
    x[0, 0] = float("nan")
    sd = collections.OrderedDict(
        f32=x, f64=x.double(), f16=x.half(), bf16=x.bfloat16(),
        i64=torch.arange(-6, 6).reshape(3, 4), i32=torch.arange(5, dtype=torch.int32),
        i16=torch.arange(5, dtype=torch.int16), i8=torch.arange(-3, 3, dtype=torch.int8),
        u8=torch.arange(250, 256, dtype=torch.uint8), b=torch.tensor([[True, False], [False, True]]),
        scalar=torch.tensor(2.5), scalar_long=torch.tensor(7), empty=torch.zeros(0, 3),
        param=torch.nn.Parameter(torch.ones(2, 2)),
    )
    ours = save_and_check(sd, tmp_path / "dtypes.pth")
    assert type(ours) is collections.OrderedDict
    assert ours["bf16"].dtype == ml_dtypes.bfloat16 and ours["f16"].dtype == np.float16
    assert ours["i64"].dtype == np.int64 and ours["b"].dtype == np.bool_
    assert ours["scalar"].shape == () and ours["empty"].shape == (0, 3)


def test_views_and_shared_storage(tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    obj = {"t": base.t(), "slice": base[1:, 2:5], "step": base[::2, ::3], "base": base,
           "expand": torch.arange(3.0).reshape(3, 1).expand(3, 4), "perm": base.reshape(2, 3, 4).permute(2, 0, 1)}
    assert obj["slice"].storage_offset() > 0 and not obj["t"].is_contiguous()
    ours = save_and_check(obj, tmp_path / "views.pth")
    with zipfile.ZipFile(tmp_path / "views.pth") as z:  # `base` and its 4 views share one storage record
        assert sum("/data/" in n for n in z.namelist()) == 2
    ours["t"][0, 0] = -1  # copies, not views of each other or of the read-only zip buffer
    assert ours["base"][0, 0] == 0 and ours["slice"].flags.writeable


def test_nested_config(tmp_path):
    cfg = {"class": "isegm.model.is_hrnet_model.HRNetModel",
           "params": {"width": {"type": "builtin", "value": 18, "specified": True},
                      "norm_layer": {"type": "class", "value": "torch.nn.modules.batchnorm.BatchNorm2d",
                                     "specified": False},
                      "misc": {"type": "builtin", "value": [1.5, None, (1, 2, "x"), [True, -3]], "specified": False},
                      "big": {"type": "builtin", "value": 2 ** 70, "specified": False},
                      "unicode": {"type": "builtin", "value": "häh ✓", "specified": False}}}
    obj = {"state_dict": collections.OrderedDict(w=torch.ones(2, 3)), "config": cfg}
    save_and_check(obj, tmp_path / "cfg.pth")
    sd, config = read_official_checkpoint(tmp_path / "cfg.pth")
    assert config == cfg and list(sd) == ["w"] and sd["w"].shape == (2, 3)


def test_read_official_forms(tmp_path):
    torch.save(collections.OrderedDict(a=torch.zeros(2), b=torch.ones(1)), tmp_path / "bare.pth")
    sd, config = read_official_checkpoint(tmp_path / "bare.pth")
    assert config is None and list(sd) == ["a", "b"]
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="found a list"):
        read_official_checkpoint(tmp_path / "list.pth")
    torch.save({"model": {"a": torch.zeros(1)}, "epoch": 3}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"found a dict with keys \['epoch', 'model'\]"):
        read_official_checkpoint(tmp_path / "other.pth")


def test_real_fixture(fixtures_dir):
    path = fixtures_dir / "hrnet18s_random.pth"
    sd, config = read_official_checkpoint(path)
    ref = torch.load(path, weights_only=True)
    assert len(sd) == 1961 and list(sd) == list(ref["state_dict"])
    assert_same(sd, dict(ref["state_dict"]))
    assert config == ref["config"]
    assert json.loads(json.dumps(config)) == json.loads((fixtures_dir / "hrnet18s_config.json").read_text())


def test_big_endian_archive(tmp_path):
    """A file written on a big-endian machine: storages byte-swapped, `byteorder` record says 'big'."""
    obj = {"f": torch.randn(3, 4), "h": torch.randn(5).bfloat16(), "l": torch.arange(4), "b": torch.tensor([True])}
    torch.save(obj, tmp_path / "le.pth")
    dtypes = {k: _to_np(v).dtype.itemsize for k, v in obj.items()}
    with zipfile.ZipFile(tmp_path / "le.pth") as src, zipfile.ZipFile(tmp_path / "be.pth", "w") as dst:
        keys = {}  # storage key -> itemsize, from the order torch writes them (dict order)
        for i, k in enumerate(obj):
            keys[str(i)] = dtypes[k]
        for info in src.infolist():
            data = src.read(info)
            name = info.filename
            if name.endswith("/byteorder"):
                data = b"big"
            elif "/data/" in name:
                size = keys[name.rsplit("/", 1)[1]]
                data = np.frombuffer(data, f"u{size}").byteswap().tobytes() if size > 1 else data
            dst.writestr(name, data)
    assert_same(load_torch_file(tmp_path / "be.pth"), obj)


# ----------------------------------------------------------------------------------------- hostile / broken input

def _fake_torch_zip(path, pickle_bytes):
    """A zip laid out like torch.save output, with the given data.pkl."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pickle_bytes)
        z.writestr("archive/.format_version", "1")
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
    return path


def _call_global(module, name, arg):
    """Protocol-2 pickle of `module.name(arg)`: GLOBAL, BINUNICODE, TUPLE1, REDUCE, STOP."""
    a = arg.encode()
    return b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"X" + len(a).to_bytes(4, "little") + a + b"\x85R."


@pytest.mark.parametrize("module", ["os", "posix"])
def test_refuses_os_system(tmp_path, module):
    marker = tmp_path / "pwned"
    payload = _call_global(module, "system", f"touch {marker}")
    path = _fake_torch_zip(tmp_path / "evil.pth", payload)
    with pytest.raises(CheckpointError, match=rf"^refusing to load {module}\.system: not an allow-listed tensor type$"):
        load_torch_file(path)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refusing to load"):
        read_official_checkpoint(path)
    assert not marker.exists()
    # The payload is live: a plain pickle.loads would have run the command.
    if module == "os":
        pickle.loads(_call_global(module, "system", f"touch {tmp_path / 'control'}"))
        assert (tmp_path / "control").exists()


def test_refuses_eval_and_other_globals(tmp_path):
    path = _fake_torch_zip(tmp_path / "eval.pth", _call_global("builtins", "eval", "__import__('os').getpid()"))
    with pytest.raises(CheckpointError, match=r"^refusing to load builtins\.eval: not an allow-listed tensor type$"):
        load_torch_file(path)
    # A global hidden inside an otherwise normal checkpoint (after a real tensor) is refused as well.
    torch.save({"a": torch.ones(2), "b": 1}, tmp_path / "ok.pth")
    with zipfile.ZipFile(tmp_path / "ok.pth") as src, zipfile.ZipFile(tmp_path / "popen.pth", "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("/data.pkl"):
                data = data.replace(b"collections\nOrderedDict\n", b"subprocess\nPopen\n")
            dst.writestr(info, data)
    with pytest.raises(CheckpointError, match=r"^refusing to load subprocess\.Popen: not an allow-listed"):
        load_torch_file(tmp_path / "popen.pth")


def _tensor_record_pickle(storage_numel, offset, size, stride):
    """data.pkl holding one `_rebuild_tensor_v2` record, written with the real torch globals."""

    class Rec:
        def __reduce__(self):
            return torch._utils._rebuild_tensor_v2, (Storage(), offset, size, stride, False, collections.OrderedDict())

    class Storage:
        pass

    class P(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", storage_numel) if isinstance(obj, Storage) else None

    buf = io.BytesIO()
    P(buf, protocol=2).dump({"a": Rec()})
    return buf.getvalue()


@pytest.mark.parametrize("offset,size,stride,ok", [
    (0, (2, 3), (3, 1), True), (1, (2, 2), (1, 3), True), (5, (), (), True),
    (0, (4,), (1000,), False), (6, (1,), (1,), False), (0, (2, 3), (-1, 1), False), (0, (2,), (1, 1), False)])
def test_tensor_record_bounds(tmp_path, offset, size, stride, ok):
    """as_strided does no bounds checks: a view outside its storage must be refused, not read."""
    path = _fake_torch_zip(tmp_path / "rec.pth", _tensor_record_pickle(6, offset, size, stride))
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("archive/data/0", np.arange(6, dtype="<f4").tobytes())
    if ok:
        ref = torch.as_strided(torch.arange(6.0), size, stride, offset)
        assert_same(load_torch_file(path), {"a": ref})
    else:
        with pytest.raises(CheckpointError, match="not a PyTorch checkpoint.*malformed tensor record"):
            load_torch_file(path)


def test_hostile_build_does_not_poison_later_loads(tmp_path):
    """BUILD on the allow-listed stand-ins (set __defaults__ / dtype) must not affect the next load."""
    state = b"N}X\x0c\x00\x00\x00__defaults__K\x07\x85s\x86b"  # (None, {'__defaults__': (7,)}) BUILD
    payload = (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n" + state + b"0"
               + b"ctorch\nFloatStorage\n}X\x05\x00\x00\x00dtypeX\x01\x00\x00\x00xsb0K\x01.")
    def f(x=0):
        return x
    ns = types.SimpleNamespace()

    class Probe(pickle.Unpickler):  # the payload is live: BUILD really sets those attributes
        def find_class(self, module, name):
            return f if name == "_rebuild_tensor_v2" else ns
    assert Probe(io.BytesIO(payload)).load() == 1 and f.__defaults__ == (7,) and ns.dtype == "x"
    assert load_torch_file(_fake_torch_zip(tmp_path / "build.pth", payload)) == 1
    save_and_check({"a": torch.arange(6.0).reshape(2, 3).t()}, tmp_path / "ok.pth")


def test_broken_files(tmp_path, fixtures_dir):
    with pytest.raises(CheckpointError, match="^checkpoint not found: .*nope.pth$"):
        load_torch_file(tmp_path / "nope.pth")
    real = (fixtures_dir / "hrnet18s_random.pth").read_bytes()
    (tmp_path / "half.pth").write_bytes(real[: len(real) // 2])
    (tmp_path / "text.pth").write_text("hello, this is not a checkpoint\n" * 10)
    _fake_torch_zip(tmp_path / "nodata.pth", b"")
    with zipfile.ZipFile(tmp_path / "nopkl.pth", "w") as z:
        z.writestr("archive/version", "3\n")
    for name in ["half.pth", "text.pth", "nodata.pth", "nopkl.pth"]:
        with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint \\(torch.save zip\\)") as e:
            load_torch_file(tmp_path / name)
        err = e.value  # one line, and no chained zipfile/pickle traceback
        assert "\n" not in str(err) and err.__cause__ is None, name
        assert err.__context__ is None or err.__suppress_context__, name


def test_missing_storage_and_corrupt_record(tmp_path):
    torch.save({"a": torch.arange(6.0)}, tmp_path / "ok.pth")
    with zipfile.ZipFile(tmp_path / "ok.pth") as src:
        entries = [(i, src.read(i)) for i in src.infolist()]
    with zipfile.ZipFile(tmp_path / "missing.pth", "w") as dst:
        for info, data in entries:
            if "/data/" not in info.filename:
                dst.writestr(info, data)
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint.*missing storage record ok/data/0"):
        load_torch_file(tmp_path / "missing.pth")
    with zipfile.ZipFile(tmp_path / "short.pth", "w") as dst:
        for info, data in entries:
            dst.writestr(info.filename, data[:8] if "/data/" in info.filename else data)
    with pytest.raises(CheckpointError, match="has 8 bytes, expected 6 x 4"):
        load_torch_file(tmp_path / "short.pth")


def test_legacy_format_message(tmp_path):
    torch.save({"a": torch.ones(2)}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match=r"legacy .*re-save it with a recent torch: torch.save\(torch.load"):
        load_torch_file(tmp_path / "legacy.pth")
