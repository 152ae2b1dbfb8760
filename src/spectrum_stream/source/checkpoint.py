"""A local checkpoint: which shards hold which tensors, with every shard header checked.

Accepts a folder with `model.safetensors.index.json`, a folder with one `model.safetensors`, or a
single `.safetensors` file. The shard list comes from the index's weight_map, never from a glob.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CheckpointError, SpectrumError
from .header import ShardHeader, TensorEntry, read_header

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # `org/name` or `name`, never a path
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")  # torch.save / pickle checkpoints


@dataclass
class Checkpoint:
    """Every tensor of a checkpoint, where it lives, and the model's config.json (if any)."""

    name: str
    shards: dict[str, ShardHeader]  # shard file name -> checked header
    tensors: dict[str, tuple[str, TensorEntry]]  # tensor name -> (shard file name, entry)
    config: dict = field(default_factory=dict)

    def fingerprint(self) -> list[dict]:
        """Identifies the bytes scanned: each shard's name, size and header hash."""
        return [
            {"shard": name, "size": h.size, "header_sha256": h.header_sha256}
            for name, h in sorted(self.shards.items())
        ]


def load_index(index_path: Path) -> dict[str, str]:
    """The weight_map of an index file: tensor name -> shard file name."""
    try:
        doc = json.loads(index_path.read_text(encoding="utf-8"))
        weight_map = doc["weight_map"]
        if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
        ):
            raise TypeError
    except OSError as exc:
        raise CheckpointError(f"{index_path}: cannot read ({exc.strerror or exc})") from None
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(
            f"{index_path}: not a safetensors index (needs a 'weight_map' of tensor -> shard file)"
        ) from None
    return weight_map


def assemble(name: str, headers: dict[str, ShardHeader], weight_map: dict[str, str] | None,
             config: dict) -> Checkpoint:
    """Join checked shard headers with the index: every indexed tensor must be where it says."""
    tensors: dict[str, tuple[str, TensorEntry]] = {}
    if weight_map is None:
        for shard, header in headers.items():
            for tname, entry in header.tensors.items():
                tensors[tname] = (shard, entry)
    else:
        for tname, shard in weight_map.items():
            entry = headers[shard].tensors.get(tname)
            if entry is None:
                raise CheckpointError(
                    f"{headers[shard].path}: the index places tensor {tname!r} here but the "
                    "shard does not hold it"
                )
            tensors[tname] = (shard, entry)
    return Checkpoint(name, headers, tensors, config)


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise CheckpointError(f"{path}: not readable JSON") from None
    return doc if isinstance(doc, dict) else {}


def default_name(folder: Path, config: dict) -> str:
    """The model name for the results slug: config.json's `_name_or_path` if set, else the folder."""
    named = config.get("_name_or_path")
    if isinstance(named, str) and _REPO_ID.match(named):
        return named
    return folder.resolve().name


def pickle_refusal(what: Path) -> SpectrumError:
    """Why a pickle checkpoint is not read, and how to turn it into one that is."""
    return SpectrumError(
        f"{what}: a pickle checkpoint (pytorch_model.bin or similar), which spectrum-stream does "
        "not read: unpickling can run any code the file's author put in it, and it cannot be "
        "read one tensor at a time; convert it to safetensors first, e.g. python -c \"from "
        "transformers import AutoModel as M; M.from_pretrained('IN').save_pretrained('OUT')\" "
        "(or the convert space on the Hub)")


def open_local(path: str | Path) -> tuple[Checkpoint, Path]:
    """Open a local checkpoint; returns it with the folder its shard names are relative to."""
    path = Path(path)
    if path.is_file():
        if path.suffix in PICKLE_SUFFIXES or path.name.endswith(".bin.index.json"):
            raise pickle_refusal(path)
        if path.name == INDEX_NAME:
            path = path.parent
        else:
            folder = path.parent
            config = read_config(folder)
            name = default_name(folder, config) if path.name == SINGLE_NAME else path.stem
            return assemble(name, {path.name: read_header(path)}, None, config), folder
    if not path.is_dir():
        raise SpectrumError(f"{path}: no such file or folder")
    config = read_config(path)
    index = path / INDEX_NAME
    if index.is_file():
        weight_map = load_index(index)
        headers = {}
        for shard in sorted(set(weight_map.values())):
            shard_path = path / shard
            if not shard_path.is_file():
                raise CheckpointError(f"{index}: names shard {shard!r}, which is missing")
            headers[shard] = read_header(shard_path)
        return assemble(default_name(path, config), headers, weight_map, config), path
    single = path / SINGLE_NAME
    if single.is_file():
        return assemble(default_name(path, config), {SINGLE_NAME: read_header(single)}, None,
                        config), path
    if any(p.suffix in PICKLE_SUFFIXES for p in path.iterdir() if p.is_file()):
        raise pickle_refusal(path)
    raise SpectrumError(f"{path}: holds neither {INDEX_NAME} nor {SINGLE_NAME}")
