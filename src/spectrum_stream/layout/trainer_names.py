"""Result keys as trainers see the model: the parameter names of transformers 5's `from_pretrained`.

transformers 5 converts checkpoints while loading: it renames modules (Mixtral `block_sparse_moe` ->
`mlp`) and stacks per-expert tensors into fused parameters (`experts.N.w1` + `experts.N.w3` ->
rows N of `experts.gate_up_proj` [E, 2I, H], gate first). A checkpoint key then names no
parameter, and a trainer that matches keys against parameter names trains nothing of it.

`TrainerNames.for_config(config)` turns each checkpoint key into the key of the loaded model's
parameter (docs/moe.md, "Names"): a renamed module, or `<fused param>$[e]` /
`<fused param>(?#gate)$[e]` for one expert's rows. The rules come from the installed transformers'
own conversion mapping when it has one, so keys follow that version; without transformers, from
the built-in copy in rename_rules.py (what transformers 5.24 does for the families it lists). A
conversion that rows of dim 0 cannot express keeps the checkpoint key, with a warning.

Importing transformers costs seconds, so its mapping is read once per installed version and the
rules of every model type it lists are kept in a small cache file (layout/rules_cache.py). Without
that file, a model of a dense family the mapping does not convert (DENSE_FAMILIES) takes the
legacy renames at once, and transformers is imported only for the others.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass, field

from . import rules_cache
from .naming import module_name
from .rename_rules import (
    BUILTIN,
    DENSE_FAMILIES,
    LEGACY_RENAMES,
    Fuse,
    Rename,
    Rules,
)

log = logging.getLogger(__name__)

_SUFFIX = re.compile(r"(\(\?#\w+\))?\$\[[0-9:]*\]$")


def _dense_family(config: dict) -> bool:
    """Whether every model type of `config` and every architecture it names is of a dense family
    (e.g. `LlamaForCausalLM`, `LlamaModel`; not `GPTNeoXForCausalLM`, which the mapping lists)."""
    types = _types(config)
    prefixes = [DENSE_FAMILIES.get(t) for t in types]
    if not types or None in prefixes:
        return False
    architectures = config.get("architectures") or []
    if not isinstance(architectures, list):
        return False
    return all(
        isinstance(a, str)
        and any(
            a.startswith(p) and (a[len(p) :].startswith("For") or a[len(p) :] in ("Model",))
            for p in prefixes
            if p
        )
        for a in architectures
    )


# ---------------------------------------------------------------------------------------------
# transformers' own mapping, read into the same Rules.


def _fuse_kind(ops: list) -> tuple[str, bool]:
    """(kind, concatenated) of a WeightConverter's operations."""
    names = [type(op).__name__ for op in ops]
    dims = [getattr(op, "dim", None) for op in ops]
    if names == ["MergeModulelist"] and dims == [0]:
        return "stack", False
    if names == ["MergeModulelist", "Concatenate"] and dims == [0, 1]:
        return "stack", True
    if names and all(n == "Transpose" and 0 not in (op.dim0, op.dim1) for n, op in zip(names, ops)):
        return "rows", False
    return "opaque", False


def rules_from_transformers(mapping) -> Rules:
    """Rules from a list of transformers WeightRenaming / WeightConverter objects."""
    renames, fuses = [], []
    for t in mapping or ():
        sources = list(getattr(t, "_original_source_patterns", None) or t.source_patterns)
        targets = list(getattr(t, "_original_target_patterns", None) or t.target_patterns)
        ops = getattr(t, "operations", None)
        if ops is None and type(t).__name__ == "WeightRenaming":
            renames += [Rename(s, targets[0]) for s in sources]
            continue
        if ops is None:  # another kind of transform: nothing we can follow
            fuses.append(Fuse(tuple(sources), targets[0], "opaque"))
            continue
        kind, concat = _fuse_kind(ops)
        if kind == "stack" and (len(targets) != 1 or (len(sources) > 1) != concat):
            kind = "opaque"
        parts: tuple[str, ...] = ()
        if kind == "stack" and len(sources) > 1:
            parts = (
                ("gate", "up")
                if len(sources) == 2 and targets[0].endswith("gate_up_proj")
                else tuple(f"part{i}" for i in range(len(sources)))
            )
        fuses.append(Fuse(tuple(sources), targets[0], kind, parts))
    return Rules(tuple(renames), tuple(fuses))


def installed_transformers() -> str | None:
    """The installed transformers' version, from its metadata (no import), or None."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("transformers")
    except (PackageNotFoundError, ValueError):
        return None


def _major(version: str) -> int:
    m = re.match(r"\d+", version)
    return int(m.group(0)) if m else 0


def derive_table() -> tuple[Rules, dict[str, Rules]] | None:
    """(legacy rules, {model type or architecture: rules}) read from the installed transformers'
    mapping (an import of seconds), or None when it has no load-time conversion."""
    try:
        from transformers import conversion_mapping
    except Exception:  # not installed, or transformers < 5 (no conversion at load)
        return None
    legacy = rules_from_transformers(
        list(conversion_mapping.get_checkpoint_conversion_mapping("legacy") or [])
    )
    names: set[str] = set()
    try:  # every entry, to cache them all; a private name, so fall back to the known families
        names |= set(conversion_mapping._build_checkpoint_conversion_mapping())
    except Exception:
        names |= set(BUILTIN)
    names.discard("legacy")
    types = {}
    for name in sorted(names):
        found = conversion_mapping.get_checkpoint_conversion_mapping(name)
        if found is not None:
            types[name] = rules_from_transformers(list(found))
    return legacy, types


def _table(version: str, config: dict) -> tuple[Rules, dict[str, Rules]] | None:
    """The rules table of `version`: the cache file's, else derived (and cached) unless the model
    is of a dense family, where the legacy renames are known without transformers."""
    table = rules_cache.load(version)
    if table is not None:
        return table
    if _dense_family(config):
        return Rules(LEGACY_RENAMES), {}
    table = derive_table()
    if table is not None:
        rules_cache.store(version, *table)
    return table


def transformers_rules(config: dict) -> tuple[Rules, str] | None:
    """(rules, where from) following the installed transformers, or None without transformers.

    Matches the first of the config's architectures, then its model types, that the mapping lists
    (as transformers' `from_pretrained` does), plus the legacy renames every model gets."""
    version = installed_transformers()
    if version is None:
        return None
    if _major(version) < 5:
        return Rules(), f"transformers {version} (no load-time conversion)"
    table = _table(version, config)
    if table is None:
        return Rules(), f"transformers {version} (no load-time conversion)"
    legacy, types = table
    found = Rules()
    for name in [*(config.get("architectures") or []), *_types(config)]:
        if isinstance(name, str) and name in types:
            found = types[name]
            break
    return Rules(found.renames + legacy.renames, found.fuses + legacy.fuses), (
        f"transformers {version}"
    )


def _types(config: dict) -> list[str]:
    text = config.get("text_config")
    found = [config.get("model_type"), text.get("model_type") if isinstance(text, dict) else None]
    return [t for t in found if isinstance(t, str)]


def builtin_rules(config: dict) -> Rules:
    for t in _types(config):
        if t in BUILTIN:
            return Rules(BUILTIN[t].renames + LEGACY_RENAMES, BUILTIN[t].fuses)
    return Rules(LEGACY_RENAMES)


# ---------------------------------------------------------------------------------------------
# Applying them.


@functools.lru_cache(maxsize=4096)  # a few rules, applied to every tensor of a header
def _compile(pattern: str, star: str) -> re.Pattern:
    """A transformers source pattern as a regex: `*.` is one path part, the end is a name end."""
    rx = pattern.replace("*.", star + r"\.")
    if re.search(r"[a-zA-Z0-9]$", rx):
        rx += r"(?!\w)"
    return re.compile(rx)


def _rename(name: str, rule: Rename) -> str:
    m = _compile(rule.source, r".*").search(name)
    if m is None:
        return name
    target = rule.target.replace(r"\1", m.group(1) or "") if r"\1" in rule.target else rule.target
    return name.replace(m.group(0), target, 1)


@dataclass
class TrainerNames:
    """Maps checkpoint keys to trainer keys for one model (see the module docstring)."""

    rules: Rules
    origin: str
    _warned: set = field(default_factory=set)

    @classmethod
    def for_config(cls, config: dict, use_transformers: bool = True) -> TrainerNames:
        found = transformers_rules(config) if use_transformers else None
        if found is None:
            return cls(builtin_rules(config), "built-in rules (transformers 5.24)")
        return cls(*found)

    def tensor_name(self, name: str) -> tuple[str, Fuse | None, int | None, int | None]:
        """(renamed tensor name, the Fuse that matched, expert index, source index)."""
        for rule in self.rules.renames:
            name = _rename(name, rule)
        for fuse in self.rules.fuses:
            for i, source in enumerate(fuse.sources):
                m = _compile(source, r"(\d+)" if "*." in source else r".*").search(name)
                if m is None:
                    continue
                expert = int(m.group(1)) if "*." in source and m.groups() else None
                return name.replace(m.group(0), fuse.target, 1), fuse, expert, i
        return name, None, None, None

    def key(self, key: str, tensor: str) -> str:
        """The trainer key of checkpoint `key`, a matrix of checkpoint tensor `tensor`."""
        m = _SUFFIX.search(key)
        base, suffix = (key[: m.start()], m.group(0)) if m else (key, "")
        whole = tensor if module_name(tensor) == base else base  # the name transformers sees
        renamed, fuse, expert, source = self.tensor_name(whole)
        if whole != base:
            renamed = module_name(renamed)
        if fuse is None:
            return renamed + suffix
        if fuse.kind == "rows" and suffix:
            return renamed + suffix
        if fuse.kind == "stack" and not suffix and expert is not None:
            part = f"(?#{fuse.parts[source]})" if fuse.parts and source is not None else ""
            return f"{renamed}{part}$[{expert}]"
        if fuse.target not in self._warned:
            self._warned.add(fuse.target)
            log.warning(
                "%s loads %s by a conversion no row range can express; results keep the "
                "checkpoint keys for it (docs/moe.md, 'Names')",
                self.origin,
                fuse.target,
            )
        return key
