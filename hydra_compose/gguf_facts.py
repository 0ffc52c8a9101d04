"""Model facts from GGUF headers: shape, exact weight bytes per layer, KV geometry.

Only headers are read (the tensor data is memory-mapped, never touched), so a
30 GB model is described in well under a second.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import gguf
from gguf.constants import GGUFValueType

from .errors import ModelError

_PART = re.compile(r"^(?P<stem>.+)-(?P<idx>\d{5})-of-(?P<count>\d{5})\.gguf$")
_LAYER = re.compile(r"^blk\.(\d+)\.")
_SCALAR = {k: np.dtype(v) for k, v in gguf.GGUFReader.gguf_scalar_to_np.items()}


class HeaderReader(gguf.GGUFReader):
    """gguf.GGUFReader that reads array fields in one step.

    The stock reader walks arrays element by element, which takes seconds for a
    150k-entry vocabulary. Numeric arrays become one numpy view; string arrays
    (the vocabulary, merges) are skipped and only their length is kept, because
    planning never needs their text.
    """

    def __init__(self, path: Path) -> None:
        self.string_array_lengths: dict[int, int] = {}
        super().__init__(path)

    def _get_field_parts(self, orig_offs, raw_type):  # noqa: ANN001, ANN202 - gguf's signature
        if GGUFValueType(raw_type) != GGUFValueType.ARRAY:
            return super()._get_field_parts(orig_offs, raw_type)
        raw_itype = self._get(orig_offs, np.uint32)
        alen = self._get(orig_offs + 4, np.uint64)
        offs = orig_offs + 12
        itype = GGUFValueType(raw_itype[0])
        count = int(alen[0])
        if itype in _SCALAR:
            values = self._get(offs, _SCALAR[itype], count)
            return 12 + int(values.nbytes), [raw_itype, alen, values], [2], [GGUFValueType.ARRAY, itype]
        if itype == GGUFValueType.STRING:
            buf = self.data
            for _ in range(count):
                (slen,) = struct.unpack_from("<Q", buf, offs)
                offs += 8 + slen
            self.string_array_lengths[orig_offs] = count
            return offs - orig_offs, [raw_itype, alen], [], [GGUFValueType.ARRAY, itype]
        return super()._get_field_parts(orig_offs, raw_type)


    def _build_tensors(self, start_offs, fields):  # noqa: ANN001, ANN202 - gguf's signature
        # Check sizes before gguf reshapes views of the data: a cut-off download
        # must read as "truncated", not as a numpy error.
        end = start_offs
        for field in fields:
            _, _, _, dims, raw_dtype, offset = field.parts
            block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(raw_dtype[0])]
            end = max(end, start_offs + int(offset[0]) + int(np.prod(dims)) * size // block)
        if end > len(self.data):
            raise TruncatedError(len(self.data), end)
        super()._build_tensors(start_offs, fields)


class TruncatedError(Exception):
    def __init__(self, have: int, need: int) -> None:
        super().__init__(f"{have} of {need} bytes")
        self.have, self.need = have, need


@dataclass(frozen=True)
class ModelFacts:
    name: str  # the file name users refer to (first part for split models)
    path: Path
    parts: tuple[Path, ...]
    arch: str
    title: str
    file_bytes: int
    n_params: int
    quant: str
    n_layer: int
    n_ctx_train: int
    n_embd: int
    n_head: int
    n_head_kv: tuple[int, ...]  # per layer
    head_dim_k: int
    head_dim_v: int
    n_ff: int
    n_vocab: int
    n_expert: int
    n_expert_used: int
    sliding_window: int
    layer_bytes: tuple[int, ...]  # exact weight bytes of each repeating layer
    output_bytes: int  # output layer: output norm + output matrix (token_embd again when tied)
    input_bytes: int  # token embeddings, kept in the master's host memory
    tied_output: bool

    def kv_bytes_per_token(self, layer: int, type_k: str, type_v: str) -> float:
        heads = self.n_head_kv[layer]
        return heads * (self.head_dim_k * cache_type_bytes(type_k) + self.head_dim_v * cache_type_bytes(type_v))

    def to_json(self) -> dict:
        return {
            "name": self.name, "file": str(self.path), "parts": len(self.parts), "arch": self.arch,
            "title": self.title, "file_bytes": self.file_bytes, "n_params": self.n_params, "quant": self.quant,
            "n_layer": self.n_layer, "n_ctx_train": self.n_ctx_train, "n_embd": self.n_embd,
            "n_head": self.n_head, "n_head_kv": sorted(set(self.n_head_kv)), "head_dim_k": self.head_dim_k,
            "head_dim_v": self.head_dim_v, "n_ff": self.n_ff, "n_vocab": self.n_vocab,
            "n_expert": self.n_expert, "n_expert_used": self.n_expert_used,
            "sliding_window": self.sliding_window, "tied_output": self.tied_output,
        }


def cache_type_bytes(cache_type: str) -> float:
    """Bytes per element of a KV cache type (ggml block size / type size)."""
    qtype = gguf.GGMLQuantizationType[cache_type.upper()]
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return size / block


def part_paths(path: Path) -> tuple[Path, ...]:
    """All files of a split model given any of them (or the single file)."""
    m = _PART.match(path.name)
    if not m:
        return (path,)
    count = int(m["count"])
    parts = tuple(path.with_name(f"{m['stem']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1))
    missing = [p.name for p in parts if not p.exists()]
    if missing:
        raise ModelError(f"{path.name}: part {missing[0]} of the split model is missing",
                         f"put all {count} parts into {path.parent}")
    return parts


def _open(path: Path) -> HeaderReader:
    try:
        reader = HeaderReader(path)
    except TruncatedError as exc:
        raise ModelError(f"{path.name} is truncated ({exc.have} of {exc.need} bytes)",
                         "the download did not finish: fetch the file again") from None
    except FileNotFoundError:
        raise ModelError(f"model file {path} not found", f"put the GGUF into {path.parent}/") from None
    except (ValueError, IndexError, KeyError, OverflowError, struct.error, TypeError) as exc:
        detail = str(exc).split("\n")[0][:80] or type(exc).__name__
        raise ModelError(f"{path.name} is not a readable GGUF file ({detail})",
                         "re-download it or convert it with llama.cpp's convert_hf_to_gguf.py") from None
    except OSError as exc:
        raise ModelError(f"{path.name} cannot be read: {exc.strerror}", "check the file and its permissions") from None
    return reader


def _field(reader: HeaderReader, key: str, default=None):  # noqa: ANN001, ANN202
    field = reader.get_field(key)
    if field is None:
        return default
    if field.types and field.types[0] == GGUFValueType.ARRAY:
        if field.types[-1] == GGUFValueType.STRING:
            return reader.string_array_lengths.get(field.offset + len(key) + 12, 0)
        return field.contents()
    return field.contents()


def read_model(path: Path) -> ModelFacts:
    parts = part_paths(path)
    readers = [_open(p) for p in parts]
    head = readers[0]
    arch = _field(head, "general.architecture")
    if not isinstance(arch, str):
        raise ModelError(f"{path.name} has no general.architecture", "this is not a model GGUF (LoRA or mmproj?)")

    def key(name: str, default=None):  # noqa: ANN001, ANN202
        return _field(head, f"{arch}.{name}", default)

    n_layer = key("block_count")
    n_embd = key("embedding_length")
    n_head = key("attention.head_count")
    if not n_layer or not n_embd or not n_head:
        raise ModelError(f"{path.name} lacks {arch}.block_count/embedding_length/attention.head_count",
                         "this GGUF is not a transformer model we can plan")
    if isinstance(n_head, list):
        n_head = max(n_head)
    kv = key("attention.head_count_kv", n_head)
    n_head_kv = tuple(kv) if isinstance(kv, list) else (kv,) * n_layer
    if len(n_head_kv) != n_layer:
        raise ModelError(f"{path.name}: head_count_kv has {len(n_head_kv)} entries for {n_layer} layers",
                         "the file is malformed: convert it again")
    head_dim_k = key("attention.key_length", n_embd // n_head)
    head_dim_v = key("attention.value_length", n_embd // n_head)
    n_ff = key("feed_forward_length", 0)
    if isinstance(n_ff, list):
        n_ff = max(n_ff)

    layer_bytes = [0] * n_layer
    tensors = {}
    n_params = 0
    for reader in readers:
        for t in reader.tensors:
            n_params += int(t.n_elements)
            tensors[t.name] = int(t.n_bytes)
            m = _LAYER.match(t.name)
            if m and int(m[1]) < n_layer:
                layer_bytes[int(m[1])] += int(t.n_bytes)
    if "token_embd.weight" not in tensors:
        raise ModelError(f"{path.name} has no token_embd.weight", "this GGUF is not a complete model")
    tied = "output.weight" not in tensors
    output = tensors.get("output_norm.weight", 0) + tensors.get("output_norm.bias", 0)
    output += tensors["token_embd.weight"] if tied else tensors["output.weight"]
    vocab = key("vocab_size") or _field(head, "tokenizer.ggml.tokens", 0)
    file_type = _field(head, "general.file_type")
    try:
        quant = gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_") if file_type is not None else "unknown"
    except ValueError:
        quant = f"type {file_type}"
    return ModelFacts(
        name=path.name, path=path, parts=parts, arch=arch,
        title=str(_field(head, "general.name", path.stem)),
        file_bytes=sum(p.stat().st_size for p in parts), n_params=n_params, quant=quant,
        n_layer=n_layer, n_ctx_train=key("context_length", 4096), n_embd=n_embd, n_head=n_head,
        n_head_kv=n_head_kv, head_dim_k=head_dim_k, head_dim_v=head_dim_v, n_ff=n_ff, n_vocab=vocab,
        n_expert=key("expert_count", 0), n_expert_used=key("expert_used_count", 0),
        sliding_window=key("attention.sliding_window", 0), layer_bytes=tuple(layer_bytes),
        output_bytes=output, input_bytes=tensors["token_embd.weight"], tied_output=tied,
    )


def list_models(models_dir: Path) -> list[ModelFacts]:
    """Every model in models_dir; a split model counts once (its first part)."""
    if not models_dir.is_dir():
        return []
    firsts = []
    for p in sorted(models_dir.glob("*.gguf")):
        m = _PART.match(p.name)
        if m and int(m["idx"]) != 1:
            continue
        firsts.append(p)
    return [read_model(p) for p in firsts]
