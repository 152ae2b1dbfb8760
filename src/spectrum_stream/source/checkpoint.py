"""A local checkpoint: which shards hold which tensors, with every shard header checked.

Accepts a folder with `model.safetensors.index.json`, a folder with one `model.safetensors`, or a
single `.safetensors` file. The shard list comes from the index's weight_map, never from a glob.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CheckpointError, SpectrumError
from .header import ShardHeader, TensorEntry, read_header
from .jsonfile import anything, mapping, obj, read_json, string
from .safe_files import check_name, exists, in_hf_snapshot

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
    config_path: str = "config.json"  # where `config` came from, for messages

    def fingerprint(self) -> list[dict]:
        """Identifies the bytes scanned: each shard's name, size and header hash."""
        return [
            {"shard": name, "size": h.size, "header_sha256": h.header_sha256}
            for name, h in sorted(self.shards.items())
        ]


INDEX_SCHEMA = obj({"weight_map": mapping(string)}, {"metadata": anything})
CONFIG_SCHEMA = obj()  # an object; the values the layout rules use are checked by layout/config.py
_DRIVE = re.compile(r"^[A-Za-z]:")


def check_shard_name(shard: str, where: str | Path) -> None:
    """An index may name only plain relative files inside the checkpoint folder.

    No absolute path, no `..` (or `.`, or empty) part, no backslash (a Windows separator), no NUL
    or other control character: a downloaded index must not make the scan read, or the Hub client
    fetch, anything but the checkpoint's own files (docs/robustness.md).
    """
    why = None
    if shard == "":
        why = "an empty file name"
    elif any(ord(c) < 32 or c == "\x7f" for c in shard):
        why = "a control character (NUL, newline ...) in the file name"
    elif "\\" in shard:
        why = "a backslash in the file name"
    elif shard.startswith("/") or _DRIVE.match(shard):
        why = "an absolute path"
    elif any(part in ("", ".", "..") for part in shard.split("/")):
        why = "a path that is not a plain relative file (an empty, '.' or '..' part)"
    if why is not None:
        raise CheckpointError(
            f"{where}: names shard {shard!r}: {why}; an index may only name "
            "files inside the checkpoint folder"
        )


def shard_path(folder: Path, shard: str, where: str | Path) -> Path:
    """`folder / shard`, refused when a symlink takes it outside the folder.

    The one exception is a Hugging Face cache snapshot, whose files are symlinks to the repo's
    own `blobs/` folder next to `snapshots/`.
    """
    check_shard_name(shard, where)
    path = folder / shard
    try:
        real, inside = path.resolve(), folder.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise CheckpointError(f"{path}: cannot resolve ({exc})") from None
    if real.is_relative_to(inside):
        return path
    if in_hf_snapshot(inside, real):
        return path
    raise CheckpointError(
        f"{where}: shard {shard!r} is a symlink to {real}, outside the "
        "checkpoint folder; refused (copy the file into the folder, or scan "
        "the folder it is in)"
    )


def load_index(index_path: Path) -> dict[str, str]:
    """The weight_map of an index file: tensor name -> shard file name (each name checked)."""
    doc = read_json(index_path, "a safetensors index", INDEX_SCHEMA, folder=index_path.parent)
    weight_map = doc["weight_map"]
    for shard in sorted(set(weight_map.values())):
        check_shard_name(shard, index_path)
    return weight_map


def assemble(
    name: str, headers: dict[str, ShardHeader], weight_map: dict[str, str] | None, config: dict
) -> Checkpoint:
    """Join checked shard headers with the index: every indexed tensor must be where it says."""
    tensors: dict[str, tuple[str, TensorEntry]] = {}
    if weight_map is None:
        for shard, header in headers.items():
            for tname, entry in header.tensors.items():
                tensors[tname] = (shard, entry)
    else:
        for tname, shard in weight_map.items():
            found = headers[shard].tensors.get(tname)
            if found is None:
                raise CheckpointError(
                    f"{headers[shard].path}: the index places tensor {tname!r} here but the "
                    "shard does not hold it"
                )
            tensors[tname] = (shard, found)
    return Checkpoint(name, headers, tensors, config)


def read_config(folder: Path) -> dict:
    """config.json of a checkpoint folder (an object), or {} when there is none."""
    path = folder / "config.json"
    if not exists(path):
        return {}
    return read_json(path, "a model config", CONFIG_SCHEMA, folder=folder)


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
        'read one tensor at a time; convert it to safetensors first, e.g. python -c "from '
        "transformers import AutoModel as M; M.from_pretrained('IN').save_pretrained('OUT')\" "
        "(or the convert space on the Hub)"
    )


def open_local(path: str | Path) -> tuple[Checkpoint, Path]:
    """Open a local checkpoint; returns it with the folder its shard names are relative to."""
    path = check_name(path)
    if path.is_file():
        if path.suffix in PICKLE_SUFFIXES or path.name.endswith(".bin.index.json"):
            raise pickle_refusal(path)
        if path.name == INDEX_NAME:
            path = path.parent
        else:
            folder = path.parent
            config = read_config(folder)
            name = default_name(folder, config) if path.name == SINGLE_NAME else path.stem
            ckpt = assemble(name, {path.name: read_header(path)}, None, config)
            ckpt.config_path = str(folder / "config.json")
            return ckpt, folder
    if not path.is_dir():
        raise SpectrumError(f"{path}: no such file or folder")
    config = read_config(path)
    index = path / INDEX_NAME
    if exists(index):
        weight_map = load_index(index)
        headers = {}
        for shard in sorted(set(weight_map.values())):
            file = shard_path(path, shard, index)
            if not file.is_file():
                raise CheckpointError(f"{index}: names shard {shard!r}, which is missing")
            headers[shard] = read_header(file)
        ckpt = assemble(default_name(path, config), headers, weight_map, config)
    elif (path / SINGLE_NAME).is_file():
        single = shard_path(path, SINGLE_NAME, path)
        ckpt = assemble(
            default_name(path, config), {SINGLE_NAME: read_header(single)}, None, config
        )
    else:
        if any(p.suffix in PICKLE_SUFFIXES for p in path.iterdir() if p.is_file()):
            raise pickle_refusal(path)
        raise SpectrumError(f"{path}: holds neither {INDEX_NAME} nor {SINGLE_NAME}")
    ckpt.config_path = str(path / "config.json")
    return ckpt, path
