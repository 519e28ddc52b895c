"""Fast paths: switches that change how a step runs, not what it computes (issue 10).

- ``--precision bf16``: the model's matmuls run under bfloat16 autocast (the cell and the
  decoder; cross-entropy is taken in float32). θ, its optimiser, the free states Z and U, the
  penalty and every sum stay in the parameter dtype, and validation and test perplexities
  are always scored at full precision, so runs of either precision compare directly.
- ``--compile MODE``: `torch.compile` of the decoder and its cross-entropy, the largest part of
  every step; ``reduce-overhead`` also captures it in CUDA graphs on a GPU. The cell stays the
  library's (cuDNN on a GPU).
- ``--optim-impl``: the θ-optimiser's implementation in torch: ``for-loop``, ``foreach``
  (one kernel per operation over all parameters) or ``fused`` (one kernel per step).
- ``--chunk-tokens 0``: the rows a forward/backward takes at once come from the free memory
  of the GPU (16,384 tokens on a CPU, where larger chunks only add page faults). A call whose
  full logits would not fit (`logits_limit`) decodes a few rows at a time instead, so a
  minibatch of 16,000 streams over a 33k-word vocabulary (Table 4) trains in bounded memory.

Every method computes its NLL through `Forward`, so each switch works for all of them. Each
has a test that it gives the plain path's numbers: exactly for ``--optim-impl`` and the
chunk size, to a stated tolerance for bf16 and compile (tests/test_accel.py).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from tprop.objective import decode_nll, decoder_nll_sum, fused_decode_nll

if TYPE_CHECKING:
    from tprop.config import Config
    from tprop.model import RNNLM

CPU_CHUNK_TOKENS = 16384
"""Tokens per forward chunk on a CPU (``--chunk-tokens 0``)."""

CPU_LOGITS_LIMIT = 1 << 30
"""Bytes of full logits (with their softmax and gradient) above which a CPU step decodes a
few rows at a time (`decoder_nll_sum`); below it the plain path is faster."""


class Forward:
    """The model over a chunk of rows from given start states, and the chunk's summed NLL,
    with the run's precision and compilation."""

    def __init__(
        self,
        model: RNNLM,
        precision: str = "fp32",
        compile_mode: str = "off",
        logits_limit: int | None = None,
        cross_entropy: str = "fused",
    ):
        self.model = model
        self.bf16 = precision == "bf16"
        self.logits_limit = logits_limit or logits_limit_for(model.decoder.weight.device)
        # the fused node is float32/64 eager code: autocast and the compiler get the plain ops
        fused = cross_entropy == "fused" and not self.bf16 and compile_mode == "off"
        self.decode_nll = fused_decode_nll if fused else decode_nll
        if compile_mode != "off":
            mode = None if compile_mode == "default" else compile_mode
            self.decode_nll = torch.compile(decode_nll, mode=mode, dynamic=False)

    @classmethod
    def from_config(cls, model: RNNLM, cfg: Config) -> Forward:
        return cls(model, cfg.precision, cfg.compile, cross_entropy=cfg.cross_entropy)

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.model.decoder.weight.device.type, dtype=torch.bfloat16)

    def states(self, x: Tensor, z0: Tensor) -> tuple[Tensor, Tensor]:
        """The cell alone (`RNNLM.states`) under the same precision as `__call__`, so states
        computed apart from a step round as the step's do; end states in z0's dtype."""
        with self.autocast():
            out, e = self.model.states(x, z0)
        return out, e.to(z0.dtype)

    def __call__(
        self, x: Tensor, z0: Tensor, y: Tensor, *, decoder_grad: bool = True, chunked: bool = False
    ) -> tuple[Tensor, Tensor]:
        """x, y: (T, N) ids; z0: (N, D) → (Σ NLL, end states (N, D)) in z0's dtype.

        ``chunked`` decodes a few rows at a time (`decoder_nll_sum`: batch mode, where the
        logits would be the largest tensors of the run); so does any call whose full logits
        would pass `logits_limit`. ``decoder_grad=False`` detaches the decoder, whose gradient
        an H-step does not need."""
        w, b = self.model.decoder.weight, self.model.decoder.bias
        if not decoder_grad:
            w, b = w.detach(), b.detach()
        chunked = chunked or 3 * y.numel() * w.shape[0] * w.element_size() > self.logits_limit
        with self.autocast():
            out, e = self.model.states(x, z0)
            if chunked:  # its backward recomputes the logits in the parameters' dtype
                nll = decoder_nll_sum(out.to(w.dtype), w, b, y)
            else:
                nll = self.decode_nll(out, w, b, y)
        return nll.to(z0.dtype), e.to(z0.dtype)


def logits_limit_for(device: torch.device) -> int:
    """`CPU_LOGITS_LIMIT` on a CPU; half the free memory of a GPU."""
    if device.type != "cuda":
        return CPU_LOGITS_LIMIT
    return torch.cuda.mem_get_info(device)[0] // 2


def optimizer_kwargs(impl: str, device: torch.device) -> dict[str, bool]:
    """The keyword arguments of a torch optimiser for ``--optim-impl``; ``auto`` is the fused
    kernel where torch has one (CPU, CUDA): 2-4 % of a CPU step (docs/performance.md)."""
    if impl == "auto":
        impl = "fused" if device.type in ("cpu", "cuda") else "torch"
    return {"torch": {}, "for-loop": {"foreach": False}, "foreach": {"foreach": True},
            "fused": {"fused": True}}[impl]  # fmt: skip


def chunk_tokens(cfg: Config, model: RNNLM, device: torch.device) -> int:
    """Tokens per forward chunk: ``--chunk-tokens``, or with 0 a CPU's default or what half
    of a GPU's free memory holds (`tokens_that_fit`)."""
    if cfg.chunk_tokens:
        return cfg.chunk_tokens
    if device.type != "cuda":
        return CPU_CHUNK_TOKENS
    free, _ = torch.cuda.mem_get_info(device)
    return tokens_that_fit(free, token_bytes(model, full_logits=not cfg.full_batch))


def token_bytes(model: RNNLM, full_logits: bool) -> int:
    """A generous estimate of the memory one token of a chunk holds through its backward: the
    embedding, every layer's output and gates and the flat state (the cell's saved
    activations), and with ``full_logits`` the logits, their softmax and their gradient."""
    elt = model.decoder.weight.element_size()
    emb = model.embedding.embedding_dim
    per = 2 * emb + 8 * model.layers * model.hidden + 2 * model.state_size
    if full_logits:
        per += 3 * model.decoder.out_features
    return per * elt


def tokens_that_fit(free_bytes: int, per_token: int, share: float = 0.5) -> int:
    """The chunk (in tokens) that fills ``share`` of ``free_bytes``; at least one block row is
    always taken by the caller, so this may be small."""
    return max(1, int(free_bytes * share) // max(1, per_token))
