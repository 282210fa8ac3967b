"""The allow-listed unpickler: what it builds, what it refuses, what it reports; no torch needed."""

from __future__ import annotations

import argparse
import io
import os
import pickle
import pickletools
from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptkit.core.errors import CkptkitError, CorruptCheckpointError, UnsafeCheckpointError
from ckptkit.formats.torch import structure
from ckptkit.io.unpickler import (
    DANGEROUS_GLOBALS,
    OpaqueObject,
    PickledArray,
    PickleFinding,
    SafeUnpickler,
    StorageRef,
    TensorRecord,
    dangerous_reason,
    load,
    resolve_global,
)

# A training checkpoint's data.pkl as torch.save writes it: tensors, an optimizer, a Namespace, numpy.
_TORCH_PICKLE = (
    b"\x80\x02}q\x00(X\x05\x00\x00\x00epochq\x01K\x03X\x01\x00\x00\x00wq\x02ctorch._utils\n"
    b"_rebuild_tensor_v2\nq\x03((X\x07\x00\x00\x00storageq\x04ctorch\nFloatStorage\nq\x05X\x01\x00\x00\x00"
    b"0q\x06X\x03\x00\x00\x00cpuq\x07K\x06tq\x08QK\x00K\x02K\x03\x86q\tK\x03K\x01\x86q\n\x89"
    b"ccollections\nOrderedDict\nq\x0b)Rq\x0ctq\rRq\x0eX\x02\x00\x00\x00nsq\x0fcargparse\nNamespace\n"
    b"q\x10)\x81q\x11}q\x12X\x02\x00\x00\x00lrq\x13G?\xb9\x99\x99\x99\x99\x99\x9asbX\x03\x00\x00\x00"
    b"rngq\x14cnumpy.core.multiarray\nscalar\nq\x15cnumpy\ndtype\nq\x16X\x02\x00\x00\x00f8q\x17\x89"
    b"\x88\x87q\x18Rq\x19(K\x03X\x01\x00\x00\x00<q\x1aNNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tq\x1bb"
    b"c_codecs\nencode\nq\x1cX\t\x00\x00\x00\x00\x00\x00\x00\x00\x00\xc3\xb0?q\x1dX\x06\x00\x00"
    b'\x00latin1q\x1e\x86q\x1fRq \x86q!Rq"u.'
)


def _unpickle(data: bytes, strict: bool = True):
    obj, unpickler = load(io.BytesIO(data), "test.pkl", strict=strict)
    return obj, unpickler.findings


def _call(module: str, name: str, *args: str) -> bytes:
    """A protocol-2 pickle that calls module.name(*args) with string arguments."""
    body = b"".join(b"X" + len(a.encode()).to_bytes(4, "little") + a.encode() for a in args)
    return b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"(" + body + b"tR."


class Payload:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_os_system_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    data = pickle.dumps({"x": Payload(f"touch {marker}")}, protocol=2)
    with pytest.raises(UnsafeCheckpointError) as err:
        _unpickle(data)
    assert f"{os.system.__module__}.system" in str(err.value)
    assert not marker.exists()


def test_collect_mode_records_every_finding_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    data = pickle.dumps(
        {"a": Payload(f"touch {marker}"), "b": argparse.Namespace(lr=0.1), "c": Payload("true")}, protocol=2
    )
    obj, findings = _unpickle(data, strict=False)
    assert not marker.exists()
    reason = dangerous_reason(os.system.__module__, "system") or ""
    assert findings == [
        PickleFinding(os.system.__module__, "system", "error", reason, "pickle.call", site="a", more_sites=1),
        PickleFinding("argparse", "Namespace", "warning", "unknown class, kept as a placeholder"),
    ]
    assert isinstance(obj["a"], OpaqueObject) and obj["a"].args == (f"touch {marker}",)
    assert findings[0].qualname == f"{os.system.__module__}.system"


@pytest.mark.parametrize(
    ("module", "name", "shown"),
    [
        ("os", "system", "os.system"),
        ("posix", "system", "posix.system"),
        ("nt", "system", "nt.system"),
        ("subprocess", "Popen", "subprocess.Popen"),
        ("subprocess", "check_output", "subprocess.check_output"),
        ("builtins", "eval", "builtins.eval"),
        ("__builtin__", "exec", "builtins.exec"),
        ("builtins", "getattr", "builtins.getattr"),
        ("builtins", "__import__", "builtins.__import__"),
        ("builtins", "open", "builtins.open"),
        ("builtins", "compile", "builtins.compile"),
        ("runpy", "run_path", "runpy.run_path"),
        ("importlib", "import_module", "importlib.import_module"),
        ("sys", "exit", "sys.exit"),
        ("shutil", "rmtree", "shutil.rmtree"),
        ("socket", "create_connection", "socket.create_connection"),
        ("pty", "spawn", "pty.spawn"),
        ("webbrowser", "open", "webbrowser.open"),
        ("pickle", "loads", "pickle.loads"),
        ("marshal", "loads", "marshal.loads"),
        ("dill", "loads", "dill.loads"),
        ("types", "CodeType", "types.CodeType"),
        ("types", "FunctionType", "types.FunctionType"),
        ("ctypes", "CDLL", "ctypes.CDLL"),
        ("code", "interact", "code.interact"),
        ("multiprocessing.util", "spawnv_passfds", "multiprocessing.util.spawnv_passfds"),
        ("asyncio.subprocess", "create_subprocess_shell", "asyncio.subprocess.create_subprocess_shell"),
        ("torch.hub", "load", "torch.hub.load"),
        ("torch.storage", "_load_from_bytes", "torch.storage._load_from_bytes"),
        ("operator", "attrgetter", "operator.attrgetter"),
    ],
)
def test_dangerous_globals_are_refused_by_name(module, name, shown):
    data = _call(module, name, "echo hi")
    with pytest.raises(UnsafeCheckpointError, match=shown.replace(".", r"\.")):
        _unpickle(data)
    _obj, findings = _unpickle(data, strict=False)
    assert [(f.module + "." + f.name, f.severity) for f in findings] == [(shown, "error")]


def test_danger_table_is_well_formed():
    modules = [m for m, _names, _why in DANGEROUS_GLOBALS]
    assert len(modules) == len(set(modules))
    assert all(why for _m, _n, why in DANGEROUS_GLOBALS)
    assert dangerous_reason("collections", "OrderedDict") is None
    assert dangerous_reason("builtins", "set") is None
    assert dangerous_reason("os.path", "join") is not None  # submodules of a refused module too


def test_unknown_classes_become_placeholders_with_their_state():
    data = pickle.dumps({"ns": argparse.Namespace(lr=0.5, tags=["a"]), "od": OrderedDict(k=1)}, protocol=2)
    obj, findings = _unpickle(data)
    ns = obj["ns"]
    assert isinstance(ns, OpaqueObject)
    assert type(ns).qualname() == "argparse.Namespace"
    assert repr(ns) == "<opaque argparse.Namespace>"
    assert ns.state == {"lr": 0.5, "tags": ["a"]}
    assert obj["od"] == OrderedDict(k=1)
    assert [f.severity for f in findings] == ["warning"]


class _Listish(list):
    pass


class _Dictish(dict):
    pass


def test_placeholders_take_list_and_dict_items():
    data = pickle.dumps({"l": _Listish([1, 2]), "d": _Dictish(a=3)}, protocol=2)
    obj, _ = _unpickle(data)
    assert obj["l"].list_items == [1, 2]
    assert obj["d"].dict_items == {"a": 3}


def test_plain_data_builtins_and_bytes():
    value = {
        "s": {1, 2},
        "f": frozenset({3}),
        "c": complex(1, 2),
        "sl": slice(1, 5, 2),
        "b": b"\x00\xff",
        "ba": bytearray(b"xy"),
    }
    obj, findings = _unpickle(pickle.dumps(value, protocol=2))
    assert obj == value
    assert findings == []


def test_numpy_scalars_and_arrays_are_rebuilt_without_numpy_pickle_code():
    value = [np.float32(1.5), np.int64(-3), np.arange(6, dtype=">i2").reshape(2, 3), np.asfortranarray(np.eye(2))]
    obj, findings = _unpickle(pickle.dumps(value, protocol=2))
    assert findings == []
    assert obj[0] == np.float32(1.5) and obj[0].dtype == np.float32
    assert obj[1] == -3
    assert isinstance(obj[2], PickledArray) and obj[2].array is not None
    assert obj[2].array.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert obj[3].array.tolist() == [[1.0, 0.0], [0.0, 1.0]]


def test_object_arrays_are_refused():
    with pytest.raises(CorruptCheckpointError, match="objects"):
        _unpickle(pickle.dumps(np.array([None, 1], dtype=object), protocol=2))


def test_byte_strings_are_not_built_from_sizes():
    # bytearray(10**12) would allocate a terabyte before anything could check it.
    data = b"\x80\x02c__builtin__\nbytearray\n\x8a\x05\x00\x10\xa5\xd4\xe8\x85R."
    with pytest.raises(CorruptCheckpointError, match="bytearray"):
        _unpickle(data)


def test_attributes_cannot_be_set_on_allowed_callables():
    # GLOBAL collections.OrderedDict, then BUILD with a (None, {"x": 1}) slot state: setattr on it.
    data = b"\x80\x02ccollections\nOrderedDict\nN}X\x01\x00\x00\x00xK\x01s\x86b."
    with pytest.raises(CorruptCheckpointError, match=r"changes the state of collections\.OrderedDict"):
        _unpickle(data)


def test_build_cannot_rewrite_a_checked_tensor_record():
    # A valid tensor, then BUILD with a tuple state: a frozen dataclass would take it field by field.
    tensor = _TORCH_PICKLE[_TORCH_PICKLE.index(b"ctorch._utils") : _TORCH_PICKLE.index(b"X\x02\x00\x00\x00ns")]
    data = b"\x80\x02" + tensor + b"(NNK\x00(J\x00\x00\x10\x00t(J\xff\xff\xff\xfftt" + b"b."
    with pytest.raises(CorruptCheckpointError, match="changes the state of a TensorRecord"):
        _unpickle(data)


def test_dotted_names_reaching_dunders_are_dangerous():
    data = b"\x80\x02ccollections\nOrderedDict.__init__.__globals__\n."
    with pytest.raises(UnsafeCheckpointError, match="interpreter internals"):
        _unpickle(data)
    _obj, findings = _unpickle(data, strict=False)
    assert [f.severity for f in findings] == ["error"]


@pytest.mark.parametrize("opcodes", [b"}", b"c__builtin__\nset\n", b"c__builtin__\nfrozenset\n"])
def test_deeply_nested_tuples_are_refused_before_hashing(opcodes):
    # Hashing a million nested tuples recurses in C without a check: it would crash the process.
    deep = b")" + b"\x85" * 1_000_000
    body = {b"}": deep + b"K\x01s", b"c__builtin__\nset\n": b"(" + deep + b"l\x85R"}
    data = b"\x80\x02" + opcodes + body.get(opcodes, b"(" + deep + b"l\x85R") + b"."
    with pytest.raises(CorruptCheckpointError, match="nests tuples more than 200 levels"):
        _unpickle(data)


def test_shared_tuples_as_keys_are_measured_not_hashed():
    # t0 = (); t_i = (t_{i-1}, t_{i-1}): hashing t_60 takes 2**60 steps, and so would a naive walk.
    parts = [b"\x80\x02})q\x010"]
    for i in range(1, 61):
        parts.append(b"h" + bytes([i]) + b"h" + bytes([i]) + b"\x86q" + bytes([i + 1]) + b"0")
    parts.append(b"h=K\x01s.")
    with pytest.raises(CorruptCheckpointError, match="expands to more than 5,000,000 items"):
        _unpickle(b"".join(parts))


def test_building_too_many_objects_is_refused(monkeypatch):
    monkeypatch.setenv("CKPTKIT_MAX_PICKLE_OBJECTS", "1000")
    with pytest.raises(CorruptCheckpointError, match="builds more than 1,000 objects"):
        _unpickle(b"\x80\x02(" + b"}" * 1001 + b"l.")


def test_storages_become_references_and_tensors_records():
    # What torch.save writes for a float16 tensor of 6 elements viewed as 2x3 from element 0.
    data = (
        b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nHalfStorage\n"
        b"X\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x06tQK\x00K\x02K\x03\x86K\x03K\x01\x86\x89"
        b"ccollections\nOrderedDict\n)RtR."
    )
    obj, unpickler = load(io.BytesIO(data), "t.pkl")
    assert isinstance(obj, TensorRecord)
    assert obj.dtype.name == "float16" and obj.shape == (2, 3) and obj.stride == (3, 1) and obj.offset == 0
    assert obj.is_contiguous() and obj.storage_span() == 6
    assert unpickler.storages == {"0": StorageRef("0", obj.storage.storage, "cpu", 12)}
    assert unpickler.findings == []


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not a pickle",
        b"\x80\x02(",  # truncated
        b"\x80\x02X\xff\xff\xff\x7f",  # string longer than the data
        b"\x80\x02(X\x07\x00\x00\x00storageK\x01tQ.",  # malformed persistent id
        b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(K\x01K\x02K\x03K\x04tR.",  # storage is not a storage
    ],
)
def test_broken_pickles_raise_corrupt(data):
    with pytest.raises(CorruptCheckpointError):
        _unpickle(data)


def test_every_opcode_of_a_torch_protocol_is_handled():
    # Protocol 4 and 5 pickles (torch.save(pickle_protocol=4)) use FRAME, MEMOIZE and STACK_GLOBAL.
    value = {"ns": argparse.Namespace(a=1), "t": (1, 2.5, "x", None, True)}
    for protocol in (0, 1, 2, 3, 4, 5):
        obj, _ = _unpickle(pickle.dumps(value, protocol=protocol))
        assert obj["t"] == value["t"]
        assert obj["ns"].state == {"a": 1}
        ops = {op.name for op, _arg, _pos in pickletools.genops(pickle.dumps(value, protocol=protocol))}
        assert ops


def test_deep_nesting_is_refused_not_crashed():
    depth = 50_000
    data = b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."
    obj, _ = _unpickle(data)  # the C unpickler does not recurse
    with pytest.raises(CorruptCheckpointError, match="levels deep"):
        structure.flatten({"x": obj})


def test_shared_sub_objects_cannot_expand_without_bound(monkeypatch):
    # l0 = []; l1 = [l0, l0]; ... each level doubles the paths through the tree.
    parts = [b"\x80\x02]q\x00"]
    for i in range(1, 64):
        parts.append(b"(h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"lq" + bytes([i]))
    data = b"".join(parts) + b"."
    obj, _ = _unpickle(data)
    monkeypatch.setenv("CKPTKIT_MAX_PICKLE_OBJECTS", "10000")
    with pytest.raises(CorruptCheckpointError, match="expands"):
        structure.flatten({"x": obj})


def test_forged_memo_index_costs_nothing():
    # LONG_BINPUT 0x7fffffff: the C unpickler would size its memo for two billion entries.
    obj, _ = _unpickle(b"\x80\x02K\x07r\xff\xff\xff\x7f.")
    assert obj == 7


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_torch_pickles_fail_only_with_ckptkit_errors(data):
    raw = bytearray(_TORCH_PICKLE)
    for _ in range(data.draw(st.integers(1, 6))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        action = data.draw(st.sampled_from(["set", "cut", "insert"]))
        if action == "set":
            raw[pos] = data.draw(st.integers(0, 255))
        elif action == "cut":
            del raw[pos : pos + data.draw(st.integers(1, 20))]
        else:
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
    try:
        obj, _ = _unpickle(bytes(raw), strict=data.draw(st.booleans()))
        structure.flatten(obj)
    except CkptkitError:
        pass


def test_flattened_torch_pickle_gives_json_extras():
    obj, findings = _unpickle(_TORCH_PICKLE)
    tree = structure.flatten(obj)
    assert list(tree.tensors) == ["w"]
    assert tree.tensors["w"].shape == (2, 3)
    assert tree.extras == {"epoch": 3, "ns": "<opaque argparse.Namespace>", "ns.lr": 0.1, "rng": 1.0}
    assert type(tree.extras["rng"]) is float
    assert [f.qualname for f in findings] == ["argparse.Namespace"]


def test_cycles_are_cut():
    cyc: list = [1]
    cyc.append(cyc)
    obj, _ = _unpickle(pickle.dumps({"c": cyc}, protocol=2))
    tree = structure.flatten(obj)
    assert tree.extras == {"c.0": 1, "c.1": "<cycle>"}


def test_unpickler_can_be_used_directly_on_a_file():
    unpickler = SafeUnpickler(io.BytesIO(pickle.dumps({"a": 1}, protocol=2)), strict=True)
    assert unpickler.load() == {"a": 1}
    assert unpickler.findings == []


def _p4(*parts: bytes) -> bytes:
    return b"\x80\x04" + b"".join(parts) + b"."


def _s(text: str) -> bytes:
    return b"\x8c" + bytes([len(text)]) + text.encode()


def _g(module: str, name: str) -> bytes:
    return _s(module) + _s(name) + b"\x93"


@pytest.mark.parametrize(
    ("module", "name", "status", "resolved"),
    [
        ("torch", "serialization.load", "dangerous", "torch.serialization.load"),
        ("pathlib", "os.system", "dangerous", "os.system"),
        ("tempfile", "_os.system", "dangerous", "os.system"),
        ("numpy", "lib._npyio_impl.load", "dangerous", "numpy.lib._npyio_impl.load"),
        ("torch", "_utils._rebuild_tensor_v2", "allowed", "torch._utils._rebuild_tensor_v2"),
        ("torch.serialization", "_get_layout", "allowed", "torch.serialization._get_layout"),
        ("idlelib.run", "Executive.runcode", "dangerous", "idlelib.run.Executive.runcode"),
        ("mypackage", "Outer.Inner", "unknown", "mypackage.Outer.Inner"),
        ("mypackage", "helpers.os_alias", "dangerous", "mypackage.helpers.os_alias"),
        ("__builtin__", "exec", "dangerous", "builtins.exec"),
    ],
)
def test_dotted_names_are_judged_by_what_they_reach(module, name, status, resolved):
    allowed = {("torch._utils", "_rebuild_tensor_v2"), ("torch.serialization", "_get_layout")}
    res = resolve_global(module, name, lambda m, n: (m, n) in allowed)
    assert (res.status, res.qualname, res.written) == (status, resolved, f"{module}.{name}")


UNKNOWN = "pickle.unknown-global"


def test_calls_and_instances_of_unknown_classes_are_told_apart():
    cases = {
        "newobj": (
            _p4(b"}", _s("x"), _g("mypkg", "Config"), b")\x81}", _s("a"), b"K\x01sb", b"s"),
            "pickle.unknown-global",
        ),
        "reduce": (_p4(b"}", _s("x"), _g("mypkg", "Config"), _s("a"), b"\x85R", b"s"), "pickle.call"),
        "newobj_ex": (_p4(b"}", _s("x"), _g("mypkg", "Config"), b")}", _s("k"), b"K\x01s\x92", b"s"), "pickle.call"),
        "inst": (b"(dS'x'\n(S'a'\nimypkg\nConfig\ns.", "pickle.call"),
        "obj": (_p4(b"}", _s("x"), b"(", _g("mypkg", "Config"), _s("a"), b"o", b"s"), "pickle.call"),
    }
    for how, (data, check) in cases.items():
        _obj, findings = _unpickle(data, strict=False)
        assert [(f.check, f.qualname) for f in findings] == [(check, "mypkg.Config")], how
        if check == "pickle.call":
            assert findings[0].site == "x" and "at 'x'" in findings[0].message
            with pytest.raises(
                UnsafeCheckpointError, match=r"calls mypkg\.Config at 'x'.*--allow-global mypkg\.Config"
            ):
                _unpickle(data)
            trusting = SafeUnpickler(io.BytesIO(data), strict=True, trusted=frozenset({"mypkg.Config"}))
            assert type(trusting.load()["x"]).qualname() == "mypkg.Config" and trusting.findings == []


def test_call_chains_name_each_call_and_where_the_chain_sits():
    # operator.attrgetter("system")(__import__("os"))("id"), kept under "a" of a list under "x".
    chain = _g("operator", "attrgetter") + _s("system") + b"\x85R" + _g("builtins", "__import__") + _s("os")
    data = _p4(b"}", _s("x"), b"]", _s("a"), chain + b"\x85R\x85R" + _s("id") + b"\x85R", b"\x86a", b"s")
    _obj, findings = _unpickle(data, strict=False)
    assert [(f.check, f.qualname, f.site) for f in findings] == [
        ("pickle.call", "operator.attrgetter", "x.0.1"),
        ("pickle.call", "builtins.__import__", "x.0.1.args.0"),
        ("pickle.call", "operator.attrgetter()", "x.0.1"),
    ]
    assert findings[2].message.startswith("the pickle calls what operator.attrgetter returned at 'x.0.1'")
