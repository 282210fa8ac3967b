"""A corpus of broken and malicious checkpoints, built from code, with what ckptkit must answer.

Every case is a small file (a few KB to 1 MB) made here from fixed bytes or the bundled fixtures,
so the corpus needs no download and is the same on every run. Each case says what
``ckptkit inspect`` and ``ckptkit convert`` must do with it: an exit code and a fragment of the
one-line error (exit 2), or success (exit 0) with a fragment of the output. Payloads that would
run code try to create the file ``PWNED`` beside the case, so a test can see that they did not.

    python tests/hostile/generate.py OUT     # write every case to OUT/<case>/ plus OUT/manifest.json

The test that runs the corpus is ``tests/test_hostile_corpus.py``; see ``tests/hostile/README.md``.
"""

from __future__ import annotations

import itertools
import json
import pickle
import pickletools
import struct
import sys
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
FIXTURES = HERE.parents[1] / "fixtures"
MARKER = "PWNED"  # what a payload that ran would create, beside the case's file


@dataclass(frozen=True)
class Expect:
    """An outcome: the exit code, and a fragment of stderr (on failure) or stdout (on success)."""

    code: int
    fragment: str


@dataclass
class Case:
    """One hostile input and the outcome each command must give.

    ``build(folder)`` returns the input's bytes (written to ``folder / filename``) and may write
    side files (an ONNX model's external data). ``env`` sets limits for cases that test them.
    """

    name: str
    filename: str
    build: Callable[[Path], bytes]
    inspect: Expect
    convert: Expect
    about: str
    env: dict[str, str] = field(default_factory=dict)
    verify: Expect | None = None

    def write(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / self.filename
        path.write_bytes(self.build(folder))
        return path


def fail(fragment: str) -> Expect:
    return Expect(2, fragment)


def ok(fragment: str = "") -> Expect:
    return Expect(0, fragment)


# --- safetensors --------------------------------------------------------------------------------


def st_bytes(header: dict | bytes, data: bytes = b"", length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


_W = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}


def _st(header: dict | bytes, data: bytes = bytes(16), length: int | None = None) -> Callable[[Path], bytes]:
    return lambda folder: st_bytes(header, data, length)


def _fixture_cut(name: str, keep: Callable[[bytes], int]) -> Callable[[Path], bytes]:
    def build(folder: Path) -> bytes:
        data = (FIXTURES / name).read_bytes()
        return data[: keep(data)]

    return build


def _st_header_end(data: bytes) -> int:
    return 8 + struct.unpack("<Q", data[:8])[0]


def safetensors_cases() -> list[Case]:
    valid = "mlp_fp32.safetensors"
    many = {f"t{i}": {"dtype": "U8", "shape": [1], "data_offsets": [i, i + 1]} for i in range(11)}
    cases = [
        Case("st_empty", "empty.safetensors", lambda f: b"", fail("the file is empty"), fail("the file is empty"),
             "an empty file"),
        Case("st_cut_in_length", "cut.safetensors", _fixture_cut(valid, lambda d: 5),
             fail("no format recognises this file (its extension suggests safetensors"),
             fail("no format recognises this file"), "cut inside the 8-byte header length"),
        Case("st_cut_in_header", "cut.safetensors", _fixture_cut(valid, lambda d: _st_header_end(d) // 2),
             fail("but the file holds only"), fail("truncated, or not a safetensors file"),
             "cut inside the JSON header"),
        Case("st_cut_after_header", "cut.safetensors", _fixture_cut(valid, _st_header_end),
             fail("but the file holds only 0: truncated?"), fail("truncated?"), "the header and no data"),
        Case("st_cut_in_data", "cut.safetensors", _fixture_cut(valid, lambda d: (len(d) + _st_header_end(d)) // 2),
             fail("truncated?"), fail("truncated?"), "cut in the middle of the tensor data"),
        Case("st_cut_last_byte", "cut.safetensors", _fixture_cut(valid, lambda d: len(d) - 1),
             fail("truncated?"), fail("truncated?"), "the last byte missing"),
        Case("st_length_absurd", "big.safetensors", _st({"w": _W}, length=2**63 - 1),
             fail("no format recognises this file"), fail("no format recognises"),
             "a header length of 2**63 (not even claimed as safetensors)"),
        Case("st_length_past_end", "big.safetensors", _st({"w": _W}, length=10**9),
             fail("the header length says 1,000,000,000 bytes, but the file holds only"), fail("truncated"),
             "a header length of 1 GB in a 100-byte file"),
        Case("st_wrong_magic", "image.safetensors", lambda f: b"\x89PNG\r\n\x1a\n" + bytes(64),
             fail("no format recognises this file (its extension suggests safetensors, but the content does not"),
             fail("not a checkpoint ckptkit can read"), "a PNG named .safetensors"),
        Case("st_header_not_json", "bad.safetensors", _st(b"{not json at all}"),
             fail("the header is not valid JSON"), fail("the header is not valid JSON"), "a header that is not JSON"),
        Case("st_header_bad_utf8", "bad.safetensors", _st(b'{"\xff\xfe": 1}'),
             fail("the header is not valid JSON"), fail("not valid JSON"), "a header that is not UTF-8"),
        Case("st_empty_header", "none.safetensors", _st(b"{}", b""), ok("tensors: 0"), ok("0 tensors"),
             "an empty header object: a valid file with no tensors"),
        Case("st_header_deep_json", "deep.safetensors", _st(b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
             fail("nests JSON too deeply"), fail("nests JSON too deeply"), "JSON nested 100,000 levels deep"),
        Case("st_duplicate_key", "dup.safetensors", _st(b'{"w":' + json.dumps(_W).encode() + b',"w":'
                                                        + json.dumps(_W).encode() + b"}"),
             fail("the header lists 'w' twice"), fail("twice"), "one tensor name twice"),
        Case("st_entry_not_object", "bad.safetensors", _st({"w": [1, 2, 3]}),
             fail("header entry needs dtype, shape and data_offsets"), fail("needs dtype"), "an entry that is a list"),
        Case("st_unknown_dtype", "bad.safetensors", _st({"w": {**_W, "dtype": "F128"}}),
             fail("tensor 'w' has dtype 'F128'"), fail("F128"), "an unknown dtype"),
        Case("st_negative_dim", "bad.safetensors", _st({"w": {**_W, "shape": [-2, -2]}}),
             fail("is not a list of sizes"), fail("not a list of sizes"), "negative dimensions"),
        Case("st_too_many_dims", "bad.safetensors", _st({"w": {**_W, "shape": [1] * 65 + [4]}}),
             fail("has 66 dimensions; at most 64"), fail("66 dimensions"), "66 dimensions (numpy holds 64)"),
        Case("st_zero_times_huge", "bad.safetensors",
             _st({"w": {"dtype": "F32", "shape": [0, 2**80], "data_offsets": [0, 0]}}, b""),
             fail("is not a possible tensor size"), fail("not a possible tensor size"),
             "a shape of [0, 2**80]: no data, but no array could be made for it"),
        Case("st_terabyte_claim", "tb.safetensors",
             _st({"w": {"dtype": "F32", "shape": [2**18, 2**20], "data_offsets": [0, 2**40]}}),
             fail("tensor 'w' ends at byte 1099511627776 of the data, but the file holds only 16"),
             fail("truncated?"), "a tensor of 1 TiB in a 100-byte file"),
        Case("st_offsets_mismatch", "bad.safetensors", _st({"w": {**_W, "data_offsets": [0, 8]}}),
             fail("data_offsets [0, 8] hold 8 bytes, but float32 [2, 2] needs 16"), fail("needs 16"),
             "offsets that do not match the shape"),
        Case("st_offsets_reversed", "bad.safetensors", _st({"w": {**_W, "data_offsets": [16, 0]}}),
             fail("data_offsets [16, 0] hold -16 bytes"), fail("hold -16 bytes"), "end before begin"),
        Case("st_metadata_not_strings", "bad.safetensors", _st({"__metadata__": {"a": 1}, "w": _W}),
             fail("__metadata__ must map strings to strings"), fail("__metadata__"), "metadata with a number"),
        Case("st_aliases_not_map", "bad.safetensors", _st({"__metadata__": {"ckptkit:aliases": "[1, 2]"}, "w": _W}),
             fail("metadata ckptkit:aliases is not a map of names to names"), fail("ckptkit:aliases"),
             "an alias map that is a JSON list"),
        Case("st_aliases_dangling", "bad.safetensors",
             _st({"__metadata__": {"ckptkit:aliases": '{"b": "nope"}'}, "w": _W}),
             fail("ckptkit:aliases points at tensors not in the file: ['nope']"), fail("nope"),
             "an alias to a tensor that is not there"),
        Case("st_extras_deep", "bad.safetensors",
             _st({"__metadata__": {"ckptkit:extras": "[" * 100_000 + "]" * 100_000}, "w": _W}),
             fail("metadata ckptkit:extras nests JSON too deeply"), fail("too deeply"),
             "extras JSON nested 100,000 levels deep"),
        Case("st_too_many_tensors", "many.safetensors", _st(many, bytes(11)),
             fail("the tensor count is 11 tensors, over ckptkit's limit of 10 tensors; if the file is trusted, "
                  "raise the limit with CKPTKIT_MAX_TENSORS"), fail("CKPTKIT_MAX_TENSORS"),
             "more tensors than the limit", env={"CKPTKIT_MAX_TENSORS": "10"}),
        Case("st_header_over_limit", "big.safetensors", _st({"w": _W, "__metadata__": {"pad": "x" * 5000}}),
             fail("the JSON header is 5,"), fail("CKPTKIT_MAX_HEADER_BYTES"),
             "a header larger than the limit", env={"CKPTKIT_MAX_HEADER_BYTES": "4KB"}),
        Case("st_terminal_escape_name", "esc.safetensors", _st({"\x1b[2J\x1b[31mw\x07": {**_W, "dtype": "X"}}),
             fail("tensor '\\x1b[2J\\x1b[31mw\\x07' has dtype 'X'"), fail("\\x1b[2J"),
             "terminal escape codes in a tensor name are printed escaped in errors"),
        Case("st_terminal_escape_listed", "esc.safetensors", _st({"\x1b[2J\x1b[31mw\x07": _W}),
             ok("\\x1b[2J\\x1b[31mw\\x07"), ok("1 tensors"),
             "terminal escape codes in a tensor name are printed escaped in listings"),
    ]  # fmt: skip
    return cases


# --- PyTorch pickles, built opcode by opcode -----------------------------------------------------


def op_global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def op_str(text: str) -> bytes:
    raw = text.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(raw)) + raw


def op_int(n: int) -> bytes:
    if -(2**31) <= n < 2**31:
        return b"J" + struct.pack("<i", n)
    encoded = pickle.encode_long(n)
    return b"\x8a" + bytes([len(encoded)]) + encoded


def op_tuple(values: list[int] | tuple[int, ...]) -> bytes:
    return b"(" + b"".join(op_int(v) for v in values) + b"t"


def op_call(fn: bytes, *args: bytes) -> bytes:
    return fn + b"(" + b"".join(args) + b"tR"


def op_tensor(
    key: str,
    numel: int,
    shape: tuple[int, ...],
    stride: tuple[int, ...],
    offset: int = 0,
    storage: str = "FloatStorage",
) -> bytes:
    pid = b"(" + op_str("storage") + op_global("torch", storage) + op_str(key) + op_str("cpu") + op_int(numel) + b"tQ"
    hooks = op_call(op_global("collections", "OrderedDict"))
    return op_call(
        op_global("torch._utils", "_rebuild_tensor_v2"), pid, op_int(offset), op_tuple(shape), op_tuple(stride),
        b"\x89", hooks,
    )  # fmt: skip


def state_dict(entries: dict[str, bytes]) -> bytes:
    """A protocol-2 pickle of a dict whose values are the given opcode sequences."""
    return b"\x80\x02}(" + b"".join(op_str(k) + v for k, v in entries.items()) + b"u."


W_OPS = op_tensor("0", 4, (2, 2), (2, 1))
W_DATA = struct.pack("<4f", 1.0, 2.0, 3.0, 4.0)


def torch_zip(pkl: bytes, storages: dict[str, bytes] | None = None, root: str = "archive") -> bytes:
    buf = BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{root}/data.pkl", pkl)
        zf.writestr(f"{root}/byteorder", b"little")
        for key, data in (storages if storages is not None else {"0": W_DATA}).items():
            zf.writestr(f"{root}/data/{key}", data)
        zf.writestr(f"{root}/version", b"3\n")
    return buf.getvalue()


def legacy_file(pkl: bytes, storages: list[tuple[str, int, bytes]] | None = None) -> bytes:
    """A pre-1.6 ``torch.save`` file: four pickles, the storage keys, then each storage's count and bytes."""
    storages = [("0", 4, W_DATA)] if storages is None else storages
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    parts = [pickle.dumps(0x1950A86A20F9469CFC6C, 2), pickle.dumps(1001, 2), pickle.dumps(sys_info, 2), pkl,
             pickle.dumps([k for k, _, _ in storages], 2)]  # fmt: skip
    for _key, count, data in storages:
        parts.append(struct.pack("<q", count) + data)
    return b"".join(parts)


@dataclass
class Member:
    """A zip member as it will be written, sizes and CRC as given (so they can lie)."""

    name: str
    payload: bytes
    method: int = zipfile.ZIP_STORED
    size: int | None = None
    crc: int | None = None


def raw_zip(members: list[Member], stated_members: int | None = None, stated_cd_bytes: int | None = None) -> bytes:
    out = bytearray()
    central = bytearray()
    for m in members:
        name = m.name.encode()
        size = len(m.payload) if m.size is None else m.size
        crc = zlib.crc32(m.payload) if m.crc is None else m.crc
        offset = len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, m.method, 0, 0x21, crc, len(m.payload), size,
                           len(name), 0) + name + m.payload  # fmt: skip
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, m.method, 0, 0x21, crc, len(m.payload),
                               size, len(name), 0, 0, 0, 0, 0, offset) + name  # fmt: skip
    cd_offset = len(out)
    out += central
    count = len(members) if stated_members is None else stated_members
    cd_bytes = len(central) if stated_cd_bytes is None else stated_cd_bytes
    if count > 0xFFFF:  # only a zip64 end record can state that many members
        zip64_at = len(out)
        out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, count, count, cd_bytes, cd_offset)
        out += struct.pack("<IIQI", 0x07064B50, 0, zip64_at, 1)
        count, cd_bytes, cd_offset = 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, cd_bytes, cd_offset, 0)
    return bytes(out)


def deflate_bomb(total: int, block: int = 1 << 20) -> bytes:
    """A raw deflate stream of ``total`` zero bytes, about a thousandth of that size.

    After a full flush the compressor forgets its history, so the flushed block for one chunk of
    zeros can simply be repeated.
    """
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = comp.compress(bytes(block)) + comp.flush(zlib.Z_FULL_FLUSH)
    again = comp.compress(bytes(block)) + comp.flush(zlib.Z_FULL_FLUSH)
    assert piece == again
    return piece * (total // block) + comp.flush()


def _torch_members(pkl: bytes, pkl_member: Member | None = None) -> list[Member]:
    return [pkl_member or Member("archive/data.pkl", pkl), Member("archive/data/0", W_DATA),
            Member("archive/version", b"3\n")]  # fmt: skip


def _pickle_in_zip(entries: dict[str, bytes]) -> Callable[[Path], bytes]:
    return lambda folder: torch_zip(state_dict({"w": W_OPS, **entries}))


def _zip_offsets(name: str) -> dict[str, int]:
    """Where each section of a fixture's zip starts: members' headers and data, directory, end record."""
    data = (FIXTURES / name).read_bytes()
    with zipfile.ZipFile(FIXTURES / name) as zf:
        infos = zf.infolist()
    out = {}
    for info in infos:
        record = info.filename.split("/", 1)[1]
        name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
        out[f"{record}:header"] = info.header_offset
        out[f"{record}:data"] = info.header_offset + 30 + name_len + extra_len
    out["directory"] = data.index(b"PK\x01\x02")
    out["end"] = data.rindex(b"PK\x05\x06")
    return out


def torch_zip_cases() -> list[Case]:
    fx = "mlp_fp32.pt"
    at = _zip_offsets(fx)
    cut_fail = fail("the zip archive is incomplete or damaged")
    cases = [
        Case("pt_cut_in_magic", "cut.pt", _fixture_cut(fx, lambda d: 3),
             fail("no format recognises this file (its extension suggests torch"), fail("no format recognises"),
             "cut inside the zip magic"),
        Case("pt_cut_in_local_header", "cut.pt", _fixture_cut(fx, lambda d: 20),
             fail("no format recognises this file (its extension suggests torch"), fail("no format recognises"),
             "cut inside the first member's header: too short to tell it is a torch file"),
        Case("pt_cut_after_member_name", "cut.pt", _fixture_cut(fx, lambda d: 30 + struct.unpack_from("<H", d, 26)[0]),
             cut_fail, cut_fail, "cut right after the first member's name"),
        Case("pt_cut_in_pickle", "cut.pt", _fixture_cut(fx, lambda d: at["data.pkl:data"] + 100), cut_fail, cut_fail,
             "cut inside data.pkl"),
        Case("pt_cut_in_storage", "cut.pt", _fixture_cut(fx, lambda d: at["data/0:data"] + 1000), cut_fail, cut_fail,
             "cut inside the first tensor's storage"),
        Case("pt_cut_at_directory", "cut.pt", _fixture_cut(fx, lambda d: at["directory"]), cut_fail, cut_fail,
             "every member complete, the central directory missing"),
        Case("pt_cut_in_directory", "cut.pt", _fixture_cut(fx, lambda d: at["directory"] + 200), cut_fail, cut_fail,
             "cut inside the central directory"),
        Case("pt_cut_in_end_record", "cut.pt", _fixture_cut(fx, lambda d: at["end"] + 10), cut_fail, cut_fail,
             "cut inside the end-of-directory record"),
        Case("pt_cut_last_byte", "cut.pt", _fixture_cut(fx, lambda d: len(d) - 1), cut_fail, cut_fail,
             "the last byte missing"),
        Case("pt_wrong_magic", "model.pt", lambda f: b"PK\x05\x07" + (FIXTURES / fx).read_bytes()[4:],
             fail("no format recognises this file (its extension suggests torch"), fail("no format recognises"),
             "a torch zip whose first bytes are wrong"),
        Case("pt_not_torch_zip", "model.pt", lambda f: raw_zip([Member("readme.txt", b"hello")]),
             fail("no format recognises this file (its extension suggests torch"), fail("no format recognises"),
             "a zip that holds no data.pkl"),
        Case("pt_pickle_over_limit", "big.pt", lambda f: torch_zip(state_dict({"w": W_OPS, "pad": op_str("x" * 5000)})),
             fail("record archive/data.pkl (uncompressed) is 5,"), fail("CKPTKIT_MAX_PICKLE_BYTES"),
             "a pickle larger than the limit", env={"CKPTKIT_MAX_PICKLE_BYTES": "4KB"}),
        Case("pt_zip_bomb_declared", "bomb.pt",
             lambda f: raw_zip(_torch_members(b"", Member("archive/data.pkl", deflate_bomb(1 << 30),
                                                          zipfile.ZIP_DEFLATED, 1 << 30, 0))),
             fail("record archive/data.pkl (uncompressed) is 1,073,741,824 bytes, over ckptkit's limit of 536,870,912"),
             fail("CKPTKIT_MAX_PICKLE_BYTES"), "a 1 MB data.pkl that inflates to 1 GiB, its size declared"),
        Case("pt_zip_bomb_lying", "bomb.pt",
             lambda f: raw_zip(_torch_members(b"", Member("archive/data.pkl", deflate_bomb(1 << 30),
                                                          zipfile.ZIP_DEFLATED, 4096, 0))),
             fail("record archive/data.pkl cannot be read: Bad CRC-32"), fail("Bad CRC-32"),
             "a data.pkl that inflates to 1 GiB while declaring 4 KB: read no further than declared"),
        Case("pt_directory_claims_millions", "many.pt",
             lambda f: raw_zip(_torch_members(state_dict({"w": W_OPS})), stated_members=50_000_000),
             fail("the zip archive's member count is 50,000,000 members, over ckptkit's limit"),
             fail("CKPTKIT_MAX_TENSORS"), "an end record claiming 50 million members"),
        Case("pt_compressed_storage", "deflated.pt",
             lambda f: raw_zip([Member("archive/data.pkl", state_dict({"w": W_OPS})),
                                Member("archive/data/0", zlib.compress(W_DATA)[2:-4], zipfile.ZIP_DEFLATED,
                                       len(W_DATA), zlib.crc32(W_DATA))]),
             fail("record data/0 is compressed"), fail("compressed"), "a re-zipped file with deflated tensor data"),
        Case("pt_missing_storage", "bad.pt", lambda f: torch_zip(state_dict({"w": W_OPS}), {}),
             fail("tensor 'w': the archive has no record data/0"), fail("no record data/0"),
             "a tensor whose storage record is missing"),
        Case("pt_storage_terabyte", "tb.pt",
             lambda f: torch_zip(state_dict({"w": op_tensor("0", 2**38, (2**38,), (1,))})),
             fail("tensor 'w': its storage needs 1099511627776 bytes, but data/0 holds 16"), fail("holds 16"),
             "a pickle declaring a 1 TiB storage backed by 16 bytes"),
        Case("pt_view_past_storage", "bad.pt",
             lambda f: torch_zip(state_dict({"w": op_tensor("0", 4, (2, 2), (2, 1), offset=3)})),
             fail("reaches byte 28 of a 16-byte storage"), fail("16-byte storage"),
             "a view whose offset runs past its storage"),
        Case("pt_broadcast_terabyte", "bcast.pt",
             lambda f: torch_zip(state_dict({"w": op_tensor("0", 4, (2**20, 2**20), (0, 0))})),
             ok("4.40 TB"), fail("repeats its data; reading it takes 4,398,046,511,104 bytes"),
             "a zero-stride view of 4 bytes that would copy to 4 TiB: listed, refused when read"),
        Case("pt_too_many_dims", "bad.pt",
             lambda f: torch_zip(state_dict({"w": op_tensor("0", 4, (1,) * 65, (1,) * 65)})),
             fail("tensor 'w' has 65 dimensions; at most 64"), fail("65 dimensions"), "65 dimensions"),
        Case("pt_non_torch_global", "model.pt",
             _pickle_in_zip({"cfg": op_global("__main__", "Config") + b")\x81}" + op_str("lr") + op_int(1)
                             + b"sb"}),
             ok("<opaque __main__.Config>"), ok("1 tensors"),
             "an unknown class instantiated beside the tensors: a placeholder, never imported"),
        Case("pt_non_torch_call", "model.pt",
             _pickle_in_zip({"cfg": op_call(op_global("__main__", "Config"), op_str("lr"))}),
             fail("the pickle calls __main__.Config at 'cfg'"), fail("pass --allow-global __main__.Config"),
             "an unknown class called with arguments: refused by name, never imported"),
    ]  # fmt: skip
    return cases


def _payload(ops: Callable[[str], bytes]) -> Callable[[Path], bytes]:
    """A torch zip holding a tensor and a payload that would touch the marker file."""
    return lambda folder: torch_zip(state_dict({"w": W_OPS, "x": ops(str(folder / MARKER))}))


def _refused(qualname: str, verb: str = "calls") -> Expect:
    return fail(f"the pickle {verb} {qualname}")


def _payload_case(name: str, qualname: str, ops: Callable[[str], bytes], about: str, verb: str = "calls") -> Case:
    return Case(name, "evil.pt", _payload(ops), _refused(qualname, verb), _refused(qualname, verb), about)


def payload_cases() -> list[Case]:
    touch = "touch {}".format

    def getattr_chain(m: str) -> bytes:
        # getattr(getattr(__import__("os"), "system"))("touch m"), with each step a REDUCE
        imp = op_call(op_global("builtins", "__import__"), op_str("os"))
        system = op_call(op_global("builtins", "getattr"), imp, op_str("system"))
        return system + b"(" + op_str(touch(m)) + b"tR"

    def memo_stack_global(m: str) -> bytes:
        # Protocol 4: the strings "os" and "system" put in the memo, fetched back, STACK_GLOBAL.
        return b"\x8c\x02os\x94\x8c\x06system\x9400h\x00h\x01\x93" + b"(" + op_str(touch(m)) + b"tR"

    cases = [
        _payload_case("pickle_os_system", "os.system", lambda m: op_call(op_global("os", "system"), op_str(touch(m))),
                      "__reduce__ returning os.system"),
        _payload_case("pickle_posix_system", "posix.system",
                      lambda m: op_call(op_global("posix", "system"), op_str(touch(m))), "the posix module's system"),
        _payload_case("pickle_eval", "builtins.eval",
                      lambda m: op_call(op_global("builtins", "eval"), op_str(f"__import__('os').system('touch {m}')")),
                      "builtins.eval of a code string"),
        _payload_case("pickle_exec_py2_name", "builtins.exec",
                      lambda m: op_call(op_global("__builtin__", "exec"), op_str(f"open({m!r}, 'w').close()")),
                      "exec under its Python 2 name __builtin__.exec"),
        _payload_case("pickle_runpy", "runpy.run_path",
                      lambda m: op_call(op_global("runpy", "run_path"), op_str(m + ".py")),
                      "runpy.run_path of a script"),
        _payload_case("pickle_importlib", "importlib.import_module",
                      lambda m: op_call(op_global("importlib", "import_module"), op_str("os")),
                      "importlib.import_module"),
        _payload_case("pickle_subprocess", "subprocess.Popen",
                      lambda m: op_call(op_global("subprocess", "Popen"), b"(" + op_str("touch") + op_str(m) + b"l"),
                      "subprocess.Popen with an argument list"),
        _payload_case("pickle_subprocess_check_output", "subprocess.check_output",
                      lambda m: op_call(op_global("subprocess", "check_output"), op_str(touch(m)), op_str("")),
                      "subprocess.check_output"),
        _payload_case("pickle_getattr_chain", "builtins.getattr", getattr_chain,
                      "getattr(__import__('os'), 'system') built from REDUCE steps"),
        _payload_case("pickle_globals_through_memo", "os.system", memo_stack_global,
                      "a global named by strings fetched from the memo (STACK_GLOBAL)"),
        _payload_case("pickle_submodule_global", "os.path.join",
                      lambda m: op_call(op_global("os.path", "join"), op_str(m)), "a submodule of a refused module"),
        _payload_case("pickle_dunder_attribute", "collections.OrderedDict.__init__.__globals__",
                      lambda m: op_global("collections", "OrderedDict.__init__.__globals__"),
                      "a dotted global reaching __globals__ through an allowed class", verb="refers to"),
        _payload_case("pickle_nested_pickle", "pickle.loads",
                      lambda m: op_call(op_global("pickle", "loads"), b"C\x01."), "pickle.loads of nested bytes"),
        _payload_case("pickle_torch_load", "torch.load", lambda m: op_call(op_global("torch", "load"), op_str(m)),
                      "torch.load of another file"),
        Case("pickle_build_overwrites_tensor", "evil.pt",
             lambda f: torch_zip(state_dict({"w": W_OPS + b"(" + op_str("0") + b"N" + b"t" + b"b"})),
             fail("the pickle changes the state of a TensorRecord"), fail("changes the state"),
             "BUILD on a tensor record, to overwrite its checked shape and strides"),
        Case("pickle_build_on_allowed_callable", "evil.pt",
             lambda f: torch_zip(state_dict({"w": W_OPS, "x": op_global("collections", "OrderedDict")
                                             + b"N}" + op_str("_fn") + op_str("x") + b"s\x86b"})),
             fail("the pickle changes the state of collections.OrderedDict"), fail("changes the state"),
             "BUILD setting attributes on an allowed callable"),
        Case("pickle_build_on_placeholder_class", "evil.pt",
             lambda f: torch_zip(state_dict({"w": W_OPS, "x": op_global("__main__", "Evil")
                                             + b"N}" + op_str("__reduce__") + op_str("x") + b"s\x86b"})),
             fail("the pickle changes the state of the class __main__.Evil"), fail("changes the state"),
             "BUILD rewiring a placeholder class's methods"),
        Case("pickle_deep_lists", "deep.pt",
             lambda f: torch_zip(b"\x80\x02}(" + op_str("w") + W_OPS + op_str("x") + b"]" * 100_000
                                 + b"a" * 99_999 + b"u."),
             fail("the pickle nests objects more than 200 levels deep"), fail("CKPTKIT_MAX_PICKLE_DEPTH"),
             "lists nested 100,000 deep"),
        Case("pickle_deep_tuple_key", "deep.pt",
             lambda f: torch_zip(b"\x80\x02}(" + op_str("w") + W_OPS + b")" + b"\x85" * 300_000 + b"K\x01u."),
             fail("the pickle nests tuples more than 200 levels deep"), fail("nests tuples"),
             "a dict key of 300,000 nested tuples (hashing it overflows the C stack)"),
        Case("pickle_billion_laughs", "laughs.pt",
             lambda f: torch_zip(b"\x80\x02}(" + op_str("w") + W_OPS + op_str("x") + b"]q\x000"
                                 + b"".join(b"(h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"lq" + bytes([i]) + b"0"
                                            for i in range(1, 100))
                                 + b"hcu."),
             fail("the pickle expands to more than 100,000 objects"), fail("CKPTKIT_MAX_PICKLE_OBJECTS"),
             "lists that each hold the previous one twice: 2**99 paths", env={"CKPTKIT_MAX_PICKLE_OBJECTS": "100000"}),
        Case("pickle_object_flood", "flood.pt",
             lambda f: torch_zip(b"\x80\x02}(" + op_str("w") + W_OPS + op_str("x") + b"(" + b"}" * 120_000
                                 + b"lu."),
             fail("the pickle builds more than 100,000 objects"), fail("CKPTKIT_MAX_PICKLE_OBJECTS"),
             "more empty dicts than the object limit, one byte each (64 bytes each once built)",
             env={"CKPTKIT_MAX_PICKLE_OBJECTS": "100000"}),
        Case("pickle_self_reference", "cycle.pt",
             lambda f: torch_zip(b"\x80\x02}(" + op_str("w") + W_OPS + op_str("x") + b"]q\xc8h\xc8au."),
             ok("x.0 = <cycle>"), ok("1 tensors"), "a list that contains itself: the cycle is cut and shown"),
        Case("pickle_forged_memo_index", "memo.pt",
             lambda f: torch_zip(b"\x80\x02}(" + op_str("w") + W_OPS + op_str("x") + b"K\x07r\xff\xff\xff\x7fu."),
             ok("x = 7"), ok("1 tensors"), "LONG_BINPUT at index 2**31-1 (the C unpickler would allocate 16 GB)"),
        Case("pickle_huge_string_claim", "bad.pt",
             lambda f: torch_zip(b"\x80\x02}(" + op_str("w") + W_OPS + op_str("x") + b"\x8d" + struct.pack("<Q", 2**62)
                                 + b"u."),
             fail("data.pkl is not a valid pickle"), fail("not a valid pickle"),
             "a BINUNICODE8 claiming 2**62 bytes"),
        Case("pickle_bytes_from_size", "bad.pt",
             _pickle_in_zip({"x": op_call(op_global("builtins", "bytearray"), op_int(10**12))}),
             fail("bytearray may only be rebuilt from data, not from 1000000000000"), fail("bytearray"),
             "bytearray(10**12): a terabyte from a few bytes"),
    ]  # fmt: skip
    return cases


def _legacy_sections(data: bytes) -> list[int]:
    """Where each of a legacy file's five pickles ends."""
    ends = []
    stream = BytesIO(data)
    for _ in range(5):
        for op, _arg, pos in pickletools.genops(stream):
            if op.name == "STOP":
                ends.append(pos + 1)
    return ends


def legacy_cases() -> list[Case]:
    fx = "mlp_fp32_legacy.pt"
    ends = _legacy_sections((FIXTURES / fx).read_bytes())
    cases = [
        Case("legacy_cut_in_magic", "cut.pt", _fixture_cut(fx, lambda d: 6),
             fail("no format recognises this file"), fail("no format recognises"), "cut inside the magic number"),
        Case("legacy_cut_in_sys_info", "cut.pt", _fixture_cut(fx, lambda d: ends[1] + 10),
             fail("the sys_info pickle is not a valid pickle"), fail("not a valid pickle"),
             "cut inside the sys_info pickle"),
        Case("legacy_cut_in_main_pickle", "cut.pt", _fixture_cut(fx, lambda d: (ends[2] + ends[3]) // 2),
             fail("the main pickle is not a valid pickle"), fail("not a valid pickle"), "cut inside the main pickle"),
        Case("legacy_cut_in_storages", "cut.pt", _fixture_cut(fx, lambda d: len(d) - 100),
             fail("truncated?"), fail("truncated?"), "cut inside the last storage"),
        Case("legacy_storage_count_forged", "bad.pt",
             lambda f: legacy_file(state_dict({"w": W_OPS}), [("0", 2**60, W_DATA)]),
             fail("storage '0' is stored with 1152921504606846976 elements, but the pickle gives it 16 bytes"),
             fail("1152921504606846976"), "a storage count of 2**60"),
        Case("legacy_os_system", "evil.pt",
             lambda f: legacy_file(state_dict({"w": W_OPS, "x": op_call(op_global("os", "system"),
                                                                         op_str(f"touch {f / MARKER}"))})),
             _refused("os.system"), _refused("os.system"), "os.system in a legacy file's main pickle"),
        Case("legacy_pickle_over_limit", "big.pt",
             lambda f: legacy_file(state_dict({"w": W_OPS, "pad": op_str("x" * 5000)})),
             fail("run past ckptkit's limit of 4,000 bytes"), fail("CKPTKIT_MAX_PICKLE_BYTES"),
             "legacy pickles longer than the limit", env={"CKPTKIT_MAX_PICKLE_BYTES": "4KB"}),
    ]  # fmt: skip
    return cases


# --- ONNX ------------------------------------------------------------------------------------------


def onnx_model(initializers: list, nodes: list | None = None) -> bytes:
    from onnx import helper

    graph = helper.make_graph(nodes or [], "g", [], [], initializer=initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def onnx_tensor(name: str = "w", dims: tuple[int, ...] = (2, 2), raw: bytes | None = W_DATA, **external: str):
    """A float32 initializer, inline (``raw``) or external (``location=..., offset=..., length=...``)."""
    from onnx import TensorProto

    t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(dims))
    if external:
        t.data_location = TensorProto.EXTERNAL
        for key, value in external.items():
            t.external_data.add(key=key, value=value)
    elif raw is not None:
        t.raw_data = raw
    return t


def _onnx_external(location: str, data: bytes | None = W_DATA, link_to: str = "", **fields: str):
    def build(folder: Path) -> bytes:
        target = folder / location
        if link_to:
            target.symlink_to(link_to)
        elif data is not None and "/" not in location:
            target.write_bytes(data)
        return onnx_model([onnx_tensor(location=location, **fields)])

    return build


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _pb(number: int, value: bytes | int) -> bytes:
    """One protobuf field: a varint, or length-delimited bytes."""
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def _nested_ifs(depth: int) -> Callable[[Path], bytes]:
    # Written field by field: the onnx helpers copy each subgraph through a parser that stops at 32 levels.
    def build(folder: Path) -> bytes:
        graph = _pb(2, b"leaf") + _pb(5, onnx_tensor().SerializeToString())
        for i in range(depth):
            branch = _pb(1, b"then_branch") + _pb(20, 5) + _pb(6, graph)  # AttributeProto of type GRAPH
            node = _pb(1, b"c") + _pb(2, b"o") + _pb(4, b"If") + _pb(5, branch)
            graph = _pb(1, node) + _pb(2, f"g{i}".encode())
        return _pb(1, 8) + _pb(7, graph) + _pb(8, _pb(2, 17))  # ir_version, graph, opset_import

    return build


def onnx_cases() -> list[Case]:
    fx = "onnx/conv_bn_ln_gemm.onnx"
    cut = fail("truncated?")
    outside = fail("leads outside the model's folder")
    cases = [
        Case("onnx_cut_quarter", "cut.onnx", _fixture_cut(fx, lambda d: len(d) // 4), cut, cut,
             "cut a quarter of the way in"),
        Case("onnx_cut_half", "cut.onnx", _fixture_cut(fx, lambda d: len(d) // 2), cut, cut, "cut half way"),
        Case("onnx_cut_last_byte", "cut.onnx", _fixture_cut(fx, lambda d: len(d) - 1), cut, cut,
             "the last byte missing"),
        Case("onnx_wrong_magic", "model.onnx", lambda f: b"\x0a\x05hello" + bytes(64),
             fail("no format recognises this file (its extension suggests onnx"), fail("no format recognises"),
             "bytes that do not start like an ONNX model"),
        Case("onnx_external_missing", "model.onnx", _onnx_external("w.data", data=None),
             fail("tensor 'w': external data file"), fail("is missing"), "external data whose file is absent"),
        Case("onnx_external_escape", "model.onnx", _onnx_external("../../../../../../etc/passwd"), outside, outside,
             "external data at ../../../../etc/passwd"),
        Case("onnx_external_absolute", "model.onnx", _onnx_external("/etc/passwd"),
             fail("external data location '/etc/passwd' is an absolute path"), fail("absolute path"),
             "external data at an absolute path"),
        Case("onnx_external_symlink_out", "model.onnx", _onnx_external("w.data", link_to="/etc/hostname"), outside,
             outside, "external data through a symbolic link that points out of the folder"),
        Case("onnx_external_short", "model.onnx", _onnx_external("w.data", data=W_DATA[:8], length="16"),
             fail("external data file w.data has 8 bytes, the tensor ends at 16: truncated"), fail("truncated"),
             "an external data file shorter than its tensors"),
        Case("onnx_external_offset_huge", "model.onnx", _onnx_external("w.data", offset=str(2**62), length="16"),
             fail("the tensor ends at 4611686018427387920"), fail("truncated"), "an offset of 2**62"),
        Case("onnx_external_offset_not_number", "model.onnx", _onnx_external("w.data", offset="12abc"),
             fail("are not numbers"), fail("are not numbers"), "an offset that is not a number"),
        Case("onnx_deep_subgraphs", "deep.onnx", _nested_ifs(80),
             fail("subgraphs nest deeper than 64 levels"), fail("nest deeper"), "If nodes nested 80 deep"),
        Case("onnx_terabyte_dims", "tb.onnx", lambda f: onnx_model([onnx_tensor(dims=(2**20, 2**20))]),
             fail("tensor 'w': raw_data holds 16 bytes, float32 [1048576, 1048576] needs 4398046511104"),
             fail("needs 4398046511104"), "dims of 4 TiB over 16 bytes of data"),
        Case("onnx_too_many_dims", "bad.onnx", lambda f: onnx_model([onnx_tensor(dims=(1,) * 65 + (4,))]),
             fail("tensor 'w' has 66 dimensions"), fail("66 dimensions"), "66 dimensions"),
        Case("onnx_too_many_tensors", "many.onnx",
             lambda f: onnx_model([onnx_tensor(f"w{i}") for i in range(11)]),
             fail("the tensor count is 11 tensors, over ckptkit's limit of 10 tensors"), fail("CKPTKIT_MAX_TENSORS"),
             "more initializers than the limit", env={"CKPTKIT_MAX_TENSORS": "10"}),
    ]  # fmt: skip
    return cases


# --- Keras HDF5 -------------------------------------------------------------------------------------


def keras_weights(extra: Callable[[Any, Path], None] | None = None) -> Callable[[Path], bytes]:
    """A Keras 3 ``.weights.h5`` (one Dense layer) made with h5py; ``extra(h5, folder)`` adds the hostile part."""

    def build(folder: Path) -> bytes:
        import h5py

        path = folder / "made.h5"
        with h5py.File(path, "w") as h5:
            dense = h5.create_group("layers/dense/vars")
            dense.create_dataset("0", data=np.arange(12, dtype=np.float32).reshape(3, 4))
            dense.create_dataset("1", data=np.zeros(4, np.float32))
            h5.create_group("vars")
            if extra is not None:
                extra(h5, folder)
        data = path.read_bytes()
        path.unlink()
        return data

    return build


def _shared_chain(h5: Any, folder: Path) -> None:
    # g0 holds a and b, both g1; g1 holds a and b, both g2; ...: 2**40 paths to the last group.
    groups = [h5.create_group(f"layers/chain/g{i}") for i in range(41)]
    for parent, below in itertools.pairwise(groups):
        parent["a"] = below
        parent["b"] = below


def _gzip_bomb(h5: Any, folder: Path) -> None:
    # 512 chunks of 4 MB of zeros, each written pre-compressed: 2 GiB of float32 in about 2 MB.
    chunk = 1 << 20
    ds = h5.create_dataset("layers/embed/vars/0", shape=(512 * chunk,), dtype="<f4", chunks=(chunk,),
                           compression="gzip")  # fmt: skip
    packed = zlib.compress(bytes(4 * chunk), 9)
    for i in range(512):
        ds.id.write_direct_chunk((i * chunk,), packed)


def _keras_archive(
    config: Member | None = None, weights: Member | None = None, no_weights: bool = False
) -> Callable[[Path], bytes]:
    """A .keras zip: metadata.json, config.json (or ``config``), weights (valid and stored unless given)."""

    def build(folder: Path) -> bytes:
        default_config = Member("config.json", b'{"class_name": "Sequential", "config": {"layers": []}}')
        members = [Member("metadata.json", b'{"keras_version": "3.9.2"}'), config or default_config]
        if not no_weights:
            members.append(weights or Member("model.weights.h5", keras_weights()(folder)))
        return raw_zip(members)

    return build


def keras_cases() -> list[Case]:
    def link(kind: str) -> Callable[[Any, Path], None]:
        def add(h5: Any, folder: Path) -> None:
            import h5py

            target = {"soft": h5py.SoftLink("/vars"), "external": h5py.ExternalLink("/etc/hostname", "/")}[kind]
            h5["layers/dense/vars"]["2"] = target

        return add

    def external_storage(h5: Any, folder: Path) -> None:
        h5.create_dataset("layers/dense/vars/2", shape=(4,), dtype="<f4", external=[("/etc/hostname", 0, 16)])

    def cycle(h5: Any, folder: Path) -> None:
        h5["layers/dense/loop"] = h5["layers"]

    def sparse(h5: Any, folder: Path) -> None:
        h5.create_dataset("layers/embed/vars/0", shape=(2**31,), dtype="<f4", chunks=(2**20,))

    bomb = deflate_bomb(1 << 30)
    cut = fail("truncated: the HDF5 superblock says the file holds")
    cases = [
        Case("keras_cut_half", "cut.weights.h5", lambda f: keras_weights()(f)[: len(keras_weights()(f)) // 2], cut,
             cut, "cut half way"),
        Case("keras_cut_last_byte", "cut.weights.h5", lambda f: keras_weights()(f)[:-1], cut, cut,
             "the last byte missing"),
        Case("keras_cut_in_superblock", "cut.weights.h5", lambda f: keras_weights()(f)[:20],
             fail("the HDF5 superblock is damaged"), fail("superblock"), "cut inside the superblock"),
        Case("keras_wrong_magic", "model.weights.h5", lambda f: b"\x89HDF\r\n\x1b\n" + bytes(600),
             fail("no format recognises this file"), fail("no format recognises"), "an HDF5 signature one byte off"),
        Case("keras_cyclic_link", "cycle.weights.h5", keras_weights(cycle),
             fail("is linked from more than one place"), fail("a cycle or a shared group"),
             "a group holding a hard link to its own parent"),
        Case("keras_shared_chain", "chain.weights.h5", keras_weights(_shared_chain),
             fail("is linked from more than one place"), fail("a cycle or a shared group"),
             "41 groups each linking twice to the next: 2**40 paths"),
        Case("keras_soft_link", "soft.weights.h5", keras_weights(link("soft")),
             fail("/layers/dense/vars/2 is a soft link; ckptkit follows only hard links"), fail("soft link"),
             "a soft link among the variables"),
        Case("keras_external_link", "ext.weights.h5", keras_weights(link("external")),
             fail("/layers/dense/vars/2 is an external link (to another file); ckptkit follows only hard links"),
             fail("external link"),
             "an external link to /etc/hostname among the variables"),
        Case("keras_external_storage", "ext.weights.h5", keras_weights(external_storage),
             fail("dataset /layers/dense/vars/2 keeps its data in other files"), fail("other files"),
             "a dataset whose bytes are in /etc/hostname"),
        Case("keras_sparse_dataset", "sparse.weights.h5", keras_weights(sparse), ok("8.59 GB"),
             fail("holds 8,589,934,592 bytes once decompressed but stores 0"),
             "an 8 GiB dataset of chunks never written: listed, refused when read"),
        Case("keras_gzip_bomb", "bomb.weights.h5", keras_weights(_gzip_bomb), ok("2.15 GB"),
             fail("holds 2,147,483,648 bytes once decompressed but stores"),
             "2 GiB of gzip-compressed zeros in 2 MB: listed, refused when read"),
        Case("keras_archive_config_bomb", "bomb.keras",
             _keras_archive(Member("config.json", bomb, zipfile.ZIP_DEFLATED, 1 << 30, 0)),
             fail("record config.json (uncompressed) is 1,073,741,824 bytes, over ckptkit's limit of 104,857,600"),
             fail("CKPTKIT_MAX_HEADER_BYTES"), "a config.json inflating to 1 GiB"),
        Case("keras_archive_config_lying", "bomb.keras",
             _keras_archive(Member("config.json", bomb, zipfile.ZIP_DEFLATED, 4096, 0)),
             fail("record config.json cannot be read: Bad CRC-32"), fail("Bad CRC-32"),
             "a config.json inflating to 1 GiB while declaring 4 KB"),
        Case("keras_archive_weights_bomb", "bomb.keras",
             _keras_archive(weights=Member("model.weights.h5", deflate_bomb(1 << 31), zipfile.ZIP_DEFLATED,
                                           1 << 31, 0)),
             fail("model.weights.h5 in the archive (compressed, 2,"), fail("CKPTKIT_MAX_MEMBER_BYTES"),
             "compressed weights that would extract to 2 GiB on disk"),
        Case("keras_archive_no_weights", "empty.keras", _keras_archive(no_weights=True),
             fail("the archive has no model.weights.h5"), fail("model.weights.h5"), "an archive without weights"),
        Case("keras_archive_config_deep", "deep.keras",
             _keras_archive(Member("config.json", b"[" * 100_000 + b"]" * 100_000)),
             fail("config.json in the archive nests JSON too deeply"), fail("too deeply"),
             "a config.json nested 100,000 deep"),
    ]  # fmt: skip
    return cases


def lfs_cases() -> list[Case]:
    oid = "4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393"
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize 12345\n".encode()
    expect = fail("this is a Git LFS pointer file, not the checkpoint itself; fetch it with 'git lfs pull'")
    return [
        Case(
            f"lfs_pointer_{ext.strip('.').replace('.', '_')}",
            f"model{ext}",
            lambda f: pointer,
            expect,
            expect,
            f"a Git LFS pointer named {ext}",
        )
        for ext in (".safetensors", ".pt", ".bin", ".ckpt", ".onnx", ".h5", ".weights.h5", ".keras")
    ]


def all_cases() -> list[Case]:
    cases = (safetensors_cases() + torch_zip_cases() + payload_cases() + legacy_cases() + onnx_cases()
             + keras_cases() + lfs_cases())  # fmt: skip
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return cases


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        sys.exit("usage: python tests/hostile/generate.py OUT")
    out = Path(argv[0])
    manifest = []
    for case in all_cases():
        path = case.write(out / case.name)
        manifest.append({
            "name": case.name, "file": str(path.relative_to(out)), "about": case.about, "env": case.env,
            **{cmd: vars(exp) for cmd in ("inspect", "convert", "verify") if (exp := getattr(case, cmd)) is not None},
        })  # fmt: skip
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    print(f"wrote {len(manifest)} cases to {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
