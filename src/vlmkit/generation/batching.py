"""A static KV cache whose rows hold independent requests: per-row prefill, shared decode steps.

Axes: R cache rows (the server's `--max-batch`), L slots per row, T prompt tokens, K kv heads,
hd head dim, V vocabulary, S the key span of one forward.

A request joins a batch that is already decoding, so its prompt is prefilled alone into its own
row while the other rows keep their state, and all rows then decode together. Every row is laid
out as a lone `generate` lays out its batch-1 cache: prompt at slots [0, T), token i after it at
slot T + i, nothing else valid.

    slot:   0 1 2 3 4 5 6 7 8 9 ...
    row 0:  a a a a a a a a _       admitted first, 8 slots written, writes slot 8 next
    row 1:  b b b b _               admitted later with a 4-token prompt, writes slot 4 next
    row 2:  (free)

So rows grow independently: in a decode step each layer's cache is replaced by a `_RowWrites`,
which writes row r's new key/value at r's own next slot and hands attention the first S slots of
the step's rows; the decoder's shared `slots` argument then only serves as the mask's query index
(the span's last slot: every row's keys are at or before it, `key_valid` masks the rest).

Why this makes bf16 answers equal to the request served alone (`Pipeline.generate`, whose batch-1
cache has lanes_up(T + max new tokens) slots) *by construction*: SDPA's CPU kernel (flash
attention) splits the key axis into blocks of 512 slots from slot 0, sums each block's attention
weights over 16 float lanes fixed by the slot index (AVX-512; AVX2's 8 divide 16), and handles
the last `span % 16` slots in a scalar loop with another exp (`std::exp`, not the vectorised
one). A row whose keys start at another slot, or fall in a scalar tail the lone run does not
have (or the other way round), gets other bits, and one bf16 step is enough to flip a greedy
near-tie. With keys from slot 0 and every span, lone or batched, a multiple of LANES, no key is
ever in a scalar tail, each key has its lone run's lane and block, and the masked slots add
exact zeros: any such span gives a row its lone bits, so all rows share one span per step.
(`generate` itself keeps T + max new tokens slots by default, the length of transformers' static
cache, which the parity tests match bit for bit.) Prefill runs one prompt per forward on the lone
run's [1, K, lanes_up(need), hd] shapes. In float32 the kernel's P @ V matmul sums in an order
that depends on the span length, so float32 rows differ from lone runs by ~1e-7 whatever the
layout; that has not flipped a token.

What the layout cannot fix: a decode step runs the linear layers at M = rows, a lone run at M = 1,
and oneDNN picks its kernel by M. In bf16 on this AMX CPU each row's bits equal M = 1 up to M = 32
for input widths <= 2048 (the bundled model at --max-batch <= 32), not at M > 32 for widths >= 768
nor at any M > 1 for width 16384 (PaliGemma-3B's down_proj); in float32 MKL's M = 1 path (gemv)
differs from M > 1 by ~1e-7 everywhere, which has not been seen to flip a greedy token.
"""

from dataclasses import dataclass

import torch
from torch import nn

from vlmkit.errors import ConfigError
from vlmkit.generation.decode import decode_one_token
from vlmkit.models.common.contracts import CachedDecoder, DecoderInputs
from vlmkit.models.common.kv_cache import KVCache


LANES = 16  # SDPA's CPU kernel sums attention weights over this many float lanes (AVX-512)


def lanes_up(n: int) -> int:
    """n rounded up to a multiple of LANES."""
    return -(-n // LANES) * LANES


@dataclass
class _RowState:
    need: int  # slots the request may use in all (prompt + max new tokens); `length` has the written ones


class _RowWrites(nn.Module):
    """One layer's cache during a decode step over rows [0, hi): row r's key/value go to slot
    `write[r]`; attention gets the first `span` slots of those rows."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor):
        super().__init__()
        self.k_all, self.v_all = k, v  # [R, K, L, hd]
        self.rows = self.write = None
        self.span = 0

    def update(self, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v [hi, K, 1, hd] -> the rows' keys and values [hi, K, span, hd]; `slots` is unused."""
        self.k_all[self.rows, :, self.write] = k[:, :, 0].to(self.k_all.dtype)  # [hi, K, hd] at (r, :, write[r])
        self.v_all[self.rows, :, self.write] = v[:, :, 0].to(self.v_all.dtype)
        hi = len(self.rows)
        return self.k_all[:hi, :, :self.span], self.v_all[:hi, :, :self.span]


class BatchedCache:
    """R independent rows of L slots over one decoder's static caches.

    Usage: `row = free_row()`, `prefill(row, inputs, need)` -> logits [V]; then
    `decode({row: token_id})` -> logits [n_rows, V] for the rows asked, once per step; `free(row)`
    when a request ends. Not thread-safe: one owner (the scheduler).
    """

    def __init__(self, lm: CachedDecoder, rows: int, max_len: int, dtype: torch.dtype, device, decode_fn=None):
        slots = lanes_up(max_len)  # room for a span rounded up to whole lanes
        lm.setup_caches(rows, slots, dtype, device)
        modules = dict(lm.named_modules())  # type: ignore[attr-defined]
        # (owner, attribute, cache, k, v): `_bind` re-installs each cache where setup_caches put it,
        # so a plain `generate` on the same model in between (which replaces caches) cannot break us.
        self.caches = [(modules[name.rpartition(".")[0]], name.rpartition(".")[2], m, m.k, m.v)
                       for name, m in modules.items() if isinstance(m, KVCache)]
        if not self.caches:
            lm.clear_caches()
            raise ConfigError("continuous batching needs a decoder whose caches are vlmkit KVCache modules")
        self.writers = [_RowWrites(k, v) for *_, k, v in self.caches]
        self.lm, self.rows, self.max_len, self.device = lm, rows, max_len, device
        self.decode_fn = decode_fn or decode_one_token
        self.key_valid = torch.zeros(rows, slots, dtype=torch.bool, device=device)
        self.in_prefix = torch.zeros(rows, slots, dtype=torch.bool, device=device)
        self.next_pos = torch.zeros(rows, dtype=torch.long, device=device)
        self.length = torch.zeros(rows, dtype=torch.long, device=device)  # each row's next write slot
        self.active: dict[int, _RowState] = {}

    def close(self) -> None:
        self.lm.clear_caches()

    def free_row(self) -> int | None:
        return next((r for r in range(self.rows) if r not in self.active), None)

    def free(self, row: int) -> None:
        self.active.pop(row, None)
        self.key_valid[row] = False
        self.in_prefix[row] = False

    def copy_row(self, src: int, dst: int) -> None:
        """Make free row `dst` a copy of `src` (the same prompt sampled n times shares one prefill)."""
        for *_, k, v in self.caches:
            k[dst], v[dst] = k[src], v[src]
        for t in (self.key_valid, self.in_prefix, self.next_pos, self.length):
            t[dst] = t[src]
        self.active[dst] = _RowState(self.active[src].need)

    def _bind(self, index=None, writers: bool = False) -> None:
        """Point every layer's cache at `k[index]` / `v[index]`, or install the decode step's
        `_RowWrites` (writers), or (neither) put the whole buffers back."""
        for (owner, attr, m, k, v), w in zip(self.caches, self.writers):
            setattr(owner, attr, w if writers else m)
            m.k, m.v = (k, v) if index is None else (k[index], v[index])

    @torch.inference_mode()
    def prefill(self, row: int, inputs: DecoderInputs, need: int) -> torch.Tensor:
        """Run one request's prompt (inputs of batch 1) into free `row`, which may use `need` slots
        (prompt + max new tokens); return its last logits [V]. The forward sees a
        [1, K, lanes_up(need), hd] cache with the prompt at its start: the lone run's (`Pipeline`
        generates with `cache_multiple=LANES`)."""
        if need > self.max_len:
            raise ConfigError(f"prompt + max new tokens need {need} cache slots, the server has {self.max_len}")
        T = inputs.embeds.shape[1]
        valid = inputs.attention_mask.bool()[0]  # [T]
        self.key_valid[row], self.in_prefix[row] = False, False
        self.key_valid[row, :T] = valid
        self.in_prefix[row, :T] = inputs.in_prefix[0] & valid
        S = lanes_up(need)
        self._bind((slice(row, row + 1), slice(None), slice(0, S)))
        try:
            h = self.lm(inputs.embeds, inputs.positions, self.key_valid[row:row + 1, :S],
                        self.in_prefix[row:row + 1, :S], torch.arange(T, device=self.device))
        finally:
            self._bind()
        self.next_pos[row] = inputs.positions[:, -1] + 1
        self.length[row] = T
        self.active[row] = _RowState(need)
        return self.lm.logits(h[:, -1:])[0, 0]

    @torch.inference_mode()
    def decode(self, tokens: dict[int, int]) -> torch.Tensor:
        """Append one token to each row in `tokens` (row -> id); return logits [len(tokens), V] in
        the order of `tokens`. One forward over rows [0, max row] (free rows in between compute
        garbage, never read) and the first lanes_up(longest row + 1) slots."""
        if set(tokens) != set(self.active):
            raise ValueError("every active row decodes at every step")
        hi = max(tokens) + 1
        at = torch.tensor(list(tokens), device=self.device)
        span = lanes_up(int(self.length[at].max()) + 1)
        ids = torch.zeros(hi, 1, dtype=torch.long, device=self.device)
        ids[at, 0] = torch.tensor(list(tokens.values()), device=self.device)
        self.key_valid[at, self.length[at]] = True
        rows = torch.arange(hi, device=self.device)
        write = self.length[:hi].clamp(max=span - 1)  # a free row writes inside its own row
        for w in self.writers:
            w.rows, w.write, w.span = rows, write, span
        self._bind(writers=True)
        try:
            logits = self.decode_fn(self.lm, ids, self.next_pos[:hi, None].clone(),
                                    torch.tensor([span - 1], device=self.device),
                                    self.key_valid[:hi, :span], self.in_prefix[:hi, :span])
        finally:
            self._bind()
        self.next_pos[at] += 1
        self.length[at] += 1
        return logits[at]


def window_limit(lm: CachedDecoder) -> int:
    """The most slots a request may use so that no sliding window ever bites: a decode step's
    query index is the span's last slot for every row, which would shift a row's window (a lone
    run's window is taken from its own slot). No window: no limit."""
    cfg = getattr(lm, "cfg", None)
    windows = [w for w in (cfg.layer_window(i) for i in range(cfg.num_layers)) if w] if cfg is not None else []
    if not windows:
        return 1 << 62
    limit = min(windows) // LANES * LANES
    if limit == 0:
        raise ConfigError(f"continuous batching needs sliding windows of at least {LANES} slots, "
                          f"this decoder has {min(windows)}")
    return limit
