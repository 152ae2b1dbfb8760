"""The conversions transformers 5 applies while loading, as data: renames and expert fusions
(`Rename`, `Fuse`, `Rules`), the built-in table of the families it converts (transformers 5.24's
`conversion_mapping.py`, used when transformers is not installed), and the dense families it
leaves alone. trainer_names.py applies them (docs/moe.md, "Names").
"""

from __future__ import annotations

from dataclasses import dataclass


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
LEGACY_RENAMES = (  # applied to every model type
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
