"""The slots engine's KV cache: one row per running request (see slot_batching.py)."""

from __future__ import annotations

import torch


class SlotKVCache:
    """Per-layer key/value buffers, one row per running request, allocated at the first write.

    Before each forward pass the engine says where the new keys go: `for_prefill` (rows
    start..stop, positions 0..width-1) or `for_decode` (rows 0..B-1, one position each).
    `update` is what the model's attention layers call.
    """

    def __init__(self, rows: int, context_length: int) -> None:
        self.rows = rows
        self.context_length = context_length
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self._start = self._stop = self._kv_len = 0
        self._positions: torch.Tensor | None = None
        self._row_index: torch.Tensor | None = None

    def for_prefill(self, start: int, stop: int, width: int) -> None:
        self._start, self._stop, self._kv_len = start, stop, width
        self._positions = self._row_index = None

    def for_decode(self, positions: torch.Tensor, kv_len: int) -> None:
        self._start, self._stop, self._kv_len = 0, positions.numel(), kv_len
        self._positions = positions
        self._row_index = torch.arange(positions.numel(), device=positions.device)

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        if layer_idx == len(self.keys):
            shape = (self.rows, key.shape[1], self.context_length, key.shape[3])
            self.keys.append(key.new_zeros(shape))
            self.values.append(value.new_zeros(shape))
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        if self._positions is None:
            keys[self._start : self._stop, :, : key.shape[2]] = key
            values[self._start : self._stop, :, : value.shape[2]] = value
        else:
            keys[self._row_index, :, self._positions] = key[:, :, 0]
            values[self._row_index, :, self._positions] = value[:, :, 0]
        window = (slice(self._start, self._stop), slice(None), slice(0, self._kv_len))
        return keys[window], values[window]

    # The buffers are created inside the forward pass, so they are inference tensors: a row
    # moved between steps (an abort) must be written in inference mode too.
    @torch.inference_mode()
    def move_row(self, source: int, target: int, length: int) -> None:
        for keys, values in zip(self.keys, self.values, strict=True):
            keys[target, :, :length] = keys[source, :, :length]
            values[target, :, :length] = values[source, :, :length]
