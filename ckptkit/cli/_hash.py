"""ckptkit hash PATH: per-tensor content hashes, file hashes and a root hash, as a manifest."""

from __future__ import annotations

from pathlib import Path

import click

from ckptkit.cli._output import (
    allow_global_option,
    display_name,
    executor_option,
    format_option,
    input_path,
    print_json,
    printable,
    progress_bar,
    storage_option,
)
from ckptkit.io.atomic import AtomicOutput
from ckptkit.io.jsonfile import dumps_text


@click.command("hash")
@executor_option
@storage_option
@click.argument("path", type=input_path)
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), help="Write the manifest to this file instead of stdout."
)
@click.option("--force", is_flag=True, help="Overwrite the --output file if it exists.")
@click.option(
    "--no-file-hashes",
    is_flag=True,
    help="List the files with their sizes but skip their whole-file SHA-256: each byte is hashed once, "
    "not twice. Tensor hashes and the root are unchanged.",
)
@click.option(
    "--exclude", multiple=True, metavar="GLOB",
    help="Leave these tensors out of the manifest, as convert --exclude leaves them out of its output; "
    "tensors ckptkit cannot read (quantized, sparse, ...) must be left out to hash the rest.",
)  # fmt: skip
@format_option("format_name", "--from", help="Read PATH as this format (default: detect from content).")
@allow_global_option
def command(
    path: str | Path,
    output: Path | None,
    force: bool,
    no_file_hashes: bool,
    exclude: tuple[str, ...],
    format_name: str | None,
) -> None:
    """Hash every tensor of PATH independently of its file format.

    PATH is a checkpoint file, a shard index (*.index.json) or a folder holding one. The manifest
    (JSON) lists each tensor's content hash, each file's SHA-256 and the root hash over the
    tensors; the same tensors stored in any format give the same tensor hashes and root.
    Check a checkpoint against it with: ckptkit verify PATH --manifest FILE.
    """
    from ckptkit.hashing.manifest import HashJob  # loaded only for this command

    job = HashJob(path, format_name)
    passes = 1 if no_file_hashes else 2
    with progress_bar(passes * job.nbytes, f"hash {display_name(path)}") as progress:
        manifest = job.run(progress=progress, file_hashes=not no_file_hashes, exclude=exclude)
    data = manifest.to_dict()
    if output is None:
        print_json(data)
        return
    with AtomicOutput(output, force=force) as out:
        out.temp_for().write_text(dumps_text(data, indent=2) + "\n", encoding="utf-8")
    click.echo(
        f"{manifest.root}  {printable(str(path))}  ({len(manifest.tensors)} tensors, {len(manifest.files)} files; "
        f"manifest written to {printable(str(output))})"
    )
