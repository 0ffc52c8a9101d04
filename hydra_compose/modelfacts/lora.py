"""LoRA adapters from their GGUF headers: checked against the base model the way llama.cpp
checks them when it loads (general.type adapter, adapter.type lora, the same architecture,
every lora_a/lora_b pair patching a tensor the base has, with matching shapes), and their bytes
folded into the base model's layers: llama.cpp puts each adapter tensor in the buffer of the
tensor it patches, so the layer's device holds it."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError
from .gguf_facts import ModelFacts, _field, _open

_LAYER = re.compile(r"^blk\.(\d+)\.")
_OUTPUT = {"output.weight", "output.bias"}


@dataclass(frozen=True)
class LoraFacts:
    name: str
    path: Path
    layer_bytes: tuple[int, ...]  # adapter bytes patching each repeating layer
    output_bytes: int
    input_bytes: int  # token_embd's adapter: beside the embeddings in host memory

    @property
    def total_bytes(self) -> int:
        return sum(self.layer_bytes) + self.output_bytes + self.input_bytes


def _bad(path: Path, why: str, fix: str = "point lora: at an adapter made for this model (same architecture and "
                                           "sizes)") -> ModelError:
    return ModelError(f"LoRA {path.name}: {why}", fix)


def read_lora(path: Path, base: ModelFacts) -> LoraFacts:
    reader = _open(path)
    kind = _field(reader, "general.type")
    if kind != "adapter" or _field(reader, "adapter.type") != "lora":
        raise _bad(path, f"is not a LoRA adapter (general.type {kind!r}, adapter.type "
                         f"{_field(reader, 'adapter.type')!r})", "convert it with convert_lora_to_gguf.py")
    arch = _field(reader, "general.architecture")
    if arch != base.arch:
        raise _bad(path, f"is for {arch}, the model {base.name} is {base.arch}")
    alpha = _field(reader, "adapter.lora.alpha")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool):
        raise _bad(path, "has no adapter.lora.alpha", "convert it again with convert_lora_to_gguf.py")
    shapes = {t.name: tuple(int(x) for x in t.shape) for p in base.parts for t in _open(p).tensors}
    pairs: dict[str, dict[str, tuple[tuple[int, ...], int]]] = {}
    for t in reader.tensors:
        name = t.name
        if name.endswith((".lora_a", ".lora_b")):
            pairs.setdefault(name[:-7], {})[name[-1]] = (tuple(int(x) for x in t.shape), int(t.n_bytes))
        elif not name.endswith("_norm.weight"):
            raise _bad(path, f"has a tensor {name[:80]!r} that is neither lora_a nor lora_b")
    if not pairs:
        raise _bad(path, "patches no tensor")
    layers = [0] * base.n_layer
    output = embd = 0
    for target, ab in sorted(pairs.items()):
        if set(ab) != {"a", "b"}:
            raise _bad(path, f"has lora_{next(iter(ab))} for {target[:80]} without its pair")
        if target not in shapes:
            raise _bad(path, f"patches {target[:80]}, which {base.name} does not have")
        (a, a_bytes), (b, b_bytes) = ab["a"], ab["b"]
        ne = shapes[target]
        if len(a) < 2 or len(b) < 2 or len(ne) < 2:
            raise _bad(path, f"{target[:80]}: a one-dimensional pair")
        ok = (ne[0] == b[1] and ne[1] == a[1]) if target == "token_embd.weight" else \
            (ne[0] == a[0] and ne[1] == b[1] and a[1] == b[0])
        if not ok:
            raise _bad(path, f"{target[:80]}: shapes {list(a)} x {list(b)} do not fit the model's {list(ne)}")
        size = a_bytes + b_bytes
        m = _LAYER.match(target)
        if m and int(m[1]) < base.n_layer:
            layers[int(m[1])] += size
        elif target == "token_embd.weight":
            embd += size
        else:
            output += size
    return LoraFacts(path.name, path, tuple(layers), output, embd)


def with_adapters(facts: ModelFacts, adapters: list[LoraFacts]) -> ModelFacts:
    """The model as the planner must see it with these adapters loaded: each layer (and the output
    and input layers) heavier by the adapter tensors that patch it."""
    if not adapters:
        return facts
    extra = [sum(a.layer_bytes[i] for a in adapters) for i in range(facts.n_layer)]
    layers = tuple(dataclasses.replace(layer, weight_bytes=layer.weight_bytes + x)
                   for layer, x in zip(facts.layers, extra))
    return dataclasses.replace(
        facts, layer_bytes=tuple(b + x for b, x in zip(facts.layer_bytes, extra)), layers=layers,
        output_bytes=facts.output_bytes + sum(a.output_bytes for a in adapters),
        input_bytes=facts.input_bytes + sum(a.input_bytes for a in adapters),
        adapter_bytes=sum(a.total_bytes for a in adapters))
