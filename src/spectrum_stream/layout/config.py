"""The config.json values the layout rules read (expert counts, sizes, the model type)."""

from __future__ import annotations

import re

from ..errors import SpectrumError
from ..source.quant_formats import FP8_BLOCK


def config_int(config: dict, *path: str) -> int | None:
    """A positive integer from config.json (also looked up under `text_config`), or None."""
    for scope in (config, config.get("text_config")):
        value = scope
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def model_types(config: dict) -> set[str]:
    """`model_type` of the config and of its `text_config` (multimodal wrappers)."""
    text = config.get("text_config")
    found = {config.get("model_type"), text.get("model_type") if isinstance(text, dict) else None}
    return {t for t in found if isinstance(t, str)}


# -- checked before any work ---------------------------------------------------------------------

EXPERT_COUNT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")
_DBRX_EXPERTS = re.compile(r"(^|\.)experts\.mlp\.(w1|v1|w2)$")
_FUSED_EXPERTS = re.compile(r"(^|\.)experts(\.|$)")
_PER_EXPERT = re.compile(r"(^|\.)experts\.(\d+)\.")
_GATE_UP = re.compile(r"gate_up_proj(_blocks|\.weight)?$")


def _occurrences(config: dict, path: tuple[str, ...]):
    """(dotted key, value) for each place the key is set: the top level, then `text_config`."""
    for prefix, scope in (("", config), ("text_config.", config.get("text_config"))):
        value = scope
        for key in path:
            if not isinstance(value, dict) or key not in value:
                break
            value = value[key]
        else:
            yield prefix + ".".join(path), value


def _positive(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_config(config: dict, ckpt, exclude: str | None = None) -> None:
    """Refuse, in one line naming the key, a config.json value a layout rule of this checkpoint
    would use that is not a positive integer agreeing with the tensor shapes (docs/robustness.md).

    Only values this checkpoint's tensors need are looked at (a dense model's stray
    `num_experts: 0` is nobody's business); tensors matching `exclude` are not scanned, so they
    are not checked either.
    """
    where = getattr(ckpt, "config_path", "config.json")

    def fail(key: str, problem: str) -> SpectrumError:
        return SpectrumError(f"{where}: {key} {problem}")

    def positive(*path: str, why: str) -> int | None:
        found = None
        for key, value in _occurrences(config, path):
            if not _positive(value):
                raise fail(key, f"is {value!r}; it must be a positive integer ({why})")
            found = found or value
        return found

    skip = re.compile(exclude) if exclude else None
    shapes = {
        name: (entry.dtype, entry.shape)
        for name, (_, entry) in ckpt.tensors.items()
        if skip is None or not skip.search(name)
    }

    dbrx = {n: s for n, (_, s) in shapes.items() if _DBRX_EXPERTS.search(n) and len(s) == 2}
    if dbrx:
        why = "DBRX's fused expert tensors are split by it"
        experts = positive("ffn_config", "moe_num_experts", why=why)
        ffn = positive("ffn_config", "ffn_hidden_size", why=why)
        for name, (rows, _) in sorted(dbrx.items()):
            if experts is None and ffn is None:
                raise fail(
                    "ffn_config.moe_num_experts",
                    f"is missing (and so is ffn_config.ffn_hidden_size); {why}, e.g. {name!r}",
                )
            if experts and ffn and experts * ffn != rows:
                raise fail(
                    "ffn_config.moe_num_experts",
                    f"({experts}) times "
                    f"ffn_config.ffn_hidden_size ({ffn}) is {experts * ffn} rows, but "
                    f"{name!r} has {rows}",
                )
            if (experts or ffn) and rows % (experts or ffn):
                key = "moe_num_experts" if experts else "ffn_hidden_size"
                raise fail(
                    f"ffn_config.{key}",
                    f"({experts or ffn}) does not divide the {rows} rows of {name!r}",
                )

    fused = {
        n: s
        for n, (dtype, s) in shapes.items()
        if _FUSED_EXPERTS.search(n)
        and not _DBRX_EXPERTS.search(n)
        and (len(s) == 3 or (len(s) == 4 and n.endswith("_blocks") and dtype == "U8"))
    }
    indexed: dict[str, int] = {}
    for n in shapes:
        m = _PER_EXPERT.search(n)
        if m:
            indexed[n] = int(m.group(2))
    if fused or indexed:
        why = "the expert count"
        for key in EXPERT_COUNT_KEYS:
            count = positive(key, why=why)
            if count is None:
                continue
            for name, shape in sorted(fused.items()):
                if shape[0] != count:
                    raise fail(
                        key,
                        f"is {count}, but the fused expert tensor {name!r} holds "
                        f"{shape[0]} experts (shape {list(shape)})",
                    )
            if indexed:
                name, top = max(indexed.items(), key=lambda kv: kv[1])
                if top >= count:
                    raise fail(key, f"is {count}, but tensor {name!r} is expert {top}")
    if any(_GATE_UP.search(n) for n in fused):
        for key in ("hidden_size", "d_model"):
            positive(key, why="it tells how a fused gate_up_proj splits")

    if any(n.endswith("_scale_inv") for n in shapes):
        for key, value in _occurrences(config, ("quantization_config", "weight_block_size")):
            if value != [FP8_BLOCK, FP8_BLOCK]:
                raise fail(
                    key,
                    f"is {value!r}; spectrum-stream reads FP8 block scales of "
                    f"[{FP8_BLOCK}, {FP8_BLOCK}] only (the `_scale_inv` tensors' blocks)",
                )
