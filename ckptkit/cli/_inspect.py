"""ckptkit inspect PATH: what a checkpoint holds, from its headers (data only with --stats)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ckptkit import registry
from ckptkit.api import describe
from ckptkit.cli._output import (
    allow_global_option,
    display_name,
    format_option,
    human_bytes,
    input_path,
    print_json,
    printable,
    progress_bar,
    stdout_console,
    storage_option,
)
from ckptkit.core.names import leaf_name, module_path

if TYPE_CHECKING:
    from rich.table import Table
    from rich.tree import Tree

_MAX_VALUE_CHARS = 200


@click.command("inspect")
@storage_option
@click.argument("path", type=input_path)
@format_option("format_name", "--from", help="Read PATH as this format (default: detect from content).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (schema ckptkit.inspect/1).")
@click.option("--stats", is_flag=True, help="Read every tensor: min, max, mean, std, NaN and Inf counts.")
@click.option("--tree", is_flag=True, help="Group tensors by module path.")
@allow_global_option
def command(path: str | Path, format_name: str | None, as_json: bool, stats: bool, tree: bool) -> None:
    """Show a checkpoint's format, tensors, sizes and metadata."""
    with (
        registry.open_checkpoint(path, format_name) as ckpt,
        progress_bar(ckpt.total_bytes if stats else 0, f"inspect {display_name(path)}") as progress,
    ):
        report = describe(ckpt, stats=stats, progress=progress)
    if as_json:
        print_json(report)
    elif tree:
        _print_tree(report)
    else:
        _print_report(report, stats)


def _summary(report: dict[str, Any]) -> list[str]:
    unreadable = f" (and {len(report['unsupported'])} ckptkit cannot read)" if report["unsupported"] else ""
    lines = [
        f"{printable(report['path'])}",
        f"format: {report['format']}",
        f"tensors: {report['tensor_count']}{unreadable}   parameters: {report['parameters']:,}   "
        f"size: {human_bytes(report['bytes'])}",
    ]
    if report["bytes_by_dtype"]:
        parts = [f"{k} {human_bytes(v)}" for k, v in report["bytes_by_dtype"].items()]
        lines.append("by dtype: " + ", ".join(parts))
    for title in ("metadata", "extras"):
        items = report[title]
        if items:
            lines.append(f"{title} ({len(items)}):")
            for k, v in items.items():
                text = printable(v if isinstance(v, str) else repr(v))
                if len(text) > _MAX_VALUE_CHARS:
                    text = text[:_MAX_VALUE_CHARS] + f"... ({len(text)} chars)"
                lines.append(f"  {printable(k)} = {text}")
    if report["aliases"]:
        lines.append(f"aliases (tied weights, {len(report['aliases'])}):")
        lines.extend(f"  {printable(a)} -> {printable(t)}" for a, t in report["aliases"].items())
    return lines


def _print_report(report: dict[str, Any], stats: bool) -> None:
    out = stdout_console()
    for line in _summary(report):
        out.print(line, markup=False)
    if "structure" in report:
        _print_structure(report, stats)
    else:
        table = _tensor_table(stats)
        for t in report["tensors"]:
            table.add_row(*_tensor_row(t, stats))
        out.print(table)
    if report["unsupported"]:
        out.print(f"UNSUPPORTED: {len(report['unsupported'])} tensor(s) ckptkit cannot read (not listed above):",
                  markup=False)  # fmt: skip
        for name, why in report["unsupported"].items():
            out.print(f"  {printable(name)}: {printable(why)}", markup=False)


def _tensor_table(stats: bool) -> Table:
    from rich.table import Table  # rich loads only when a table is drawn, never for --json

    table = Table(box=None, pad_edge=False, show_edge=False)
    for col in ("name", "dtype", "shape", "size", "location"):
        table.add_column(col, justify="right" if col == "size" else "left")
    if stats:
        for col in ("min", "max", "mean", "std", "nan", "inf"):
            table.add_column(col, justify="right")
    return table


def _tensor_row(t: dict[str, Any], stats: bool, indent: str = "") -> list[Any]:
    from rich.text import Text

    row: list[Any] = [
        Text(indent + printable(t["name"])), t["dtype"], str(t["shape"]), human_bytes(t["nbytes"]),
        Text(printable(t["location"])),
    ]  # fmt: skip
    if stats:
        s = t["stats"]
        row += [_num(s["min"]), _num(s["max"]), _num(s["mean"]), _num(s["std"]), str(s["nan"]), str(s["inf"])]
    return row


def _print_structure(report: dict[str, Any], stats: bool) -> None:
    """The format's own grouping: one table per section (a Keras file's layers, its optimizer)."""
    from rich.text import Text

    out = stdout_console()
    by_name = {t["name"]: t for t in report["tensors"]}
    shown: set[str] = set()
    for section in report["structure"]["sections"]:
        groups = section["groups"]
        count = sum(len(g["tensors"]) for g in groups)
        size = sum(by_name[n]["nbytes"] for g in groups for n in g["tensors"] if n in by_name)
        out.print(f"{printable(section['title'])} ({len(groups)}, {count} tensors, {human_bytes(size)}):", markup=False)
        table = _tensor_table(stats)
        for group in groups:
            kind = f" ({printable(group['kind'])})" if group.get("kind") else ""
            table.add_row(Text(f"{printable(group['name'])}{kind}"), "", "", "" if group["tensors"] else "no weights")
            for name in group["tensors"]:
                if name in by_name:
                    table.add_row(*_tensor_row(by_name[name], stats, indent="  "))
                    shown.add(name)
        out.print(table)
    rest = [t for t in report["tensors"] if t["name"] not in shown]
    if rest:
        out.print(f"other tensors ({len(rest)}):", markup=False)
        table = _tensor_table(stats)
        for t in rest:
            table.add_row(*_tensor_row(t, stats))
        out.print(table)


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def _print_tree(report: dict[str, Any]) -> None:
    from rich.text import Text
    from rich.tree import Tree

    out = stdout_console()
    for line in _summary(report):
        out.print(line, markup=False)
    root: dict[str, Any] = {}
    for t in report["tensors"]:
        node = root
        for part in module_path(t["name"]):
            node = node.setdefault(part, {})
        node.setdefault("\0tensors", []).append(t)
    for name, why in report["unsupported"].items():
        node = root
        for part in module_path(name):
            node = node.setdefault(part, {})
        node.setdefault("\0tensors", []).append({"name": name, "unsupported": why, "numel": 0})
    tree = Tree(Text(f"{report['format']} ({report['parameters']:,} parameters)"))
    _fill(tree, root)
    out.print(tree)


def _params(node: dict[str, Any]) -> int:
    own = sum(t["numel"] for t in node.get("\0tensors", []))
    return own + sum(_params(v) for k, v in node.items() if k != "\0tensors")


def _fill(branch: Tree, node: dict[str, Any]) -> None:
    from rich.text import Text

    for key, child in node.items():
        if key == "\0tensors":
            continue
        sub = branch.add(Text(f"{printable(key)}  ({_params(child):,} parameters)"))
        _fill(sub, child)
    for t in node.get("\0tensors", []):
        leaf = leaf_name(t["name"])
        if "unsupported" in t:
            branch.add(Text(f"{printable(leaf)}  UNSUPPORTED: {printable(t['unsupported'])}"))
        else:
            branch.add(Text(f"{printable(leaf)}  {t['dtype']} {t['shape']}  {human_bytes(t['nbytes'])}"))
