"""GGUF model files (llama.cpp / Ollama format): detection, metadata, validation, and a
cache of the de-quantised weights that the local engines load.

A registry `path:` may name a `.gguf` file (or an Ollama blob: GGUF by its magic bytes,
no suffix) or a folder holding one. Transformers de-quantises a GGUF to float weights on
every load (~20 s for 135M parameters); we do that once and keep the result as an
ordinary Hugging Face folder under `<data_dir>/gguf-cache/` (or CHATBOT_GGUF_CACHE),
keyed by the file's size, mtime and a hash of its content, so later starts load plain
safetensors.

The header is read here directly (a few KiB, no tensor data): listing models and
checking a file for truncation stay fast even for multi-GB files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO

log = logging.getLogger(__name__)

MAGIC = b"GGUF"
CACHE_DIR = "gguf-cache"
_HASH_SPAN = 4 * 2**20  # bytes hashed at each end of the file (see content_key)
# struct formats of GGUF's scalar value types (gguf.GGUFValueType order).
_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9


class GGUFError(ValueError):
    """A file that is not a readable, complete GGUF model."""


@dataclass(frozen=True)
class GGUFInfo:
    path: Path
    version: int
    architecture: str | None
    quantization: str | None  # e.g. "Q4_1" (general.file_type), or the commonest tensor type
    name: str | None
    context_length: int | None
    tensors: int
    expected_bytes: int  # where the last tensor's data ends


def is_gguf(path: Path) -> bool:
    """A file that starts with GGUF's magic bytes (Ollama blobs have no .gguf suffix)."""
    try:
        with path.open("rb") as f:
            return path.is_file() and f.read(4) == MAGIC
    except OSError:
        return False


def find_gguf(path: Path | None) -> Path | None:
    """The GGUF file a registry path means, or None for an ordinary model folder.

    A folder with a config.json is a Hugging Face checkpoint even if it also has a GGUF.
    A folder holding several GGUF files (different quantisations) must name one.
    """
    if path is None:
        return None
    if path.is_file():
        return path if path.suffix == ".gguf" or is_gguf(path) else None
    if not path.is_dir() or (path / "config.json").exists():
        return None
    found = sorted(p for p in path.iterdir() if p.suffix == ".gguf" and p.is_file())
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise GGUFError(f"{path} holds several GGUF files ({names}): name one in 'path'")
    return found[0] if found else None


# --- header ----------------------------------------------------------------------------


def _read(f: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise GGUFError("file ends inside the header (truncated)")
    return struct.unpack(fmt, data)[0]


def _string(f: BinaryIO) -> str:
    length = _read(f, "<Q")
    if length > 2**30:
        raise GGUFError("corrupt header (string length out of range)")
    data = f.read(length)
    if len(data) != length:
        raise GGUFError("file ends inside the header (truncated)")
    return data.decode("utf-8", errors="replace")


def _value(f: BinaryIO, kind: int, keep: bool) -> Any:
    if kind == _STRING and not keep:  # skipped without decoding (vocabularies are big)
        f.seek(_read(f, "<Q"), os.SEEK_CUR)
        return None
    if kind == _STRING:
        return _string(f)
    if kind == _ARRAY:
        item, count = _read(f, "<I"), _read(f, "<Q")
        if item in _SCALARS and not keep:  # e.g. token scores: skip without decoding
            f.seek(struct.calcsize(_SCALARS[item]) * count, os.SEEK_CUR)
            return None
        values = [_value(f, item, keep) for _ in range(count)]
        return values if keep else None
    if kind not in _SCALARS:
        raise GGUFError(f"corrupt header (unknown value type {kind})")
    return _read(f, _SCALARS[kind])


def _quant_name(file_type: int | None, tensor_types: list[int]) -> str | None:
    from gguf import GGMLQuantizationType, LlamaFileType

    if file_type is not None:
        try:
            return LlamaFileType(file_type).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            pass
    if not tensor_types:
        return None
    commonest = max(set(tensor_types), key=tensor_types.count)
    try:
        return GGMLQuantizationType(commonest).name
    except ValueError:
        return None


def read_info(path: Path) -> GGUFInfo:
    """Parse the header and tensor table; raise GGUFError if the file is not complete."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    size = path.stat().st_size
    with path.open("rb") as f:
        if f.read(4) != MAGIC:
            raise GGUFError("not a GGUF file (bad magic bytes)")
        version = _read(f, "<I")
        if version not in (2, 3):
            raise GGUFError(f"unsupported GGUF version {version}")
        n_tensors, n_kv = _read(f, "<Q"), _read(f, "<Q")
        meta: dict[str, Any] = {}
        for _ in range(n_kv):
            key = _string(f)
            kind = _read(f, "<I")
            keep = not key.startswith("tokenizer.")  # vocabularies are big; not needed here
            meta[key] = _value(f, kind, keep)
        end, types = 0, []
        for _ in range(n_tensors):
            _string(f)
            dims = [_read(f, "<Q") for _ in range(_read(f, "<I"))]
            kind, offset = _read(f, "<I"), _read(f, "<Q")
            try:
                block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
            except (ValueError, KeyError):
                raise GGUFError(f"corrupt tensor table (unknown tensor type {kind})") from None
            count = 1
            for d in dims:
                count *= d
            end = max(end, offset + count // block * type_size)
            types.append(kind)
        align = int(meta.get("general.alignment") or 32)
        data_start = -(-f.tell() // align) * align
    arch = meta.get("general.architecture")
    expected = data_start + end
    if size < expected:
        raise GGUFError(f"truncated: tensor data needs {expected} bytes, the file has {size}")
    return GGUFInfo(
        path=path,
        version=version,
        architecture=arch,
        quantization=_quant_name(meta.get("general.file_type"), types),
        name=meta.get("general.name"),
        context_length=meta.get(f"{arch}.context_length") if arch else None,
        tensors=n_tensors,
        expected_bytes=expected,
    )


@lru_cache(maxsize=64)
def _cached_info(path: Path, size: int, mtime_ns: int) -> GGUFInfo:
    return read_info(path)


def info(path: Path) -> GGUFInfo:
    """read_info, remembered while the file is unchanged (for `chatbot models`, /v1/models)."""
    stat = path.stat()
    return _cached_info(path, stat.st_size, stat.st_mtime_ns)


def describe(path: Path | None) -> dict[str, Any]:
    """{"format": ..., "quantization": ...} of a registry path, without loading anything."""
    if path is None:
        return {"format": None, "quantization": None}
    try:
        found = find_gguf(path)
        if found is None:
            return {"format": "hf", "quantization": _hf_quantization(path)}
        return {"format": "gguf", "quantization": info(found).quantization}
    except (GGUFError, OSError) as exc:
        return {"format": "gguf", "quantization": None, "error": str(exc)}


def _hf_quantization(path: Path) -> str | None:
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    quant = config.get("quantization_config") or {}
    return quant.get("quant_method") if isinstance(quant, dict) else None


# --- the de-quantised cache --------------------------------------------------------------


def content_key(path: Path) -> str:
    """Size, mtime and a hash of the content. Only the first and last 4 MiB are hashed:
    hashing a 40 GB file on every start would cost more than it protects (the header and
    the tensor table, both at the start, change with any re-quantisation)."""
    stat = path.stat()
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    with path.open("rb") as f:
        digest.update(f.read(_HASH_SPAN))
        if stat.st_size > 2 * _HASH_SPAN:
            f.seek(-_HASH_SPAN, os.SEEK_END)
            digest.update(f.read(_HASH_SPAN))
    return digest.hexdigest()


def cache_root(settings: Any) -> Path:
    """Where converted GGUF files live: settings.gguf_cache, else data_dir/gguf-cache."""
    root = settings.gguf_cache or Path(settings.data_dir) / CACHE_DIR
    return Path(root).expanduser().absolute()


def cache_folder(path: Path, root: Path) -> Path:
    return Path(root).absolute() / f"{path.stem}-{content_key(path)}"


def converted(path: Path, root: Path, where: str = "") -> Path:
    """A Hugging Face folder (config, safetensors, tokenizer) with the GGUF's weights
    de-quantised: from the cache, or converted now (first start) and cached.

    `where` names the registry entry in errors: a bad file gets one clear GGUFError.
    """
    folder = cache_folder(path, root)
    if (folder / "chatbot-gguf.json").exists():
        log.info("%s: using cached conversion at %s", path.name, folder)
        return folder
    prefix = f"{where}: " if where else ""
    try:
        meta = read_info(path)
    except GGUFError as exc:
        raise GGUFError(f"{prefix}{path}: {exc}") from None
    log.info("converting %s (first start) to %s", path, folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".converting-", dir=folder.parent))
    try:
        _convert(path, tmp)
        (tmp / "chatbot-gguf.json").write_text(
            json.dumps(
                {
                    "source": str(path),
                    "key": content_key(path),
                    "quantization": meta.quantization,
                    "architecture": meta.architecture,
                },
                indent=2,
            )
        )
        try:
            tmp.rename(folder)  # atomic: a reader sees a whole folder or none
        except OSError:  # another process finished first: use its copy
            shutil.rmtree(tmp, ignore_errors=True)
    except GGUFError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise GGUFError(f"{prefix}{path}: cannot convert this GGUF file: {exc}") from exc
    return folder


def _convert(path: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    # save_pretrained refuses a model still marked as GGUF-quantised; it is plain floats now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def vllm_model_args(path: Path, folder: Path) -> dict[str, Any]:
    """AsyncEngineArgs for a GGUF file, given its converted folder.

    vLLM builds that read GGUF get the file and the converted folder as tokenizer (vLLM
    cannot build a fast tokenizer from GGUF metadata itself). Builds without a GGUF
    loader (vLLM 0.32 dropped it) get the de-quantised folder as the model.
    """
    import importlib.util

    if importlib.util.find_spec("vllm.model_executor.layers.quantization.gguf") is not None:
        return {"model": str(path), "tokenizer": str(folder), "quantization": "gguf"}
    log.info("%s: this vLLM build has no GGUF loader: serving the de-quantised weights", path.name)
    return {"model": str(folder)}
