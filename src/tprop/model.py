"""RNNLM: embedding → recurrent cell → linear decoder.

The model runs the cell over a time-major ``(T, N)`` batch from given initial states and returns
logits and states. It knows nothing of windows, blocks or duals: truncated BPTT and target
propagation both call it with whatever initial states they hold.

States are passed in one *flat* form, ``(N, D)``, whatever the cell: ``D = layers·d`` for GRU and
tanh-RNN, ``D = 2·layers·d`` for LSTM (``[h; c]``). That flat vector is exactly a free boundary
state z of target propagation, so the methods never need to know the cell.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

_CELLS = {"gru": nn.GRU, "lstm": nn.LSTM, "rnn": nn.RNN}


class RNNLM(nn.Module):
    def __init__(
        self,
        vocab: int,
        hidden: int,
        cell: str = "gru",
        layers: int = 1,
        emb: int = 0,
        init_range: float = 0.1,
    ):
        super().__init__()
        emb = emb or hidden
        self.cell, self.hidden, self.layers = cell, hidden, layers
        self.embedding = nn.Embedding(vocab, emb)
        self.rnn = _CELLS[cell](emb, hidden, num_layers=layers)
        self.decoder = nn.Linear(hidden, vocab)
        # As the paper's code: embedding and decoder U(-r, r), decoder bias 0; the recurrent
        # weights keep PyTorch's default U(-1/sqrt(d), 1/sqrt(d)), which equals cuDNN's.
        nn.init.uniform_(self.embedding.weight, -init_range, init_range)
        nn.init.uniform_(self.decoder.weight, -init_range, init_range)
        nn.init.zeros_(self.decoder.bias)

    @property
    def state_size(self) -> int:
        """D, the width of a flat state."""
        return self.layers * self.hidden * (2 if self.cell == "lstm" else 1)

    def transition_parameters(self) -> list[nn.Parameter]:
        """θ of the transition g (embedding + cell), without the decoder (appendix A.1)."""
        return [*self.embedding.parameters(), *self.rnn.parameters()]

    def readout(self, state: Tensor) -> Tensor:
        """The top layer's h of flat states (..., D) → (..., d): what the decoder reads."""
        lead = state.shape[:-1]
        if self.cell == "lstm":
            return state.reshape(*lead, 2, self.layers, self.hidden)[..., 0, -1, :]
        return state.reshape(*lead, self.layers, self.hidden)[..., -1, :]

    def decode_state(self, state: Tensor) -> Tensor:
        """Logits of flat states (..., D) → (..., V), as if each were the last computed state."""
        return self.decoder(self.readout(state))

    def zero_state(self, n: int) -> Tensor:
        w = self.decoder.weight
        return torch.zeros(n, self.state_size, dtype=w.dtype, device=w.device)

    def _unflatten(self, state: Tensor):
        n = state.shape[0]
        if self.cell == "lstm":
            h, c = state.view(n, 2, self.layers, self.hidden).unbind(1)
            return h.transpose(0, 1).contiguous(), c.transpose(0, 1).contiguous()
        return state.view(n, self.layers, self.hidden).transpose(0, 1).contiguous()

    def _flatten(self, hn) -> Tensor:
        if self.cell == "lstm":
            h, c = hn
            return torch.cat([h.transpose(0, 1).flatten(1), c.transpose(0, 1).flatten(1)], 1)
        return hn.transpose(0, 1).flatten(1)

    def states(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """Run the cell only. x: (T, N) ids; state: (N, D) → outputs (T, N, d), last (N, D)."""
        out, hn = self.rnn(self.embedding(x), self._unflatten(state))
        return out, self._flatten(hn)

    def forward(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """x: (T, N) ids; state: (N, D) → logits (T, N, V), last state (N, D)."""
        out, last = self.states(x, state)
        return self.decoder(out), last
