"""The Python API, mirroring the command line: load, save, convert, inspect, diff.

This is where the engines are composed: ``diff`` gets the PyTorch <-> Keras layout rules here, so
that neither the diff engine nor the layout rules import the other.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckptkit import registry
from ckptkit.core.compare import arrays_identical
from ckptkit.core.dtypes import BLOCK_QUANTIZATIONS, by_name
from ckptkit.core.errors import CorruptCheckpointError, UsageError
from ckptkit.core.format import WriteContext
from ckptkit.core.model import Checkpoint, MemoryCheckpoint, ProgressFn, RawExtent, Receipt, refuse_unsupported
from ckptkit.core.stats import compute_stats
from ckptkit.core.trust import trusting
from ckptkit.core.views import TransformedCheckpoint, transform
from ckptkit.io.atomic import STAGING_PREFIX, AtomicOutput
from ckptkit.io.extents import ExtentKey, checking_copies, extent_key, identical_extents
from ckptkit.io.shards.write import SHARD_SIZE_OPTION
from ckptkit.io.source import is_url
from ckptkit.io.workers import default_executor, map_tensors

if TYPE_CHECKING:
    from ckptkit.diffing import DiffReport
    from ckptkit.diffing.api import Source
    from ckptkit.diffing.normalize import Normalizer


def load(
    path: str | Path, format: str | None = None, *, allow_globals: Iterable[str] = (), **options: Any
) -> Checkpoint:
    """Open a checkpoint lazily; use it as a context manager to close it.

    A pickle that calls anything outside ckptkit's allow-list is refused with
    :class:`~ckptkit.core.errors.UnsafeCheckpointError`; ``allow_globals`` names
    (``"mypackage.TrainConfig"``) a team trusts, as ``--allow-global`` does.

    >>> with ckptkit.load("model.pt") as ckpt:
    ...     w = ckpt.read_tensor("fc.weight")
    """
    with trusting(allow_globals):
        return registry.open_checkpoint(path, format, options)


def _input(src: str | Path) -> str | Path:
    """An input as named: a URL stays text (``Path`` would fold its ``//``), anything else is a path."""
    return src if is_url(src) else Path(src)


def save(
    tensors: Mapping[str, Any] | Checkpoint,
    path: str | Path,
    format: str | None = None,
    *,
    metadata: Mapping[str, str] | None = None,
    force: bool = False,
    **options: Any,
) -> Receipt:
    """Write a dict of arrays (numpy or torch) or an open checkpoint to ``path``."""
    ckpt = tensors if isinstance(tensors, Checkpoint) else MemoryCheckpoint(tensors, metadata)
    return write_checkpoint(ckpt, Path(path), format, force=force, options=options)


def convert(
    src: str | Path,
    dst: str | Path,
    *,
    from_format: str | None = None,
    to_format: str | None = None,
    dtype: str | None = None,
    select: Sequence[str] = (),
    exclude: Sequence[str] = (),
    strip_prefix: Sequence[str] = (),
    force: bool = False,
    verify: bool = True,
    read_options: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    progress: ProgressFn | None = None,
    layout: str | None = None,
    layout_hints: Sequence[str] = (),
    allow_globals: Iterable[str] = (),
) -> Receipt:
    """Convert ``src`` into ``dst``, atomically, re-reading the result to check it by default.

    ``layout`` ("keras" or "torch") translates tensor layouts between the frameworks on the way
    (see :mod:`ckptkit.layout`); ``layout_hints`` settle what names and shapes cannot tell.
    ``layout="gguf"`` renames a Hugging Face checkpoint to GGUF names and permutes its q/k rows as
    llama.cpp's converter does (see :mod:`ckptkit.formats.gguf.names`).
    A tensor ckptkit cannot read (``Checkpoint.unsupported``) makes the conversion fail with
    :class:`~ckptkit.core.errors.UnsupportedError` unless ``select``/``exclude`` leave it out.
    ``allow_globals`` are pickle globals trusted as ``--allow-global`` trusts them.
    """
    with trusting(allow_globals), registry.open_checkpoint(_input(src), from_format, read_options) as ckpt:
        return convert_checkpoint(
            ckpt,
            dst,
            to_format=to_format,
            dtype=dtype,
            select=select,
            exclude=exclude,
            strip_prefix=strip_prefix,
            force=force,
            verify=verify,
            options=options,
            progress=progress,
            layout=layout,
            layout_hints=layout_hints,
        )


def convert_checkpoint(
    ckpt: Checkpoint,
    dst: str | Path,
    *,
    to_format: str | None = None,
    dtype: str | None = None,
    select: Sequence[str] = (),
    exclude: Sequence[str] = (),
    strip_prefix: Sequence[str] = (),
    force: bool = False,
    verify: bool = True,
    options: Mapping[str, Any] | None = None,
    progress: ProgressFn | None = None,
    layout: str | None = None,
    layout_hints: Sequence[str] = (),
) -> Receipt:
    """:func:`convert` of a checkpoint already open, for a caller that sized its progress bar from it."""
    if dtype and _is_quantization(dtype):
        options = {**(options or {}), "quantize": _quantization_for(dtype.strip().lower(), dst, to_format)}
        dtype = None
    view = transform(ckpt, select, exclude, strip_prefix, by_name(dtype) if dtype else None)
    refuse_unsupported(view)
    plan = None
    if layout == "gguf":
        from ckptkit.formats.gguf.names import hf_to_gguf

        translated: Checkpoint = hf_to_gguf(view)
    elif layout:
        from ckptkit.layout import apply_layout, plan_layout

        template = (options or {}).get("template")
        extra = []
        if layout == "keras" and template:
            from ckptkit.layout.reference import template_hints

            extra = template_hints(Path(template), list(view.tensor_infos()))
        plan = plan_layout(view, layout, layout_hints, extra)
        translated = apply_layout(view, plan)
    else:
        translated = view
    receipt = write_checkpoint(
        translated, dst, to_format, force=force, options=options or {}, verify=verify, progress=progress
    )
    if isinstance(view, TransformedCheckpoint):
        receipt.renamed.update(view.renamed)
        receipt.cast.update(view.cast)
        receipt.dropped.extend(view.dropped)
    if plan is not None:
        earlier = dict(receipt.renamed)
        for new, old in plan.renamed.items():
            receipt.renamed[new] = earlier.pop(old, old)
            receipt.renamed.pop(old, None)
        receipt.transformed.update(plan.transformed)
        receipt.dropped.extend(plan.dropped)
        receipt.notes[:0] = plan.notes
    if layout == "gguf":
        earlier = dict(receipt.renamed)
        for new, old in getattr(translated, "renamed", {}).items():
            receipt.renamed[new] = earlier.pop(old, old)
            receipt.renamed.pop(old, None)
        receipt.transformed.update(getattr(translated, "transformed", {}))
    return receipt


def diff(
    a: Source,
    b: Source,
    *,
    a_format: str | None = None,
    b_format: str | None = None,
    depth: int | None = None,
    rename: Sequence[str] = (),
    map: str | Path | Mapping[str, str] | None = None,
    fail_on: Sequence[str] = (),
    tolerance: Sequence[str] = (),
    normalizers: Sequence[Normalizer] | None = None,
    threads: int | None = None,
    progress: ProgressFn | None = None,
) -> DiffReport:
    """Compare checkpoint ``a`` with ``b``: what is only in one, what changed shape or dtype, and
    how far every shared tensor drifted, per tensor, per layer and in total.

    ``a`` and ``b`` are paths (any format ckptkit reads; ``a_format``/``b_format`` skip detection),
    open checkpoints or dicts of arrays. ``rename`` holds ``PATTERN=REPLACEMENT`` rules applied to
    names on both sides, ``map`` a file or dict pairing names of ``a`` with names of ``b``.
    ``depth`` cuts module paths into layers (default: at the repeated blocks). ``fail_on`` and
    ``tolerance`` are the CLI's threshold expressions; :attr:`DiffReport.passed` tells the outcome.
    ``normalizers`` replaces the default ones, :func:`diff_normalizers` (see
    :mod:`ckptkit.diffing.normalize`). ``progress`` is called with byte counts as tensors are compared.

    Tensors are read one at a time from both sides, large ones in chunks, on ``threads`` threads
    (default: :func:`ckptkit.io.workers.worker_count`'s policy).
    """
    from ckptkit.diffing import diff as compare

    return compare(
        a,
        b,
        a_format=a_format,
        b_format=b_format,
        depth=depth,
        rename=rename,
        map=map,
        fail_on=fail_on,
        tolerance=tolerance,
        normalizers=diff_normalizers() if normalizers is None else normalizers,
        threads=threads,
        progress=progress,
    )


def diff_normalizers(layout_hints: Sequence[str] = ()) -> list[Normalizer]:
    """What :func:`diff` tries on each side by default: a Keras checkpoint seen with PyTorch names
    and layouts (``layout_hints``, ``PATTERN=KIND``, settle what the rules cannot tell), a GGUF file
    seen with Hugging Face names and q/k row order, then the normalizers added with
    :func:`ckptkit.diffing.register_normalizer`."""
    from ckptkit.diffing.normalize import registered_normalizers
    from ckptkit.formats.gguf.names import gguf_to_hf
    from ckptkit.layout.diff_normalizer import keras_to_torch_layout, keras_to_torch_layout_with

    hinted = [keras_to_torch_layout_with(layout_hints)] if layout_hints else []
    return [*hinted, keras_to_torch_layout, gguf_to_hf, *registered_normalizers()]


def plan_layout(
    src: str | Path,
    layout: str,
    layout_hints: Sequence[str] = (),
    *,
    from_format: str | None = None,
    select: Sequence[str] = (),
    exclude: Sequence[str] = (),
    strip_prefix: Sequence[str] = (),
    read_options: Mapping[str, Any] | None = None,
    template: str | Path | None = None,
) -> Any:
    """What ``convert(..., layout=layout)`` would do to each tensor, without writing (a ``LayoutPlan``).

    ``template``: the Keras model a ``--template`` conversion would fill, whose layer classes
    settle what names and shapes cannot.
    """
    from ckptkit.layout import plan_layout as plan
    from ckptkit.layout.reference import template_hints

    with registry.open_checkpoint(_input(src), from_format, read_options) as ckpt:
        view = transform(ckpt, select, exclude, strip_prefix)
        extra = template_hints(Path(template), list(view.tensor_infos())) if template and layout == "keras" else []
        return plan(view, layout, layout_hints, extra)


def write_checkpoint(
    ckpt: Checkpoint,
    dst: str | Path,
    format: str | None = None,
    *,
    force: bool = False,
    options: Mapping[str, Any] | None = None,
    verify: bool = False,
    progress: ProgressFn | None = None,
) -> Receipt:
    """Write ``ckpt`` with the writer of ``format`` (default: from ``dst``'s extension).

    ``dst`` may be a folder, an existing one or a name ending in ``/`` (created when missing, and
    removed again if the write fails): the file is named there as Hugging Face names it, such as
    ``model.safetensors``. It may also name a shard index (``model.safetensors.index.json``).
    A URL (``s3://bucket/out/``, ``gs://...``, ``hf://...``) is written locally, checked, then
    uploaded, the index or main file last (:mod:`ckptkit.io.upload`), with the storage options
    in use (:func:`ckptkit.io.source.use_storage_options`).
    A checkpoint holding tensors ckptkit cannot read is refused (:func:`refuse_unsupported`).
    """
    refuse_unsupported(ckpt)
    if is_url(dst) and not str(dst).lower().startswith("file://"):
        return _write_remote(ckpt, str(dst), format, force, options, verify, progress)
    if is_url(dst):
        dst = str(dst)[len("file://") :]
    as_folder = isinstance(dst, str) and dst.endswith(("/", os.sep))
    dst = Path(dst)
    if as_folder and dst.exists() and not dst.is_dir():
        raise UsageError(f"{dst} is a file, but the destination ends in '/', which names a folder")
    if as_folder or dst.is_dir():
        fmt = registry.for_output(dst, format)
        created = _make_folder(dst)
        try:
            return _write(ckpt, dst / fmt.folder_file_name, format, force, options, verify, progress)
        except BaseException:
            if created:
                _remove_empty_folders(created)
            raise
    return _write(ckpt, dst, format, force, options, verify, progress)


def _write_remote(
    ckpt: Checkpoint,
    url: str,
    format: str | None,
    force: bool,
    options: Mapping[str, Any] | None,
    verify: bool,
    progress: ProgressFn | None,
) -> Receipt:
    """Write into a local staging folder (checked there when ``verify``), then publish to ``url``
    (:mod:`ckptkit.io.upload`: data files first, the main file last, nothing left on failure)."""
    from ckptkit.io import upload

    default_name = registry.for_output(Path(url.rstrip("/")), format).folder_file_name if url.endswith("/") else None
    target = upload.remote_target(url, default_name)
    upload.check_free(target, [target.name], force)  # before the conversion, which may take long
    # The staging folder follows TMPDIR; with --executor dask:// it must be one the workers share.
    with tempfile.TemporaryDirectory(prefix=STAGING_PREFIX + "upload-") as tmp:
        staged = Path(tmp)
        receipt = _write(ckpt, staged / target.name, format, True, options, verify, progress)
        urls = upload.publish(target, staged, [Path(f) for f in receipt.files], force)
    receipt.files = urls
    receipt.destination = urls[-1]
    return receipt


def _make_folder(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; the ones created, innermost first."""
    created = []
    for p in [folder, *folder.parents]:
        if p.exists():
            break
        created.append(p)
    folder.mkdir(parents=True, exist_ok=True)
    return created


def _remove_empty_folders(folders: list[Path]) -> None:
    for p in folders:
        try:
            p.rmdir()
        except OSError:
            return


def _is_quantization(dtype: str) -> bool:
    """Whether ``dtype`` names a GGML block type (q8_0, q4_k, iq4_xs...) rather than an element type."""
    from ckptkit.formats.gguf.header import GGML_BY_NAME

    t = GGML_BY_NAME.get(dtype.strip().upper())
    return dtype.strip().lower() in BLOCK_QUANTIZATIONS or (t is not None and t.dtype is None)


def _quantization_for(name: str, dst: str | Path, to_format: str | None) -> str:
    """``name`` when the output can hold it, else a usage error saying what would."""
    if name not in BLOCK_QUANTIZATIONS:
        raise UsageError(
            f"--dtype {name}: ckptkit quantizes GGUF output to {' or '.join(BLOCK_QUANTIZATIONS)} only; "
            f"llama.cpp's llama-quantize makes {name.upper()} from a GGUF file ckptkit writes"
        )
    try:
        fmt = registry.for_output(Path(dst), to_format)
    except UsageError:
        return name  # the output's own error comes when it is written
    if not any(o.name == "quantize" for o in fmt.write_options):
        raise UsageError(
            f"--dtype {name} is a GGUF quantization: it needs GGUF output (a .gguf destination or --to gguf), "
            f"not {fmt.name}; to make a smaller {fmt.name} file cast with --dtype float16 or bfloat16"
        )
    return name


def _write(
    ckpt: Checkpoint,
    dst: Path,
    format: str | None,
    force: bool,
    options: Mapping[str, Any] | None,
    verify: bool,
    progress: ProgressFn | None,
) -> Receipt:
    fmt = registry.for_output(dst, format)
    opts = {k: v for k, v in (options or {}).items() if v not in (None, False, (), "")}
    unknown = set(opts) - {o.name for o in fmt.write_options}
    if unknown:
        flags = ", ".join("--" + o.replace("_", "-") for o in sorted(unknown))
        raise UsageError(f"{flags} cannot be used when writing {fmt.name}")
    if dst.name.endswith(registry.INDEX_SUFFIX) and SHARD_SIZE_OPTION not in fmt.write_options:
        raise UsageError(f"ckptkit cannot write {fmt.name} as shards with an index; name a single file")
    if ckpt.path is not None and dst.exists() and dst.resolve() == Path(ckpt.path).resolve():
        raise UsageError(f"{dst} is the input too; write to another file")
    receipt = Receipt(
        source=ckpt.url or str(ckpt.path or "<memory>"),
        destination=str(dst),
        source_format=ckpt.format_name,
        destination_format=fmt.name,
        tensors_written=len(ckpt),
        aliased=dict(ckpt.aliases),
    )
    assert fmt.write is not None
    with AtomicOutput(dst, force=force) as out:
        ctx = WriteContext(output=out, options=opts, progress=progress)
        compared: dict[tuple[ExtentKey, ExtentKey], bool] = {}
        if verify:
            # Tensors copied as-is are compared with their source while the next ones are copied.
            with checking_copies() as check:
                fmt.write(ckpt, ctx)
            compared = check.results()
        else:
            fmt.write(ckpt, ctx)
        receipt.notes.extend(ctx.notes)
        receipt.transformed.update(ctx.transformed)
        staged = [out.temp_for(f) for f in out.files]
        receipt.bytes_written = sum(p.stat().st_size for p in staged if p.is_file())
        receipt.files = [str(f) for f in out.files]
        receipt.destination = str(out.path)
        if verify:
            expected = ctx.expected if ctx.expected is not None else ckpt
            # A shard index is read by the format that reads indexes, not by the shards' own.
            read_as = None if out.path.name.endswith(registry.INDEX_SUFFIX) else fmt.name
            with registry.open_checkpoint(out.temp_for(), read_as) as written:
                compare_checkpoints(expected, written, dst, progress, compared)
            receipt.verified = True
    return receipt


def compare_checkpoints(
    expected: Checkpoint,
    written: Checkpoint,
    dst: Path,
    progress: ProgressFn | None = None,
    compared: Mapping[tuple[ExtentKey, ExtentKey], bool] | None = None,
) -> None:
    """Check that ``written`` holds every tensor of ``expected``, bit for bit.

    Headers are checked first. A tensor whose bytes lie as-is in both files (copied without
    decoding) is compared as bytes of the two files; the others, cast or re-laid on the way, are
    decoded and compared in groups of tensors of similar total size. Both run on the default
    executor's threads (decoding only when both checkpoints allow concurrent reads).

    ``compared``: bytes already found equal while the write ran, as bytes or by their CRC-32C
    (:func:`ckptkit.io.extents.checking_copies`), by (source extent, output extent); a tensor is
    not compared again only where the output, read back, places it at exactly such an output
    extent and the expected tensor lies at exactly its source extent.
    """
    have = set(written.names()) | set(written.aliases)
    data: list[str] = []
    for name in list(expected.names()) + list(expected.aliases):
        if name not in have:
            raise CorruptCheckpointError(f"verification failed: tensor {name!r} is missing from what was written", dst)
        want_info = expected.info(expected.aliases.get(name, name))
        got_info = written.info(written.aliases.get(name, name))
        if (want_info.dtype, want_info.shape) != (got_info.dtype, got_info.shape):
            raise CorruptCheckpointError(
                f"verification failed: tensor {name!r} was written as {got_info.dtype.name} {list(got_info.shape)}, "
                f"expected {want_info.dtype.name} {list(want_info.shape)}",
                dst,
            )
        if name not in expected.aliases:
            data.append(name)

    raw: dict[str, tuple[RawExtent, RawExtent]] = {}
    done: dict[str, bool] = {}
    for name in data:
        want = expected.raw_extent(name)
        got = written.raw_extent(written.aliases.get(name, name)) if want is not None else None
        if want is not None and got is not None:
            if compared and compared.get((extent_key(want), extent_key(got))):
                done[name] = True
                if progress:
                    progress(want.nbytes)
            else:
                raw[name] = (want, got)
    same_bytes = dict(zip(raw, identical_extents(list(raw.values()), progress=progress), strict=True))
    same_bytes.update(done)
    data = [name for name in data if name not in raw and name not in done]

    def same(name: str) -> bool:
        result = arrays_identical(expected.read_tensor(name), written.read_tensor(written.aliases.get(name, name)))
        if progress:
            progress(expected.info(name).nbytes)
        return result

    executor = default_executor(expected.concurrent_reads and written.concurrent_reads)
    results = map_tensors(expected, same, data, executor)
    results.update(same_bytes)
    differing = next((name for name in expected.names() if not results.get(name, True)), None)
    if differing is not None:
        raise CorruptCheckpointError(f"verification failed: tensor {differing!r} differs from the source", dst)


def inspect(
    path: str | Path,
    format: str | None = None,
    *,
    stats: bool = False,
    progress: ProgressFn | None = None,
    allow_globals: Iterable[str] = (),
) -> dict[str, Any]:
    """Describe a checkpoint: the same content ``ckptkit inspect --json`` prints."""
    with trusting(allow_globals), registry.open_checkpoint(path, format) as ckpt:
        return describe(ckpt, stats=stats, progress=progress)


def describe(ckpt: Checkpoint, *, stats: bool = False, progress: ProgressFn | None = None) -> dict[str, Any]:
    """The inspect report of an open checkpoint (headers only unless ``stats``).

    ``unsupported`` maps the tensors ckptkit cannot read to why; they are not in ``tensors`` or the counts.
    """
    infos = ckpt.tensor_infos()
    by_dtype: Counter[str] = Counter()
    params_by_dtype: Counter[str] = Counter()
    tensors = []
    for ti in infos:
        by_dtype[ti.dtype.name] += ti.nbytes
        params_by_dtype[ti.dtype.name] += ti.numel
        entry: dict[str, Any] = {
            "name": ti.name,
            "dtype": ti.dtype.name,
            "shape": list(ti.shape),
            "numel": ti.numel,
            "nbytes": ti.nbytes,
            "location": ti.location,
        }
        if stats:
            entry["stats"] = compute_stats(ckpt.read_tensor(ti.name)).to_dict()
            if progress:
                progress(ti.nbytes)
        tensors.append(entry)
    report = {
        "schema": "ckptkit.inspect/1",
        "path": ckpt.url or str(ckpt.path),
        "format": ckpt.format_name,
        "tensor_count": len(infos),
        "parameters": sum(ti.numel for ti in infos),
        "bytes": sum(ti.nbytes for ti in infos),
        "bytes_by_dtype": dict(by_dtype),
        "parameters_by_dtype": dict(params_by_dtype),
        "aliases": dict(ckpt.aliases),
        "metadata": dict(ckpt.metadata),
        "extras": dict(ckpt.extras),
        "tensors": tensors,
        "unsupported": dict(ckpt.unsupported),
    }
    structure = ckpt.structure()
    if structure is not None:
        report["structure"] = structure
    return report
