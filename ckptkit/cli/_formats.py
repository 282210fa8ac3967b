"""ckptkit formats: what each registered format can read and write."""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from ckptkit import registry
from ckptkit.cli._output import print_json, stdout_console
from ckptkit.core.dtypes import dtype_names


@click.command("formats")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def command(as_json: bool) -> None:
    """List the checkpoint formats ckptkit knows."""
    rows: list[dict[str, Any]] = [
        {
            "name": f.name,
            "read": f.can_read,
            "write": f.can_write,
            "extensions": list(f.extensions),
            "description": f.description,
            "read_options": [o.flag for o in f.read_options],
            "write_options": [o.flag for o in f.write_options],
            "dtypes": [d for d in dtype_names() if d in f.dtypes],
        }
        for f in registry.formats()
    ]
    if as_json:
        print_json(rows)
        return
    table = Table(box=None, pad_edge=False)
    for col in ("format", "read", "write", "extensions", "options", "description"):
        table.add_column(col)
    for r in rows:
        opts = " ".join(r["read_options"] + r["write_options"])
        table.add_row(
            r["name"], "yes" if r["read"] else "-", "yes" if r["write"] else "-",
            " ".join(r["extensions"]), opts, r["description"],
        )  # fmt: skip
    stdout_console().print(table)
