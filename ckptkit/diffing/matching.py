"""Pairing the tensors of two checkpoints by name.

In order, each step only on names the earlier steps left unpaired: an explicit map (``--map``),
the same name, the same name after ``--rename`` rules (applied to both sides), and the same name
once wrapper prefixes (``module.`` from DataParallel, ``_orig_mod.`` from torch.compile,
``model.``, ``state_dict.``) are removed. A step pairs a name only when it is unambiguous on both
sides.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ckptkit.core.errors import CkptkitError, UsageError

WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.", "state_dict.", "model_state_dict.")


@dataclass(frozen=True)
class Pair:
    """Tensor ``a`` of the first checkpoint matched with ``b`` of the second, and how."""

    a: str
    b: str
    how: str  # "exact", "map", "rename" or "prefix"


@dataclass
class Matching:
    pairs: list[Pair] = field(default_factory=list)  # in the first checkpoint's order
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RenameRule:
    """``PATTERN=REPLACEMENT``: a regular expression substitution applied to names on both sides."""

    pattern: re.Pattern[str]
    replacement: str

    @classmethod
    def parse(cls, text: str) -> RenameRule:
        pattern, sep, replacement = text.partition("=")
        if not sep or not pattern:
            raise UsageError(
                f"invalid --rename {text!r}: write it as PATTERN=REPLACEMENT, e.g. 'transformer\\.h\\.=layers.'"
            )
        try:
            compiled = re.compile(pattern)
            compiled.sub(replacement, "")
        except re.error as err:
            raise UsageError(f"invalid --rename {text!r}: {err}") from None
        return cls(compiled, replacement)

    def apply(self, name: str) -> str:
        return self.pattern.sub(self.replacement, name)


def load_map(path: str | Path) -> dict[str, str]:
    """A name map file: a JSON object ``{"name in A": "name in B"}``, or lines ``NAME_A NAME_B``.

    In the line form, blank lines and lines starting with ``#`` are skipped.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise CkptkitError(f"cannot read the --map file: {err}", p) from None
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise UsageError(f"the --map file is not valid JSON: {err}", p) from None
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            raise UsageError('the --map file must map names to names: {"name in A": "name in B"}', p)
        return data
    mapping: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        parts = stripped.split()
        if len(parts) != 2:
            raise UsageError(f"line {number} of the --map file should be 'NAME_IN_A NAME_IN_B', found {stripped!r}", p)
        mapping[parts[0]] = parts[1]
    return mapping


def strip_wrappers(name: str) -> str:
    """The name without leading wrapper prefixes (``module._orig_mod.fc.weight`` -> ``fc.weight``)."""
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix) and len(name) > len(prefix):
                name = name[len(prefix) :]
                changed = True
    return name


def match_names(
    a_names: Sequence[str],
    b_names: Sequence[str],
    renames: Sequence[RenameRule] = (),
    mapping: Mapping[str, str] | None = None,
) -> Matching:
    """Pair the names of A with those of B; see the module docstring for the order of the steps."""
    pairs: dict[str, Pair] = {}
    taken_b: set[str] = set()
    a_set, b_set = set(a_names), set(b_names)
    for a, b in (mapping or {}).items():
        if a not in a_set:
            raise UsageError(f"--map names {a!r}, which is not a tensor of the first checkpoint")
        if b not in b_set:
            raise UsageError(f"--map names {b!r}, which is not a tensor of the second checkpoint")
        if b in taken_b:
            raise UsageError(f"--map pairs {b!r} with two tensors of the first checkpoint")
        pairs[a] = Pair(a, b, "map")
        taken_b.add(b)

    def by_key(how: str, key: Callable[[str], str]) -> None:
        rest_a = [n for n in a_names if n not in pairs]
        rest_b = [n for n in b_names if n not in taken_b]
        keys_b = _unique_keys(rest_b, key)
        for k, a in _unique_keys(rest_a, key).items():
            b = keys_b.get(k)
            if b is not None:
                pairs[a] = Pair(a, b, how)
                taken_b.add(b)

    by_key("exact", lambda n: n)
    if renames:
        _check_rename_collisions(a_names, renames, "first")
        _check_rename_collisions(b_names, renames, "second")
        by_key("rename", lambda n: _renamed(n, renames))
    by_key("prefix", lambda n: strip_wrappers(_renamed(n, renames)))
    return Matching(
        pairs=[pairs[n] for n in a_names if n in pairs],
        only_a=[n for n in a_names if n not in pairs],
        only_b=[n for n in b_names if n not in taken_b],
    )


def _renamed(name: str, renames: Iterable[RenameRule]) -> str:
    for rule in renames:
        name = rule.apply(name)
    return name


def _unique_keys(names: Iterable[str], key: Callable[[str], str]) -> dict[str, str]:
    """key -> name, leaving out keys that two names share (they cannot be paired safely)."""
    seen: dict[str, str] = {}
    clashes: set[str] = set()
    for n in names:
        k = key(n)
        if k in seen:
            clashes.add(k)
        seen[k] = n
    return {k: n for k, n in seen.items() if k not in clashes}


def _check_rename_collisions(names: Sequence[str], renames: Sequence[RenameRule], side: str) -> None:
    seen: dict[str, str] = {}
    for n in names:
        new = _renamed(n, renames)
        if new in seen:
            raise UsageError(
                f"--rename gives two tensors of the {side} checkpoint the same name {new!r}: {seen[new]!r} and {n!r}"
            )
        seen[new] = n
