"""A static KV cache whose rows hold independent requests: per-row prefill, shared decode steps.

Axes: R cache rows (the server's `--max-batch`), L slots per row, T prompt tokens, K kv heads,
hd head dim, V vocabulary.

What continuous batching needs beyond `decode.py`: a request joins a batch that is already
decoding, so its prompt is prefilled alone into its own row while the other rows keep their
state, and all rows then decode together. The decoder's contract (`CachedDecoder`) writes one
token per row at the *same* slot, and positions are an input. So each row is laid out as a
contiguous run of slots that *ends* at the shared write slot `s`:

    slot:   0 1 2 3 4 5 6 7 8 9          s = 8 (next write)
    row 0:  . . a a a a a a a a          admitted first
    row 1:  . . . . b b b b             admitted at s = 8 with a 4-token prompt
    row 2:  (free)

A row admitted at write slot `s` with a T-token prompt takes slots [s - T, s). Attention sees only
a row's own valid slots (`key_valid`), RoPE positions are per row, and a row's slots are as
contiguous as they would be alone (which is what keeps sliding windows right), so each row
produces what it would produce alone. When a new prompt does not fit before `s`, or the rows
would run past L, every row is shifted along the slot axis first (`_shift`).

The prefill of one row and every decode step run on *views* of the preallocated buffers:
the decoder's caches are `KVCache` modules whose `update` writes into `k` / `v` in place, so
pointing those buffers at views of one [R, K, L, hd] buffer makes the unchanged decoder read and
write exactly the rows and slot span asked for. Prefill sees a [1, K, need, hd] cache with the
prompt at its start, exactly the cache a lone `generate` allocates; a decode step sees the occupied
rows and the slots from the earliest row start to the latest row end. Keeping the key layout of a
lone run (rather than only the written slots) is what makes bf16 answers equal too: with only the
written slots in view, a bf16 row once took another token at a near-tie after 27 steps
(tests/unit/test_scheduler.py runs both dtypes).
"""

from dataclasses import dataclass

import torch

from vlmkit.errors import ConfigError
from vlmkit.generation.decode import decode_one_token
from vlmkit.models.common.contracts import CachedDecoder, DecoderInputs
from vlmkit.models.common.kv_cache import KVCache


@dataclass
class _RowState:
    start: int  # first slot of the row's run
    end: int  # slot after the last one it may ever use (prompt + max new tokens)


class BatchedCache:
    """R independent rows of L slots over one decoder's static caches.

    Usage: `row = free_row()`, `d = plan(T, need)` (None: wait), `prefill(row, inputs, need, d)`
    -> logits [V]; then `decode({row: token_id})` -> logits [n_rows, V] for the rows asked,
    once per step; `free(row)` when a request ends. Not thread-safe: one owner (the scheduler).
    """

    def __init__(self, lm: CachedDecoder, rows: int, max_len: int, dtype: torch.dtype, device, decode_fn=None):
        lm.setup_caches(rows, max_len, dtype, device)
        modules = dict(lm.named_modules())  # type: ignore[attr-defined]
        # (owner, attribute, cache, k, v): `_bind` re-installs each cache where setup_caches put it,
        # so a plain `generate` on the same model in between (which replaces caches) cannot break us.
        self.caches = [(modules[name.rpartition(".")[0]], name.rpartition(".")[2], m, m.k, m.v)
                       for name, m in modules.items() if isinstance(m, KVCache)]
        if not self.caches:
            lm.clear_caches()
            raise ConfigError("continuous batching needs a decoder whose caches are vlmkit KVCache modules")
        self.lm, self.rows, self.max_len, self.device = lm, rows, max_len, device
        self.decode_fn = decode_fn or decode_one_token
        self.key_valid = torch.zeros(rows, max_len, dtype=torch.bool, device=device)
        self.in_prefix = torch.zeros(rows, max_len, dtype=torch.bool, device=device)
        self.next_pos = torch.zeros(rows, dtype=torch.long, device=device)
        self.slot = 0  # the shared next write slot `s`
        self.active: dict[int, _RowState] = {}

    def close(self) -> None:
        self.lm.clear_caches()

    def free_row(self) -> int | None:
        return next((r for r in range(self.rows) if r not in self.active), None)

    def free_rows(self, n: int) -> list[int]:
        """The n lowest free rows (the caller checked that n are free)."""
        return [r for r in range(self.rows) if r not in self.active][:n]

    def free(self, row: int) -> None:
        self.active.pop(row, None)
        self.key_valid[row] = False

    def copy_row(self, src: int, dst: int) -> None:
        """Make free row `dst` a copy of `src` (the same prompt sampled n times shares one prefill)."""
        for *_, k, v in self.caches:
            k[dst], v[dst] = k[src], v[src]
        self.key_valid[dst], self.in_prefix[dst] = self.key_valid[src], self.in_prefix[src]
        self.next_pos[dst] = self.next_pos[src]
        r = self.active[src]
        self.active[dst] = _RowState(r.start, r.end)

    def plan(self, T: int, need: int) -> int | None:
        """The shift along the slot axis that makes room for a T-token prompt using `need` slots in
        all (prompt + max new tokens), or None if it cannot fit until some rows finish."""
        if need > self.max_len:
            raise ConfigError(f"prompt + max new tokens need {need} cache slots, the server has {self.max_len}")
        if not self.active:
            return T - self.slot  # an empty cache: put the prompt at [0, T)
        lowest = min(r.start for r in self.active.values())
        highest = max(r.end for r in self.active.values())
        for d in (max(0, T - self.slot), max(T - self.slot, -lowest)):  # stay, else compact left
            if self.slot + d - T >= 0 and max(highest + d, self.slot + d - T + need) <= self.max_len:
                return d
        return None

    def _shift(self, d: int) -> None:
        """Move every row's contents d slots along the slot axis (d < 0: left)."""
        if d == 0:
            return
        self.slot += d
        if not self.active:
            self.key_valid.zero_()
            return
        for *_, k, v in self.caches:
            k.copy_(torch.roll(k, d, dims=2))
            v.copy_(torch.roll(v, d, dims=2))
        self.key_valid.copy_(torch.roll(self.key_valid, d, dims=1))
        self.in_prefix.copy_(torch.roll(self.in_prefix, d, dims=1))
        for r in self.active.values():
            r.start, r.end = r.start + d, r.end + d

    def _bind(self, index=None, buffers=None) -> None:
        """Point every layer's cache at `k[index]` / `v[index]`, or at `buffers[i]` (a (k, v) pair
        per layer), or (neither) back at the whole buffers."""
        for i, (owner, attr, m, k, v) in enumerate(self.caches):
            setattr(owner, attr, m)
            if buffers is not None:
                m.k, m.v = buffers[i]
            else:
                m.k, m.v = (k, v) if index is None else (k[index], v[index])

    def prefill(self, row: int, inputs: DecoderInputs, need: int, shift: int) -> torch.Tensor:
        """Run one request's prompt (inputs of batch 1) into `row`; return its last logits [V]."""
        return self.prefill_rows([row], inputs, need, shift)[0]

    @torch.inference_mode()
    def prefill_rows(self, rows: list[int], inputs: DecoderInputs, need: int, shift: int) -> torch.Tensor:
        """Run b prompts of the same length T (inputs of batch b) into free `rows` in one forward;
        return their last logits [b, V].

        Each prompt sees a [1, K, need, hd] cache with itself at its start, as a lone request does:
        contiguous rows are a view of the buffers; scattered rows get zeroed scratch buffers of
        [b, K, need, hd] per layer, copied into the rows afterwards (one forward for b prompts
        costs about what one costs on a small model: per-layer Python and dispatch dominate)."""
        self._shift(shift)
        b, T = inputs.embeds.shape[:2]
        start = self.slot - T
        valid = inputs.attention_mask.bool()  # [b, T]
        span = slice(start, start + need)
        contiguous = rows == list(range(rows[0], rows[0] + b))
        scratch = None if contiguous else [(k.new_zeros(b, k.shape[1], need, k.shape[3]),
                                            v.new_zeros(b, v.shape[1], need, v.shape[3])) for *_, k, v in self.caches]
        self._bind((slice(rows[0], rows[0] + b), slice(None), span), scratch)
        pad = torch.zeros(b, need - T, dtype=torch.bool, device=self.device)
        try:
            h = self.lm(inputs.embeds, inputs.positions, torch.cat([valid, pad], 1),
                        torch.cat([inputs.in_prefix & valid, pad], 1), torch.arange(T, device=self.device))
        finally:
            self._bind()
        index = torch.tensor(rows, device=self.device)
        if scratch is not None:
            for (*_, k, v), (sk, sv) in zip(self.caches, scratch):
                k[index, :, span], v[index, :, span] = sk, sv
        self.key_valid[index] = False
        self.key_valid[index, start:self.slot] = valid
        self.in_prefix[index] = False
        self.in_prefix[index, start:self.slot] = inputs.in_prefix & valid
        self.next_pos[index] = inputs.positions[:, -1] + 1
        for r in rows:
            self.active[r] = _RowState(start, start + need)
        return self.lm.logits(h[:, -1:])[:, 0]

    @torch.inference_mode()
    def decode(self, tokens: dict[int, int]) -> torch.Tensor:
        """Append one token to each row in `tokens` (row -> id); return logits [len(tokens), V] in
        the order of `tokens`. The step runs on rows [0, max row] and the occupied slot span."""
        if set(tokens) != set(self.active):
            raise ValueError("every active row decodes at every step (they share the write slot)")
        hi = max(tokens) + 1
        lo = min(self.active[r].start for r in tokens)
        end = max(self.active[r].end for r in tokens)  # keys up to every row's last slot, as alone
        s = self.slot
        ids = torch.zeros(hi, 1, dtype=torch.long, device=self.device)
        rows = torch.tensor(list(tokens), device=self.device)
        ids[rows, 0] = torch.tensor(list(tokens.values()), device=self.device)
        self.key_valid[rows, s] = True
        positions = self.next_pos[:hi, None].clone()  # [hi, 1]
        self._bind((slice(0, hi), slice(None), slice(lo, end)))
        try:
            logits = self.decode_fn(self.lm, ids, positions, torch.tensor([s - lo], device=self.device),
                                    self.key_valid[:hi, lo:end], self.in_prefix[:hi, lo:end])
        finally:
            self._bind()
        self.next_pos[rows] += 1
        self.slot += 1
        return logits[rows]
