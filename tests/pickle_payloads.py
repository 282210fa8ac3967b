"""Hostile pickle payloads, hand-assembled from opcodes, and torch.save files that carry them.

Each payload is the opcodes that push one value; spliced into a real ``torch.save`` pickle as the
value of an extra key, it runs while the file loads. Run by the plain ``pickle`` module, each
executable payload creates the marker file it is given, which proves the payload is real; ckptkit
must report it and never run it.
"""

from __future__ import annotations

import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# Opcodes (Lib/pickletools.py).
MARK, STOP, POP, NONE, REDUCE, BUILD, SETITEM = b"(", b".", b"0", b"N", b"R", b"b", b"s"
TUPLE, TUPLE1, TUPLE2, EMPTY_TUPLE, EMPTY_DICT, NEWOBJ, STACK_GLOBAL = (
    b"t",
    b"\x85",
    b"\x86",
    b")",
    b"}",
    b"\x81",
    b"\x93",
)


def glob(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def text(s: str) -> bytes:
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def binbytes(b: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(b)) + b


def put(i: int) -> bytes:
    return b"r" + struct.pack("<I", i)


def get(i: int) -> bytes:
    return b"j" + struct.pack("<I", i)


def call(func: bytes, *args: bytes) -> bytes:
    return func + MARK + b"".join(args) + TUPLE + REDUCE


def _getattr(obj_ops: bytes, attr: str) -> bytes:
    return call(glob("builtins", "getattr"), obj_ops, text(attr))


def _pickled(ops: bytes) -> bytes:
    return b"\x80\x02" + ops + STOP


def _import(module: str) -> bytes:
    return call(glob("builtins", "__import__"), text(module))


def _touch(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').close()"


@dataclass(frozen=True)
class Payload:
    """``ops(marker)`` pushes one value; ``globals`` are the (module, name) pairs a scanner must name."""

    ops: Callable[[Path], bytes]
    globals: tuple[tuple[str, str], ...]
    runs: bool = True  # whether plain pickle executes something (creates the marker)


_HIGH_MEMO = 100_000  # memo slots far above those the torch pickle itself uses

PAYLOADS: dict[str, Payload] = {
    "os.system": Payload(lambda m: call(glob("os", "system"), text(f"touch {m}")), (("os", "system"),)),
    "eval": Payload(lambda m: call(glob("builtins", "eval"), text(_touch(m))), (("builtins", "eval"),)),
    "exec": Payload(lambda m: call(glob("builtins", "exec"), text(_touch(m))), (("builtins", "exec"),)),
    "runpy": Payload(
        lambda m: call(text("runpy") + text("_run_code") + STACK_GLOBAL, text(_touch(m)), EMPTY_DICT),
        (("runpy", "_run_code"),),
    ),
    "importlib": Payload(
        lambda m: call(
            call(glob("builtins", "getattr"), call(glob("importlib", "import_module"), text("os")), text("system")),
            text(f"touch {m}"),
        ),
        (("importlib", "import_module"), ("builtins", "getattr")),
    ),
    "subprocess": Payload(
        lambda m: call(glob("subprocess", "call"), MARK + text("touch") + text(str(m)) + TUPLE),
        (("subprocess", "call"),),
    ),
    "getattr-chain": Payload(
        # getattr(getattr(getattr(__import__("os"), "path"), "os"), "system")(cmd): os reached through os.path.
        lambda m: call(_getattr(_getattr(_getattr(_import("os"), "path"), "os"), "system"), text(f"touch {m}")),
        (("builtins", "getattr"), ("builtins", "__import__")),
    ),
    "build-overwrites-attributes": Payload(
        # Sets argparse.Namespace.ckptkit_pwned = True: BUILD with slot state calls setattr on the class.
        lambda m: glob("argparse", "Namespace") + NONE + EMPTY_DICT + text("ckptkit_pwned") + b"\x88" + SETITEM
        + TUPLE2 + BUILD,
        (("argparse", "Namespace"),),
    ),
    "memo": Payload(
        # The global is stored in the memo and dropped, then fetched back and called.
        lambda m: glob("os", "system") + put(_HIGH_MEMO) + POP + get(_HIGH_MEMO) + MARK + text(f"touch {m}") + TUPLE
        + REDUCE,
        (("os", "system"),),
    ),
    "nested-pickle": Payload(
        lambda m: call(glob("pickle", "loads"), binbytes(_pickled(call(glob("os", "system"), text(f"touch {m}"))))),
        (("pickle", "loads"),),
    ),
    "python2-names": Payload(
        lambda m: call(glob("__builtin__", "eval"), text(_touch(m))), (("builtins", "eval"),)
    ),
    "non-torch-global": Payload(
        lambda m: glob("__main__", "Exploit") + EMPTY_TUPLE + NEWOBJ + EMPTY_DICT + text("cmd") + text(f"touch {m}")
        + SETITEM + BUILD,
        (("__main__", "Exploit"),),
        runs=False,
    ),
}  # fmt: skip


def splice(pickle_bytes: bytes, key: str, value_ops: bytes) -> bytes:
    """A torch.save pickle whose top-level dict gains ``key`` -> the payload's value."""
    assert pickle_bytes.endswith(STOP)
    return pickle_bytes[:-1] + text(key) + value_ops + SETITEM + STOP


def torch_zip_with(base: Path, dest: Path, value_ops: bytes, key: str = "payload") -> Path:
    """Copy of the torch zip ``base`` whose data.pkl carries ``value_ops`` under ``key``."""
    with zipfile.ZipFile(base) as src, zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as out:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("/data.pkl"):
                data = splice(data, key, value_ops)
            out.writestr(info.filename, data)
    return dest


# Run by a separate interpreter: loads data.pkl with the plain pickle module, as torch.load(weights_only=False)
# would, with torch's own globals stubbed out so torch need not be imported.
PLAIN_LOADER = r"""
import argparse, pickle, sys, zipfile

class Loader(pickle.Unpickler):
    def find_class(self, module, name):
        if module.startswith("torch"):
            return lambda *a, **k: None
        return super().find_class(module, name)

    def persistent_load(self, pid):
        return None

for path, marker in zip(sys.argv[1::2], sys.argv[2::2]):
    with zipfile.ZipFile(path) as zf:
        data = zf.read(next(n for n in zf.namelist() if n.endswith("/data.pkl")))
    try:
        Loader(__import__("io").BytesIO(data)).load()
    except Exception as err:
        print(path, type(err).__name__, err, file=sys.stderr)
    if getattr(argparse.Namespace, "ckptkit_pwned", False):
        open(marker, "w").close()
        del argparse.Namespace.ckptkit_pwned
"""


def legacy_with(base: Path, dest: Path, value_ops: bytes, key: str = "payload") -> Path:
    """Copy of the legacy (pre-zip) torch file ``base`` whose main pickle (the 4th) carries the payload."""
    import io
    import pickletools

    raw = base.read_bytes()
    stream = io.BytesIO(raw)
    for _ in range(4):
        start = stream.tell()
        for _op in pickletools.genops(stream):
            pass
    end = stream.tell()
    dest.write_bytes(raw[:start] + splice(raw[start:end], key, value_ops) + raw[end:])
    return dest
