"""Model facts from GGUF headers: shape, exact weight bytes per layer, KV geometry.

Only headers are read (the tensor data is memory-mapped, never touched), so a
30 GB model is described in well under a second.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import gguf
from gguf.constants import GGUFValueType

from . import arch_rules
from ..errors import ModelError

_PART = re.compile(r"^(?P<stem>.+)-(?P<idx>\d{5})-of-(?P<count>\d{5})\.gguf$")
_LAYER = re.compile(r"^blk\.(\d+)\.")
# Non-repeating tensors llama.cpp puts with the output layer (on the last device).
_OUTPUT_TENSORS = {"output.weight", "output.bias", "output_norm.weight", "output_norm.bias", "token_embd_norm.weight"}
_SCALAR = {k: np.dtype(v) for k, v in gguf.GGUFReader.gguf_scalar_to_np.items()}
# What a header may claim before it is refused as corrupt or hostile (real models: a few hundred
# KV pairs, a few thousand tensors, vocabularies under 300k, strings under a few hundred KB).
MAX_KV = 1 << 16
MAX_TENSORS = 1 << 20
MAX_ARRAY = 1 << 22
MAX_STRING = 16 << 20
MAX_DIMS = 4  # GGML_MAX_DIMS


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

    # Every read is checked against the file's end and every count against a bound, so a header
    # that claims more than it holds ends as "corrupt", never as a huge loop or allocation.
    def _get(self, offset, dtype, count=1, override_order=None):  # noqa: ANN001, ANN202 - gguf's signature
        count = int(count)
        if count < 0 or offset + np.dtype(dtype).itemsize * count > len(self.data):
            raise ValueError("the header runs past the end of the file")
        return super()._get(offset, dtype, count, override_order)

    def _get_str(self, offset):  # noqa: ANN001, ANN202
        (slen,) = struct.unpack_from("<Q", self.data, offset) if offset + 8 <= len(self.data) else (MAX_STRING + 1,)
        if slen > MAX_STRING:
            raise ValueError(f"a string of {slen} bytes")
        return super()._get_str(offset)

    def _build_fields(self, offs, count):  # noqa: ANN001, ANN202
        if int(count) > MAX_KV:
            raise ValueError(f"{int(count)} header keys")
        return super()._build_fields(offs, count)

    def _build_tensor_info(self, offs, count):  # noqa: ANN001, ANN202
        if int(count) > MAX_TENSORS:
            raise ValueError(f"{int(count)} tensors")
        return super()._build_tensor_info(offs, count)

    def _get_field_parts(self, orig_offs, raw_type):  # noqa: ANN001, ANN202 - gguf's signature
        if GGUFValueType(raw_type) != GGUFValueType.ARRAY:
            return super()._get_field_parts(orig_offs, raw_type)
        raw_itype = self._get(orig_offs, np.uint32)
        alen = self._get(orig_offs + 4, np.uint64)
        offs = orig_offs + 12
        itype = GGUFValueType(raw_itype[0])
        count = int(alen[0])
        if count > MAX_ARRAY:
            raise ValueError(f"an array of {count} entries")
        if itype in _SCALAR:
            values = self._get(offs, _SCALAR[itype], count)
            return 12 + int(values.nbytes), [raw_itype, alen, values], [2], [GGUFValueType.ARRAY, itype]
        if itype == GGUFValueType.STRING:
            buf, end = self.data, len(self.data)
            for _ in range(count):
                if offs + 8 > end:
                    raise ValueError("the header runs past the end of the file")
                (slen,) = struct.unpack_from("<Q", buf, offs)
                if slen > MAX_STRING:
                    raise ValueError(f"a string of {slen} bytes")
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
            if len(dims) > MAX_DIMS:
                raise ValueError(f"a tensor of {len(dims)} dimensions")
            block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(raw_dtype[0])]
            elements = 1
            for n in dims:  # Python ints: numpy's product of uint64 would wrap around silently
                elements *= int(n)
            end = max(end, start_offs + int(offset[0]) + elements * size // block)
        if end > len(self.data):
            raise TruncatedError(len(self.data), end)
        super()._build_tensors(start_offs, fields)


class TruncatedError(Exception):
    def __init__(self, have: int, need: int) -> None:
        super().__init__(f"{have} of {need} bytes")
        self.have, self.need = have, need


@dataclass(frozen=True)
class LayerFacts:
    """One repeating block: what it weighs and what state it keeps per token or sequence."""

    weight_bytes: int
    expert_bytes: int  # the routed experts (*_exps tensors): what `-ot ...=CPU` moves to host RAM
    kind: str  # "full" | "swa" (window-sized KV) | "recurrent" (fixed state) | "hybrid" (both) | "none"
    n_head: int
    k_elems: int  # K cache elements per token (n_embd_k_gqa); MLA: latent + rope
    v_elems: int  # V cache elements per token; 0 for MLA, whose V is a view of K
    n_ff: int  # dense FFN width (0 for MoE layers)

    @property
    def has_kv(self) -> bool:
        return self.kind in ("full", "swa", "hybrid") and self.k_elems > 0

    @property
    def has_state(self) -> bool:
        return self.kind in ("recurrent", "hybrid")


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
    sliding_window: int  # n_swa when some layer is SWA, else 0
    layer_bytes: tuple[int, ...]  # exact weight bytes of each repeating layer
    output_bytes: int  # output layer: output norm + output matrix (token_embd again when tied)
    input_bytes: int  # token embeddings, kept in the master's host memory
    tied_output: bool
    layers: tuple[LayerFacts, ...] = ()
    n_ff_exp: int = 0  # width of one routed expert
    state_elems: int = 0  # recurrent state (f32) per sequence of a recurrent layer: conv + ssm/wkv
    mla: bool = False
    ssm_in_width: int = 0  # mamba-style layers: output width of ssm_in (sizes their compute temporaries)
    mtp_bytes: int = 0  # the multi-token-prediction heads (nextn layers): loaded only for --spec-type draft-mtp
    vocab_model: str = ""  # tokenizer.ggml.model: a draft model must share the target's tokenizer
    bos_id: int | None = None
    eos_id: int | None = None
    adapter_bytes: int = 0  # LoRA adapters folded into the layers above (modelfacts.lora)

    def __post_init__(self) -> None:
        if not self.layers:  # facts built by hand (tests): a dense full-attention model
            object.__setattr__(self, "layers", tuple(
                LayerFacts(b, 0, "full", self.n_head, h * self.head_dim_k, h * self.head_dim_v, self.n_ff)
                for b, h in zip(self.layer_bytes, self.n_head_kv)))

    @property
    def v_elems_max(self) -> int:
        return max((layer.v_elems for layer in self.layers), default=0)

    @property
    def expert_bytes(self) -> int:
        return self.experts_in(tuple(range(self.n_layer)))

    def experts_in(self, layers: tuple[int, ...]) -> int:
        """Bytes of the routed experts of these layers."""
        return sum(self.layers[il].expert_bytes for il in layers)

    def kinds(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for layer in self.layers:
            out[layer.kind] = out.get(layer.kind, 0) + 1
        return out

    def to_json(self) -> dict:
        return {
            "name": self.name, "file": str(self.path), "parts": len(self.parts), "arch": self.arch,
            "title": self.title, "file_bytes": self.file_bytes, "n_params": self.n_params, "quant": self.quant,
            "n_layer": self.n_layer, "n_ctx_train": self.n_ctx_train, "n_embd": self.n_embd,
            "n_head": self.n_head, "n_head_kv": sorted(set(self.n_head_kv)), "head_dim_k": self.head_dim_k,
            "head_dim_v": self.head_dim_v, "n_ff": self.n_ff, "n_vocab": self.n_vocab,
            "n_expert": self.n_expert, "n_expert_used": self.n_expert_used, "n_ff_exp": self.n_ff_exp,
            "expert_bytes": self.expert_bytes, "sliding_window": self.sliding_window, "mla": self.mla,
            "layer_kinds": self.kinds(), "tied_output": self.tied_output,
        }


def cache_type_bytes(cache_type: str) -> float:
    """Bytes per element of a KV cache type (ggml block size / type size)."""
    qtype = gguf.GGMLQuantizationType[cache_type.upper()]
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return size / block


def part_paths(path: Path, root: Path | None = None) -> tuple[Path, ...]:
    """All files of a split model given any of them (or the single file): all present, distinct
    files, and (root given) inside root after following links — models/ is what the master mounts."""
    m = _PART.match(path.name)
    count = int(m["count"]) if m else 1
    if m and not 1 <= count <= 1024:
        raise ModelError(f"{path.name}: a split model of {count} parts", "rename the file: it is not a split GGUF")
    parts = tuple(path.with_name(f"{m['stem']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)) \
        if m else (path,)
    missing = [p.name for p in parts if not p.exists()]
    if missing:
        raise ModelError(f"{path.name}: part {missing[0]} of the split model is missing",
                         f"put all {count} parts into {path.parent}")
    try:
        resolved = [p.resolve(strict=True) for p in parts]
    except (OSError, RuntimeError):  # a symlink loop
        raise ModelError(f"{path.name}: a part is a link that leads nowhere (a loop?)", "replace the links with the files") from None
    if len(set(resolved)) != len(resolved):
        raise ModelError(f"{path.name}: two parts of the split model are the same file (links)",
                         "put the real parts into models/")
    if root is not None:
        outside = [p.name for p, r in zip(parts, resolved) if root.resolve() not in r.parents]
        if outside:
            raise ModelError(f"{outside[0]} is a link to a file outside {root}",
                             "copy or hard-link the file into models/ (the master mounts only models/)")
    return parts


def _check_parts(parts: tuple[Path, ...], readers: list[HeaderReader], arch: str) -> None:
    """Parts that belong together: the same architecture, and split.no/split.count as their names say."""
    if len(parts) == 1:
        return
    for i, (p, r) in enumerate(zip(parts, readers)):
        count, no = _field(r, "split.count"), _field(r, "split.no")
        part_arch = _field(r, "general.architecture") if i == 0 else None
        if count != len(parts) or no != i or (part_arch is not None and part_arch != arch):
            raise ModelError(f"{p.name} is not part {i + 1} of {len(parts)} of the same model "
                             f"(its header says part {no if isinstance(no, int) else '?'} of "
                             f"{count if isinstance(count, int) else '?'})",
                             "download the parts again, all from the same release")


def _open(path: Path) -> HeaderReader:
    try:
        if not path.exists():
            raise FileNotFoundError
        if not path.is_file():  # a FIFO or device would hang the reader, a directory fail it
            raise ModelError(f"{path.name} is not a regular file", "put the GGUF file itself into models/")
        reader = HeaderReader(path)
    except TruncatedError as exc:
        raise ModelError(f"{path.name} is truncated ({exc.have} of {exc.need} bytes)",
                         "the download did not finish: fetch the file again") from None
    except FileNotFoundError:
        raise ModelError(f"model file {path} not found", f"put the GGUF into {path.parent}/") from None
    except (ValueError, IndexError, KeyError, OverflowError, struct.error, TypeError, MemoryError) as exc:
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
        return [v.item() if hasattr(v, "item") else v for v in field.contents()]
    value = field.contents()
    return value.item() if hasattr(value, "item") else value


# Plausible ranges of the header values the planner multiplies: anything outside is a
# corrupt or hostile file, refused with one line instead of a MemoryError later.
# llama.cpp's own limits where it has them (LLAMA_MAX_LAYERS 512, LLAMA_MAX_EXPERTS 1024).
_LIMITS = {"block_count": (1, 512), "embedding_length": (1, 1 << 20), "attention.head_count": (0, 4096),
           "attention.head_count_kv": (0, 4096), "attention.key_length": (1, 1 << 16),
           "attention.value_length": (1, 1 << 16), "feed_forward_length": (0, 1 << 22),
           "context_length": (1, 1 << 26), "expert_count": (0, 1024), "expert_used_count": (0, 1024),
           "expert_feed_forward_length": (0, 1 << 22), "attention.sliding_window": (0, 1 << 26),
           "nextn_predict_layers": (0, 64), "attention.key_length_mla": (1, 1 << 16)}


class _Header:
    """Typed access to `{arch}.*` keys: ints in range, per-layer arrays of the right length."""

    def __init__(self, reader: HeaderReader, arch: str, name: str) -> None:
        self.reader, self.arch, self.name = reader, arch, name

    def raw(self, key: str, default: object = None) -> object:
        return _field(self.reader, f"{self.arch}.{key}", default)

    def _bad(self, key: str, why: str) -> ModelError:
        return ModelError(f"{self.name}: {self.arch}.{key} {why}", "the file is corrupt or not a model: convert it again")

    def _check(self, key: str, v: object) -> int:
        lo, hi = _LIMITS.get(key, (0, 1 << 30))
        if isinstance(v, bool) or not isinstance(v, int):
            raise self._bad(key, f"is {type(v).__name__}, not a whole number")
        if not lo <= v <= hi:
            raise self._bad(key, f"is {v}, outside {lo}..{hi}")
        return v

    def checked(self, key: str, default: object = None) -> object:
        """raw(), with every whole number (alone or in an array) range-checked: what arch rules read."""
        v = self.raw(key, default)
        if isinstance(v, int) and not isinstance(v, bool):
            return self._check(key, v)
        if isinstance(v, list):
            for x in v:
                if isinstance(x, int) and not isinstance(x, bool):
                    self._check(key, x)
        return v

    def int(self, key: str, default: int | None = None) -> int:
        v = self.raw(key, default)
        if v is None:
            raise self._bad(key, "is missing")
        return self._check(key, v)

    def per_layer(self, key: str, n_layer: int, default: int) -> tuple[int, ...]:
        v = self.raw(key, default)
        if isinstance(v, list):
            if len(v) < n_layer:
                raise self._bad(key, f"has {len(v)} entries for {n_layer} layers")
            return tuple(self._check(key, x) for x in v[:n_layer])
        return (self._check(key, v),) * n_layer


def read_model(path: Path, first: HeaderReader | None = None, root: Path | None = None) -> ModelFacts:
    """Facts of the model at path (any part of a split model); first: its already opened header;
    root: the models/ folder every part must be in."""
    parts = part_paths(path, root)
    readers = [first if first is not None and i == 0 else _open(p) for i, p in enumerate(parts)]
    head = readers[0]
    arch = _field(head, "general.architecture")
    if not isinstance(arch, str) or not arch:
        raise ModelError(f"{path.name} has no general.architecture", "this is not a model GGUF (LoRA or mmproj?)")
    _check_parts(parts, readers, arch)
    if arch == "clip":
        raise ModelError(f"{path.name} is a vision projector (mmproj), not a model",
                         "name it under the model's mmproj: key in cluster.yaml")
    h = _Header(head, arch, path.name)
    n_layer = h.int("block_count") - h.int("nextn_predict_layers", 0)  # MTP heads are not loaded
    if n_layer < 1:
        raise h._bad("block_count", "leaves no layers besides the MTP heads")
    n_embd = h.int("embedding_length")
    heads = h.per_layer("attention.head_count", n_layer, 0)
    n_head = max(heads)
    n_head_kv = h.per_layer("attention.head_count_kv", n_layer, n_head)
    n_ffs = h.per_layer("feed_forward_length", n_layer, 0)
    head_dim_k = h.int("attention.key_length", n_embd // n_head if n_head else 1)
    head_dim_v = h.int("attention.value_length", n_embd // n_head if n_head else 1)
    head_dim_k_swa = h.int("attention.key_length_swa", head_dim_k)
    head_dim_v_swa = h.int("attention.value_length_swa", head_dim_v)
    mla = h.raw("attention.key_length_mla") is not None and h.raw("attention.value_length_mla") is not None
    n_expert, n_expert_used = h.int("expert_count", 0), h.int("expert_used_count", 0)
    if n_expert_used > n_expert:
        raise h._bad("expert_used_count", f"is {n_expert_used}, more than the {n_expert} experts")
    if n_expert and not n_expert_used:
        raise h._bad("expert_used_count", f"is 0 for {n_expert} experts (llama.cpp refuses it)")
    n_ff_exp = h.int("expert_feed_forward_length", 0)
    kinds = arch_rules.layer_kinds(arch, n_layer, n_head_kv, n_ffs, h.checked)
    conv, ssm = arch_rules.state_elems(arch, n_embd, h.checked)
    if any(kinds.recurrent) and not 0 < conv + ssm <= 1 << 30:
        raise ModelError(f"{path.name}: recurrent state of {conv + ssm} elements per layer",
                         "the file is corrupt: convert it again")

    layer_bytes = [0] * n_layer
    expert_bytes = [0] * n_layer
    tensors = {}
    n_params = 0
    ssm_in_width = 0
    mtp_bytes = 0
    for reader in readers:
        for t in reader.tensors:
            n_params += int(t.n_elements)
            tensors[t.name] = int(t.n_bytes)
            if t.name.endswith(".ssm_in.weight") and len(t.shape) > 1:
                ssm_in_width = max(ssm_in_width, int(t.shape[1]))
            m = _LAYER.match(t.name)
            if m and int(m[1]) >= n_layer:
                mtp_bytes += int(t.n_bytes)
            elif m:
                layer_bytes[int(m[1])] += int(t.n_bytes)
                if "_exps." in t.name:
                    expert_bytes[int(m[1])] += int(t.n_bytes)
    if "token_embd.weight" not in tensors:
        raise ModelError(f"{path.name} has no token_embd.weight", "this GGUF is not a complete model")
    tied = "output.weight" not in tensors
    output = sum(b for n, b in tensors.items() if n in _OUTPUT_TENSORS)
    output += tensors["token_embd.weight"] if tied else 0

    layers = []
    for il in range(n_layer):
        swa = kinds.swa[il]
        d_k, d_v = (head_dim_k_swa, head_dim_v_swa) if swa else (head_dim_k, head_dim_v)
        kind = ("hybrid" if kinds.recurrent[il] and kinds.attention[il] else "recurrent" if kinds.recurrent[il]
                else ("swa" if swa else "full") if kinds.attention[il] else "none")
        k_elems = n_head_kv[il] * d_k if kinds.attention[il] else 0
        v_elems = 0 if mla or not kinds.attention[il] else n_head_kv[il] * d_v
        layers.append(LayerFacts(layer_bytes[il], expert_bytes[il], kind, heads[il], k_elems, v_elems,
                                 0 if expert_bytes[il] else n_ffs[il]))
    vocab = _field(head, f"{arch}.vocab_size") or _field(head, "tokenizer.ggml.tokens", 0)
    file_type = _field(head, "general.file_type")
    try:
        quant = gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_") if file_type is not None else "unknown"
    except (ValueError, TypeError):
        quant = f"type {file_type}"
    return ModelFacts(
        name=path.name, path=path, parts=parts, arch=arch,
        title=str(_field(head, "general.name", path.stem))[:200],
        file_bytes=sum(p.stat().st_size for p in parts), n_params=n_params, quant=quant,
        n_layer=n_layer, n_ctx_train=h.int("context_length", 4096), n_embd=n_embd, n_head=n_head,
        n_head_kv=n_head_kv, head_dim_k=head_dim_k, head_dim_v=head_dim_v, n_ff=max(n_ffs), n_vocab=int(vocab or 0),
        n_expert=n_expert, n_expert_used=n_expert_used, sliding_window=kinds.n_swa if any(kinds.swa) else 0,
        layer_bytes=tuple(layer_bytes), output_bytes=output, input_bytes=tensors["token_embd.weight"], tied_output=tied,
        layers=tuple(layers), n_ff_exp=n_ff_exp or (max(n_ffs) // n_expert_used if n_expert_used else 0),
        state_elems=(conv + ssm) if any(kinds.recurrent) else 0, mla=mla, ssm_in_width=ssm_in_width,
        mtp_bytes=mtp_bytes, vocab_model=str(_field(head, "tokenizer.ggml.model", ""))[:40],
        bos_id=_int_or_none(_field(head, "tokenizer.ggml.bos_token_id")),
        eos_id=_int_or_none(_field(head, "tokenizer.ggml.eos_token_id")),
    )


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def list_models(models_dir: Path) -> list[ModelFacts]:
    """Every model in models_dir; a split model counts once (its first part), projectors are skipped."""
    try:
        if not models_dir.is_dir():
            return []
        names = sorted(models_dir.glob("*.gguf"))
        os.listdir(models_dir)  # glob hides an unreadable folder; listing says so
    except OSError as exc:
        raise ModelError(f"{models_dir} cannot be read: {exc.strerror}", "check the folder's permissions") from None
    out = []
    for p in names:
        m = _PART.match(p.name)
        if m and int(m["idx"]) != 1:
            continue
        if not p.is_file():
            raise ModelError(f"{p} is not a regular file", "remove it from models/ or replace it with the GGUF")
        reader = _open(p)
        if _field(reader, "general.architecture") == "clip":
            continue
        out.append(read_model(p, reader, root=models_dir))
    return out


@dataclass(frozen=True)
class ProjectorFacts:
    """A vision projector (mmproj GGUF, architecture "clip") served with --mmproj."""

    name: str
    path: Path
    weight_bytes: int
    compute_bytes: int  # estimated from the vision tower's shape; only the weights are exact

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.compute_bytes


def read_projector(path: Path) -> ProjectorFacts:
    reader = _open(path)
    if _field(reader, "general.architecture") != "clip":
        raise ModelError(f"{path.name} is not a vision projector (general.architecture is not clip)",
                         "point mmproj: at the mmproj-*.gguf file that belongs to the model")

    def key(name: str) -> int:
        value = _field(reader, f"clip.vision.{name}", 0)
        return value if isinstance(value, int) and 0 <= value < 1 << 20 else 0

    weights = sum(int(t.n_bytes) for t in reader.tensors)
    patches = (key("image_size") // key("patch_size")) ** 2 if key("patch_size") else 0
    # one image through the vision tower: activations and the widest FFN temporary, f32
    compute = patches * (4 * key("embedding_length") + 3 * key("feed_forward_length")) * 4
    return ProjectorFacts(path.name, path, weights, compute)
