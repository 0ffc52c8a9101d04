"""Speculative decoding as part of the plan. On an RPC cluster the network is paid per target pass,
not per token: verifying K drafted tokens costs one set of round trips, so a pass that yields L
tokens on average (the acceptance length, the target's own token included) divides the network
term by L. The draft model's own time is added K times per pass.

  token time = (target pass with K+1 tokens + K x draft token) / L
  target pass = the one-token time + K x (its compute part x VERIFY_PER_TOKEN)

Modes (llama-server b11434's --spec-type): draft-simple (a small model of the same tokenizer,
`draft:`), draft-mtp (the model's own multi-token-prediction heads), ngram-mod (patterns of the
text so far: no model, but its acceptance depends on the text, so `auto` never picks it).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import PlanError
from ..modelfacts.gguf_facts import ModelFacts

# Mean acceptance lengths when the user gives none: llama.cpp's docs and PRs report 2-3.5 tokens
# per pass for a same-family draft at --spec-draft-n-max 3, ~1.8 for one MTP head (DeepSeek's
# and GLM's 85-90 % second-token acceptance), and ngram gains that depend on repetition.
DEFAULT_ACCEPTANCE = {"draft": 2.5, "mtp": 1.8, "ngram": 1.5}
DEFAULT_DRAFT_MAX = {"draft": 3, "mtp": 1, "ngram": 3}
SPEC_TYPE = {"draft": "draft-simple", "mtp": "draft-mtp", "ngram": "ngram-mod"}
# How much a target pass grows per extra token in the batch, relative to its compute part:
# GPUs are memory-bound at these batch sizes; CPUs do the matmul work per token, and a small batch
# leaves the one-token (GEMV) kernels: measured here, a 4-token pass took 4.6x one token (300 MB
# Q8_0, 2 threads) and 5.5x (bench/speculative.py's target, 1 thread: llama-bench -p 4 vs -n 32).
VERIFY_PER_TOKEN_GPU = 0.05
VERIFY_PER_TOKEN_CPU = 1.5
# llama-server's own work per drafted token besides the draft model's compute: a llama_decode call on
# the draft context and sampling its logits (bench/speculative.py: ~1 ms per drafted token on this
# 2-core VM beyond what llama-bench measures for the draft model alone).
DRAFT_LOOP_S = 1.0e-3
# auto keeps speculation off unless the prediction is this much faster (the model's error margin)
AUTO_MARGIN = 1.05


@dataclass(frozen=True)
class Speculation:
    mode: str  # draft | mtp | ngram
    draft_max: int  # K: tokens drafted per pass
    acceptance: float  # L: tokens per target pass, the target's own included
    where: str  # the draft model's device id, "host" (the master's CPU), or "" (mtp, ngram)
    draft_token_s: float  # one drafted token
    draft_file: str | None = None  # below models/
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"

    def args(self) -> list[str]:
        """llama-server's arguments, but -md (the renderer adds the mounted path)."""
        out = ["--spec-type", SPEC_TYPE[self.mode], "--spec-draft-n-max", str(self.draft_max)]
        if self.mode == "draft":
            out += ["-ctkd", self.cache_type_k, "-ctvd", self.cache_type_v]
            out += ["-ngld", "0"] if self.where == "host" else ["-ngld", "99", "--spec-draft-device", self.where]
        return out

    def token_s(self, target_token_s: float, target_compute_s: float, gpu_share: float) -> float:
        per_token = VERIFY_PER_TOKEN_GPU * gpu_share + VERIFY_PER_TOKEN_CPU * (1 - gpu_share)
        verify = target_token_s + self.draft_max * target_compute_s * per_token
        drafting = self.draft_max * (self.draft_token_s + (DRAFT_LOOP_S if self.mode == "draft" else 0.0))
        return (verify + drafting) / self.acceptance


def check_draft(target: ModelFacts, draft: ModelFacts) -> None:
    """A draft model must speak the target's tokens (llama.cpp refuses, or output is garbage)."""
    problems = []
    if draft.vocab_model != target.vocab_model:
        problems.append(f"tokenizer {draft.vocab_model or '?'} vs {target.vocab_model or '?'}")
    if abs(draft.n_vocab - target.n_vocab) > 128:  # llama.cpp's own tolerance (SPEC_VOCAB_MAX_SIZE_DIFFERENCE)
        problems.append(f"vocabulary {draft.n_vocab} vs {target.n_vocab}")
    if (draft.bos_id, draft.eos_id) != (target.bos_id, target.eos_id):
        problems.append(f"bos/eos {draft.bos_id}/{draft.eos_id} vs {target.bos_id}/{target.eos_id}")
    if problems:
        raise PlanError(f"draft {draft.name} does not share {target.name}'s tokenizer ({'; '.join(problems)})",
                        "use a draft model of the same family (same tokenizer), or remove draft:")


def acceptance_for(mode: str, draft_max: int, given: float | None) -> float:
    """The acceptance length to plan with: the user's, else the default, never above K + 1."""
    value = given if given is not None else DEFAULT_ACCEPTANCE[mode]
    if not 1.0 <= value <= draft_max + 1:
        raise PlanError(f"acceptance {value:g} is outside 1..{draft_max + 1} for {draft_max} drafted tokens",
                        "acceptance is the mean number of tokens per target pass, the target's own included")
    return min(value, draft_max + 1.0)
