"""The config.json values the layout rules read (expert counts, sizes, the model type)."""

from __future__ import annotations


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
