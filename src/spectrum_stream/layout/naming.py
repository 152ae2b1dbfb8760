"""Module names, module types and the results slug, exactly as the original scanner forms them."""

from __future__ import annotations

import re

_DIGITS = re.compile(r"^\d+$")


def module_name(tensor_name: str) -> str:
    """`model.layers.3.mlp.down_proj.weight` -> `model.layers.3.mlp.down_proj`."""
    return tensor_name.removesuffix(".weight")


def module_type(name: str) -> str:
    """The part after the first all-digit component (`mlp.down_proj`), or the whole name."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if _DIGITS.match(part):
            rest = ".".join(parts[i + 1 :])
            return rest or name
    return name


def slug(model_name: str) -> str:
    """`Qwen/Qwen1.5-110B` -> `Qwen-Qwen1.5-110B`, the file name part axolotl looks for."""
    return model_name.replace("/", "-").replace("_", "-")
