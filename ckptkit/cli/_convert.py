"""ckptkit convert SRC DST: any format to any format, atomically, checked after writing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ckptkit import registry
from ckptkit.api import convert_checkpoint, plan_layout
from ckptkit.cli._output import (
    allow_global_option,
    display_name,
    executor_option,
    format_option,
    human_bytes,
    input_path,
    print_json,
    printable,
    progress_bar,
    storage_option,
)
from ckptkit.core.errors import UsageError
from ckptkit.core.model import Receipt


def _format_options(kind: str) -> Callable[[Any], Any]:
    """Add every option a registered reader or writer declares, once each."""
    specs: dict[str, registry.OptionSpec] = {}
    for fmt in registry.formats():
        for spec in fmt.read_options if kind == "read" else fmt.write_options:
            specs.setdefault(spec.name, spec)

    def decorate(func: Any) -> Any:
        for spec in reversed(list(specs.values())):
            if spec.kind == "flag":
                func = click.option(spec.flag, spec.name, is_flag=True, default=False, help=spec.help)(func)
            else:
                typ = click.Path(path_type=Path) if spec.kind == "path" else str
                func = click.option(spec.flag, spec.name, type=typ, multiple=spec.multiple, help=spec.help)(func)
        return func

    return decorate


def _names(kind: str) -> set[str]:
    return {s.name for f in registry.formats() for s in (f.read_options if kind == "read" else f.write_options)}


@click.command("convert")
@executor_option
@click.argument("src", type=input_path)
@click.argument("dst", type=click.Path())  # a str: a trailing "/" names a folder
@format_option("from_format", "--from", help="Read SRC as this format (default: detect from content).")
@format_option("to_format", "--to", help="Write DST in this format (default: from DST's extension).")
@click.option(
    "--dtype",
    metavar="DTYPE",
    help="Cast floating-point tensors to DTYPE (float16, bfloat16, ...), or complex ones; q8_0 or q4_0 quantize "
    "matrices when writing GGUF.",
)
@click.option(
    "--select",
    multiple=True,
    metavar="GLOB",
    help="Keep only these tensors; a plain name keeps a subtree and drops its prefix (--select state_dict).",
)
@click.option("--exclude", multiple=True, metavar="GLOB", help="Leave these tensors out.")
@click.option("--strip-prefix", multiple=True, metavar="P", help="Remove this prefix from names (module., _orig_mod.).")
@click.option("--force", is_flag=True, help="Overwrite DST if it exists.")
@click.option("--no-verify", is_flag=True, help="Skip re-reading the output to check every tensor.")
@click.option("--json", "as_json", is_flag=True, help="Print the receipt as JSON.")
@click.option(
    "--layout", type=click.Choice(["keras", "torch", "gguf"]),
    help="Translate layouts between PyTorch and Keras: to Keras names and channels-last kernels, or back; gguf: "
    "Hugging Face names to GGUF's, q/k rows permuted as llama.cpp's converter does (needs config.json).",
)  # fmt: skip
@click.option(
    "--layout-hint", "layout_hints", multiple=True, metavar="NAME=KIND",
    help="Say what a layer is where names and shapes cannot tell (fc1=flatten:16x5x5, conv1=depthwise, "
    "emb=embedding, attn=mha:8 for attention heads).",
)  # fmt: skip
@click.option(
    "--plan", "plan_only", is_flag=True, help="With --layout: print every rename and transpose, write nothing."
)
@_format_options("read")
@_format_options("write")
@allow_global_option
@storage_option
def command(
    src: str | Path,
    dst: str,
    from_format: str | None,
    to_format: str | None,
    dtype: str | None,
    select: tuple[str, ...],
    exclude: tuple[str, ...],
    strip_prefix: tuple[str, ...],
    force: bool,
    no_verify: bool,
    as_json: bool,
    layout: str | None,
    layout_hints: tuple[str, ...],
    plan_only: bool,
    **format_opts: Any,
) -> None:
    """Convert checkpoint SRC into DST (any readable format to any writable one).

    The output is written to a temporary file and renamed into place, and is re-read and
    compared tensor by tensor with the source unless --no-verify is given.
    """
    read_names, write_names = _names("read"), _names("write")
    read_opts = {k: v for k, v in format_opts.items() if k in read_names}
    write_opts = {k: v for k, v in format_opts.items() if k in write_names}
    if (plan_only or layout_hints) and layout not in ("keras", "torch"):
        raise UsageError("--plan and --layout-hint go with --layout keras|torch")
    if plan_only:
        plan = plan_layout(
            src, layout or "", layout_hints, from_format=from_format, select=select, exclude=exclude,
            strip_prefix=strip_prefix, read_options=read_opts, template=write_opts.get("template"),
        )  # fmt: skip
        if as_json:
            steps = [s.to_json() for s in plan.steps]
            print_json({"source": plan.source, "target": plan.target, "restored": plan.restored, "steps": steps,
                        "dropped": plan.dropped, "notes": plan.notes})  # fmt: skip
        else:
            for line in plan.lines():
                click.echo(printable(line))
        return
    # Opened once: the progress bar learns its size from the checkpoint being converted.
    with (
        registry.open_checkpoint(src, from_format, read_opts) as ckpt,
        progress_bar(ckpt.total_bytes * (1 if no_verify else 2), f"convert {display_name(src)}") as progress,
    ):
        receipt = convert_checkpoint(
            ckpt, dst,
            to_format=to_format, dtype=dtype,
            select=select, exclude=exclude, strip_prefix=strip_prefix,
            force=force, verify=not no_verify, options=write_opts, progress=progress,
            layout=layout, layout_hints=layout_hints,
        )  # fmt: skip
    if as_json:
        print_json(receipt.to_dict())
    else:
        _print_receipt(receipt)


def _print_receipt(r: Receipt) -> None:
    # Plain lines: no table to draw, so rich is not loaded for them.
    check = "verified" if r.verified else "not verified"
    click.echo(
        f"wrote {printable(r.destination)} ({r.destination_format}): {r.tensors_written} tensors, "
        f"{human_bytes(r.bytes_written)}, {check}"
    )
    sections = (("renamed", r.renamed), ("transformed", r.transformed), ("cast", r.cast), ("aliased", r.aliased))
    for title, items in sections:
        if items:
            click.echo(f"  {title} ({len(items)}):")
            for k, v in list(items.items())[:20]:
                arrow = f"{printable(v)} -> {printable(k)}" if title == "renamed" else f"{printable(k)}: {printable(v)}"
                click.echo(f"    {arrow}")
            if len(items) > 20:
                click.echo(f"    ... and {len(items) - 20} more")
    if r.dropped:
        shown = ", ".join(printable(n) for n in r.dropped[:10])
        more = f" and {len(r.dropped) - 10} more" if len(r.dropped) > 10 else ""
        click.echo(f"  dropped ({len(r.dropped)}): {shown}{more}")
    for note in r.notes:
        click.echo(f"  note: {printable(note)}")
