"""`LSTMLMLayer`: one LSTM layer that owns its recurrence (whole sequences through the fused kernel, single tokens
through a one-step cell), the unit the model stacks, accelerate places and offloads, and PEFT adapts.

This file travels as remote code next to `modeling_lstmlm.py`, which imports it relatively: it imports only the
kernels file beside it and torch.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .kernels_lstmlm import PackedKernelModule, lstm_step


class LSTMLMLayer(PackedKernelModule, nn.Module):
    """One LSTM layer that owns its recurrence, for whole sequences and for single tokens.

    Parameters: those of a one-layer `nn.LSTM`, under the same names (`weight_ih_l0` `(4 * hidden, input_size)`,
    `weight_hh_l0` `(4 * hidden, hidden)`, `bias_ih_l0`, `bias_hh_l0` `(4 * hidden,)`, gates in the order input,
    forget, cell, output), so folders saved when the stack was a list of `nn.LSTM`s load unchanged.

    Always *call* the module (`layer(...)`), never read its weights from outside: forward hooks, accelerate's
    device and offload hooks, PEFT adapters (`target_parameters`) and parametrizations act on module calls.

    `layer(x, state=None, mask=None) -> (out, (h, c))`
        `x`: `(batch, seq, input_size)` (or a `PackedSequence`, then `out` is one too). `state`: the `(h, c)` to
        start from, each `(batch, hidden_size)`; zeros when None. `mask`: `(batch, seq)` bool, True at real tokens;
        None means no padding. Returns `out` `(batch, seq, hidden_size)`, zero at padded positions, and the `(h, c)`
        after each row's last real token (a row without one keeps its state). The returned state has the dtype of
        the state passed in; a zero state is float32 under autocast, so a carried state is never rounded to bf16.
        A one-token `x` runs `step` (the decoding step; padding there is a `torch.where`, no host synchronisation).
        Longer inputs run the fused LSTM kernel; with padding, each row's real tokens are packed (the lengths go to
        the host: one synchronisation, only when there is padding).
    `layer.step(x, (h, c)) -> (h, c)`
        One time step, `x` `(batch, input_size)`: in inference on float32 CPU tensors the kernel picked for this
        machine (`decode_kernel`, see `kernels_lstmlm`), elsewhere ATen's one-step cell on the weights as they are.

    Weight dropout (DropConnect on `weight_hh_l0`, a new mask each training call) is applied in `_weights`, inside the
    module, on whatever the weight is then (an adapter's merged view included). `single_step = False` sends one-token
    inputs through the fused kernel too (benchmarks compare the two).

    Example:

    ```python
    >>> layer = LSTMLMLayer(8, 16)
    >>> out, (h, c) = layer(torch.randn(2, 5, 8))
    >>> h2, c2 = layer.step(torch.randn(2, 8), (h, c))
    ```
    """

    single_step: bool = True

    def __init__(self, input_size: int, hidden_size: int, weight_dropout: float = 0.0):
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.weight_dropout = weight_dropout
        self.weight_ih_l0 = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh_l0 = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias_ih_l0 = nn.Parameter(torch.empty(4 * hidden_size))
        self.bias_hh_l0 = nn.Parameter(torch.empty(4 * hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform in `[-1/sqrt(hidden), 1/sqrt(hidden)]`, as `nn.LSTM` does (same draws, same order)."""
        bound = self.hidden_size**-0.5
        for param in self.parameters(recurse=False):
            nn.init.uniform_(param, -bound, bound)

    def _weights(self) -> list[torch.Tensor]:
        """`[w_ih, w_hh, b_ih, b_hh]` as the kernels take them, with DropConnect on `w_hh` in training."""
        w_hh = self.weight_hh_l0
        if self.training and self.weight_dropout > 0:
            w_hh = F.dropout(w_hh, self.weight_dropout, training=True)
        return [self.weight_ih_l0, w_hh, self.bias_ih_l0, self.bias_hh_l0]

    def step(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """One time step: `x` `(batch, input_size)`, `state` `(h, c)` -> the new `(h, c)`, each `(batch, hidden)`.
        A packed kernel only where it is safe (inference, no hooks or parametrizations: `kernels_lstmlm.lstm_step`)."""
        weights = self._weights()
        if not self.training:
            new_state = lstm_step(self, x, state, weights)
            if new_state is not None:
                return new_state
        return torch.lstm_cell(x, state, *weights)

    def forward(self, x, state=None, mask: torch.Tensor | None = None):
        packed = isinstance(x, PackedSequence)
        if state is None:
            batch_size = int(x.batch_sizes[0]) if packed else x.shape[0]
            data = x.data if packed else x
            dtype = torch.float32 if torch.is_autocast_enabled(data.device.type) else data.dtype
            zeros = data.new_zeros(batch_size, self.hidden_size, dtype=dtype)
            state = (zeros, zeros)
        dtype = state[0].dtype
        if not packed and x.shape[1] == 1 and self.single_step:
            h, c = self.step(x.select(1, 0), state)  # (batch, hidden) each
            if mask is not None:  # a padded row keeps its state and outputs zeros
                keep = mask[:, :1]
                out = torch.where(keep, h, 0.0)
                h, c = torch.where(keep, h, state[0]), torch.where(keep, c, state[1])
                return out.unsqueeze(1), (h.to(dtype), c.to(dtype))
            out = h.unsqueeze(1)
            return out, ((h, c) if h.dtype == dtype else (h.to(dtype), c.to(dtype)))
        if packed:
            return self._packed(x, state)
        if torch.is_autocast_enabled(x.device.type):  # the fused kernel takes input and state in the autocast dtype
            kernel_dtype = torch.get_autocast_dtype(x.device.type)
            x, state = x.to(kernel_dtype), (state[0].to(kernel_dtype), state[1].to(kernel_dtype))
        if mask is None:
            hx = (state[0][None].contiguous(), state[1][None].contiguous())  # (1, batch, hidden)
            out, h, c = torch.lstm(x, hx, self._weights(), True, 1, 0.0, self.training, False, True)
            return out, (h[0].to(dtype), c[0].to(dtype))
        # Padding: move each row's real tokens to the front (in order) and run them as a packed sequence.
        seq_len, dim = x.shape[1], x.shape[2]
        lengths = mask.sum(dim=1).cpu()  # pack_padded_sequence takes the lengths on the host (the one sync)
        order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)  # (batch, seq)
        gathered = x.gather(1, order[..., None].expand(-1, -1, dim))
        packed_x = pack_padded_sequence(gathered, lengths.clamp(min=1), batch_first=True, enforce_sorted=False)
        out_packed, (h, c) = self._packed(packed_x, state, dtype)
        out, _ = pad_packed_sequence(out_packed, batch_first=True, total_length=seq_len)  # zeros past each length
        out = out.new_zeros(out.shape).scatter(1, order[..., None].expand(-1, -1, out.shape[-1]), out)
        if bool((lengths == 0).any()):  # rows with no real token keep their state (host tensor: no sync)
            empty = (lengths == 0).to(h.device)[:, None]
            h, c = torch.where(empty, state[0].to(dtype), h), torch.where(empty, state[1].to(dtype), c)
        return out * mask[..., None], (h, c)

    def _packed(self, x: PackedSequence, state, dtype=None) -> tuple[PackedSequence, tuple[torch.Tensor, torch.Tensor]]:
        dtype = dtype or state[0].dtype
        hx = tuple(
            s[None].index_select(1, x.sorted_indices) if x.sorted_indices is not None else s[None] for s in state
        )
        weights = self._weights()
        out, h, c = torch.lstm(x.data, x.batch_sizes, hx, weights, True, 1, 0.0, self.training, False)
        if x.unsorted_indices is not None:
            h, c = h.index_select(1, x.unsorted_indices), c.index_select(1, x.unsorted_indices)
        out = PackedSequence(out, x.batch_sizes, x.sorted_indices, x.unsorted_indices)
        return out, (h[0].to(dtype), c[0].to(dtype))

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, weight_dropout={self.weight_dropout}"


__all__ = ["LSTMLMLayer"]
