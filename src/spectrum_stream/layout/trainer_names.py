"""Result keys as trainers see the model: the parameter names of transformers 5's `from_pretrained`.

transformers 5 converts checkpoints while loading: it renames modules (Mixtral `block_sparse_moe` ->
`mlp`) and stacks per-expert tensors into fused parameters (`experts.N.w1` + `experts.N.w3` ->
rows N of `experts.gate_up_proj` [E, 2I, H], gate first). A checkpoint key then names no
parameter, and a trainer that matches keys against parameter names trains nothing of it.

`TrainerNames.for_config(config)` turns each checkpoint key into the key of the loaded model's
parameter (docs/moe.md, "Names"): a renamed module, or `<fused param>$[e]` /
`<fused param>(?#gate)$[e]` for one expert's rows. The rules come from the installed transformers'
own conversion mapping when it has one, so keys follow that version; without transformers, from
the built-in copy below (what transformers 5.24 does for the families it lists). A conversion that
rows of dim 0 cannot express keeps the checkpoint key, with a warning.

Importing transformers costs seconds, so its mapping is read once per installed version and the
rules of every model type it lists are kept in a small cache file (layout/rules_cache.py). Without
that file, a model of a dense family the mapping does not convert (DENSE_FAMILIES) takes the
legacy renames at once, and transformers is imported only for the others.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from . import rules_cache
from .naming import module_name

log = logging.getLogger(__name__)

_SUFFIX = re.compile(r"(\(\?#\w+\))?\$\[[0-9:]*\]$")


@dataclass(frozen=True)
class Rename:
    """Replace the first match of `source` (a transformers-style pattern) by `target`."""

    source: str
    target: str


@dataclass(frozen=True)
class Fuse:
    """Per-expert tensors stacked into one parameter, or a fused one kept row for row.

    kind: `stack` (experts along dim 0, `sources` concatenated on dim 1 when there are several:
    source i is part `parts[i]` of each row), `rows` (a fused [E, ...] tensor whose dim 0 stays:
    a transpose of the other dims), `opaque` (anything else: no dim-0 rows name the result).
    """

    sources: tuple[str, ...]
    target: str
    kind: str
    parts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rules:
    """The conversion of one model type: renames (all that match, in order), then one Fuse."""

    renames: tuple[Rename, ...] = ()
    fuses: tuple[Fuse, ...] = ()


# ---------------------------------------------------------------------------------------------
# Built-in rules (transformers 5.24's conversion_mapping.py, for the families it converts).


def _stack(gate: str, up: str, down: str, target: str) -> tuple[Fuse, ...]:
    return (
        Fuse((gate, up), f"{target}.gate_up_proj", "stack", ("gate", "up")),
        Fuse((down,), f"{target}.down_proj", "stack"),
    )


_MIXTRAL = Rules(
    (Rename(".block_sparse_moe.", ".mlp."),),
    _stack(".experts.*.w1.weight", ".experts.*.w3.weight", ".experts.*.w2.weight", ".experts"),
)
_QWEN2_MOE = Rules(
    (),
    _stack(
        "mlp.experts.*.gate_proj.weight",
        "mlp.experts.*.up_proj.weight",
        "mlp.experts.*.down_proj.weight",
        "mlp.experts",
    ),
)
_PHIMOE = Rules(_MIXTRAL.renames + (Rename(".gate.weight", ".router.weight"),), _MIXTRAL.fuses)
_QWEN3_VL_MOE = Rules(
    (),
    (
        Fuse(("mlp.experts.gate_up_proj",), "mlp.experts.gate_up_proj", "rows"),
        Fuse(("mlp.experts.down_proj",), "mlp.experts.down_proj", "rows"),
    ),
)
# A results file does not say which family wrote it: `select --fused-experts` names per-expert
# keys by the two per-expert layouts the table converts (Mixtral's w1/w3/w2 under
# block_sparse_moe, and gate/up/down_proj under mlp.experts), without the families' other renames.
PER_EXPERT_LAYOUTS = Rules(_MIXTRAL.renames, _MIXTRAL.fuses + _QWEN2_MOE.fuses)
_LEGACY = (  # applied to every model type
    Rename("LayerNorm.gamma", "LayerNorm.weight"),
    Rename("LayerNorm.beta", "LayerNorm.bias"),
    Rename(".weight_g", ".parametrizations.weight.original0"),
    Rename(".weight_v", ".parametrizations.weight.original1"),
    Rename(r"^model\.language_model\.model", "model.language_model"),
    Rename(r"^language_model\.model\.model", "model.language_model"),
)

BUILTIN: dict[str, Rules] = {
    "mixtral": _MIXTRAL,
    "minimax": _MIXTRAL,
    "minimax_m2": _MIXTRAL,
    "phimoe": _PHIMOE,
    "qwen3_vl_moe": _QWEN3_VL_MOE,
    **{
        t: _QWEN2_MOE
        for t in (
            "qwen2_moe",
            "qwen3_moe",
            "qwen3_next",
            "qwen3_omni_moe",
            "deepseek_v2",
            "deepseek_v3",
            "deepseek_v32",
            "olmoe",
            "flex_olmo",
            "dots1",
            "ernie4_5_moe",
            "glm4_moe",
            "glm4_moe_lite",
            "glm4v_moe",
            "hunyuan_v1_moe",
            "longcat_flash",
            "exaone_moe",
            "afmoe",
            "solar_open",
        )
    },
}


# Dense families whose model type and architectures transformers 5's mapping does not list: their
# rules are the legacy renames alone (tests/test_trainer_names.py checks this against the installed
# transformers). The value is the class-name prefix of their architectures.
DENSE_FAMILIES: dict[str, str] = {
    "llama": "Llama",
    "mistral": "Mistral",
    "qwen2": "Qwen2",
    "qwen3": "Qwen3",
    "gemma": "Gemma",
    "gemma2": "Gemma2",
    "phi": "Phi",
    "phi3": "Phi3",
    "gpt2": "GPT2",
    "olmo": "Olmo",
    "olmo2": "Olmo2",
    "granite": "Granite",
    "starcoder2": "Starcoder2",
    "falcon": "Falcon",
    "cohere": "Cohere",
    "stablelm": "StableLm",
    "smollm3": "SmolLM3",
    "bert": "Bert",
}


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
        return Rules(_LEGACY), {}
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
            return Rules(BUILTIN[t].renames + _LEGACY, BUILTIN[t].fuses)
    return Rules(_LEGACY)


# ---------------------------------------------------------------------------------------------
# Applying them.


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
