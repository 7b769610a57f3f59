"""Batch-invariant numerics: `with batch_invariant(): model(...)` computes, for every sequence,
bitwise the same logits whatever else is in the batch, however it is padded, wherever it sits in
the batch, and whether it is run in one forward or token by token with a KV cache.

Why results vary at all: a kernel picks its blocking (and so the order of its floating-point
additions) from the shapes it is given. The fixes, each chosen from measurements on this CPU
(ENVIRONMENT.md) and checked by tests/test_numerics.py:

* **Matmul / linear**: `torch.mm` on the CPU changes a row's result with the row count (fp32
  between 1 row and 2+; bf16 at 64 rows). Every linear runs as matmuls of exactly
  `TILE_ROWS` rows (zero-padded), so a row's result depends only on the row itself (measured:
  within a tile of fixed shape a row's result depends neither on its neighbours nor on its place).
* **Attention** reduces over keys in fixed blocks of `KEY_BLOCK`, aligned at key position 0,
  with an online softmax across blocks in order. Every score and every P@V product is a matmul
  of one fixed shape (`QUERY_TILE` queries x `KEY_BLOCK` keys, `BMM_CHUNK` matrices a call), so
  a query's result does not
  depend on the sequence length, the padding or how the KV cache was filled. Blocks past a
  query's last key contribute an exact no-op (max unchanged, factor exp(0) = 1, zero added),
  so one forward and token-by-token decode agree. Keys a row never attends to (left padding, gaps)
  are compacted away first, so blocks always hold the same logical positions.
* **Transcendental element-wise ops** (SiLU, exp, cos, sin, ...): torch's vectorised loop
  computes the last few elements of a buffer with a scalar path (libm instead of the vector
  library), so an element's value depends on where it falls in the buffer. The last dim is
  zero-padded to a multiple of `_VECTOR_ALIGN` so every element takes the vector path.
* **Threads**: torch splits element-wise and reduction work across threads at boundaries that
  depend on the tensor size; inside the context torch runs on one intra-op thread. Row-wise
  reductions (RMSNorm's mean, softmax, log_softmax) are then computed in a fixed order per row
  (measured: they do not depend on the row count).
* **Casts**: q, k, v are upcast to fp32 for attention (both sides); the `lm_head` runs in
  fp32 (its input is cast up, its weight too), so logits and log_softmax are fp32.

RMSNorm, RoPE, embeddings and residual adds need no change: they are element-wise (exact) or
row-wise, and both sides run the same Hugging Face code under the same context.

How it attaches to a stock model: a `TorchFunctionMode` routes `F.linear`, matmuls, SDPA and
the listed element-wise ops; a global module pre-hook switches each Hugging Face model it sees to
the attention implementation registered here (restored on exit) and marks its output embedding
for fp32. Nothing needs the model handle, so `AutoModelForCausalLM.from_pretrained(...)` under
the context is enough.

GPU: vLLM's batch-invariant Triton kernels (`vllm.model_executor.determinism.batch_invariant`:
mm, addmm, bmm, log_softmax, softmax, mean) are enabled when vLLM is importable on CUDA, and the
block attention above runs on top of them (vLLM's own attention backends are not reusable on a
Hugging Face model). UNVERIFIED: this session had no GPU; tests/test_numerics_gpu.py runs there.
"""

from __future__ import annotations

import contextlib
import math
import threading
import weakref
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

TILE_ROWS = 32          # rows of every linear's matmul: small, so decoding few rows wastes little
QUERY_TILE = 16         # query rows of every attention matmul
KEY_BLOCK = 16          # keys per attention block
BMM_CHUNK = 64          # matrices per bmm call
COLUMN_ALIGN = 16       # output columns of every matmul are padded to a multiple of this
_VECTOR_ALIGN = 128     # >= 2 x the widest torch CPU vector (64 bf16 lanes on AVX-512)
ATTENTION_NAME = "slipstream_batch_invariant"

_fp32_heads: weakref.WeakSet = weakref.WeakSet()   # output embeddings seen under the context


# ---------------------------------------------------------------------------------- matmuls
def _tiled_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (M, K) @ b (K, N) as one `torch.mm` call per TILE_ROWS rows (zero-padded): every call
    has the same shapes and strides, so torch takes the same kernel path whatever M is. (A single
    bmm over the tiles is not enough: torch's CPU bmm picks its path from the batch count.)"""
    if a.is_cuda and _vllm_kernels_enabled():
        return torch.mm(a, b)        # vLLM's persistent matmul is batch-invariant as is
    rows = a.shape[0]
    pad = (-rows) % TILE_ROWS
    a = F.pad(a, (0, 0, 0, pad)) if pad else a.contiguous()
    columns = b.shape[1]
    b = _columns_major(b)
    out = torch.cat([torch.mm(a[i:i + TILE_ROWS], b) for i in range(0, rows + pad, TILE_ROWS)])
    return out[:rows, :columns]


def _columns_major(b: torch.Tensor) -> torch.Tensor:
    """`b` (..., K, N) with N padded to a multiple of COLUMN_ALIGN, laid out as the transpose
    of a contiguous (..., N, K) tensor (a linear's weight layout). Measured on this CPU: with a
    contiguous B (K=24, N=11) or a narrow one (N=4), fp32 mm gives a row a result that depends
    on its place in the tile; with this layout and width none did (tests/test_numerics.py)."""
    pad = (-b.shape[-1]) % COLUMN_ALIGN
    if pad == 0 and b.stride(-2) == 1 and b.stride(-1) == b.shape[-2]:
        return b
    b_t = b.transpose(-1, -2)
    if pad:
        b_t = F.pad(b_t, (0, 0, 0, pad))
    return b_t.contiguous().transpose(-1, -2)


def _fixed_bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (N, m, k) @ b (N, k, n) as bmm calls of exactly BMM_CHUNK matrices each (zero-padded),
    for the same reason as _tiled_mm: a fixed call shape, a fixed kernel path."""
    if a.is_cuda and _vllm_kernels_enabled():
        return torch.bmm(a, b)
    count = a.shape[0]
    pad = (-count) % BMM_CHUNK
    if pad:
        a, b = F.pad(a, (0, 0, 0, 0, 0, pad)), F.pad(b, (0, 0, 0, 0, 0, pad))
    columns = b.shape[-1]
    a, b = a.contiguous(), _columns_major(b)
    out = torch.cat([torch.bmm(a[i:i + BMM_CHUNK], b[i:i + BMM_CHUNK])
                     for i in range(0, count + pad, BMM_CHUNK)])
    return out[:count, :, :columns]


def invariant_linear(x: torch.Tensor, weight: torch.Tensor,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear whose per-row result does not depend on the other rows. An fp32 input with a
    lower-precision weight (the lm_head under the context) is computed in fp32."""
    if weight.dtype != x.dtype:
        weight = weight.to(x.dtype)
        bias = None if bias is None else bias.to(x.dtype)
    out = _tiled_mm(x.reshape(-1, x.shape[-1]), weight.t())
    if bias is not None:
        out = out + bias
    return out.reshape(*x.shape[:-1], weight.shape[0])


def invariant_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """torch.matmul with every 2-D product tiled (batch dims broadcast as torch does)."""
    if a.dim() == 1 or b.dim() == 1:
        squeeze_a, squeeze_b = a.dim() == 1, b.dim() == 1
        out = invariant_matmul(a.unsqueeze(0) if squeeze_a else a,
                               b.unsqueeze(-1) if squeeze_b else b)
        out = out.squeeze(-2) if squeeze_a else out
        return out.squeeze(-1) if squeeze_b else out
    if b.dim() == 2:
        return invariant_linear(a, b.t())
    batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a3 = a.expand(*batch, *a.shape[-2:]).reshape(-1, *a.shape[-2:])
    b3 = b.expand(*batch, *b.shape[-2:]).reshape(-1, *b.shape[-2:])
    # The same mm tiles as a 2-D product, so a batched matmul agrees with its unbatched rows.
    out = torch.stack([_tiled_mm(x, y) for x, y in zip(a3, b3)])
    return out.reshape(*batch, a.shape[-2], b.shape[-1])


_vllm_state = {"enabled": False}


def _vllm_kernels_enabled() -> bool:
    return _vllm_state["enabled"]


def _enable_vllm_kernels() -> None:
    """vLLM's batch-invariant Triton overrides (process-wide, CUDA only; vLLM has no way to
    turn them off again)."""
    if _vllm_state["enabled"] or not torch.cuda.is_available():
        return
    try:
        from vllm.model_executor.determinism import batch_invariant as vllm_bi
    except ImportError:
        return   # no vLLM on this machine: the tiled matmuls below still apply
    vllm_bi.override_envs_for_invariance()
    vllm_bi.enable_batch_invariant_mode()
    _vllm_state["enabled"] = True


# ------------------------------------------------------------------------------ element-wise
def _aligned(op: Callable) -> Callable:
    """`op` on a copy whose last dim is padded to _VECTOR_ALIGN, so no element of the real data
    falls into torch's scalar tail loop (see the module docstring)."""
    def run(x: torch.Tensor, *args, **kwargs):
        if not isinstance(x, torch.Tensor) or x.dim() == 0 or x.is_cuda or kwargs.get("inplace"):
            return op(x, *args, **kwargs)
        last = x.shape[-1]
        pad = (-last) % _VECTOR_ALIGN
        if pad == 0 and x.is_contiguous():
            return op(x, *args, **kwargs)
        return op(F.pad(x, (0, pad)), *args, **kwargs)[..., :last]
    return run


_ELEMENTWISE = {
    fn: _aligned(fn) for fn in (
        F.silu, F.gelu, torch.sigmoid, torch.tanh, torch.exp, torch.cos, torch.sin, torch.rsqrt,
        torch.Tensor.sigmoid, torch.Tensor.tanh, torch.Tensor.exp, torch.Tensor.cos,
        torch.Tensor.sin, torch.Tensor.rsqrt)
}


# -------------------------------------------------------------------------------- attention
def _valid_keys(mask: torch.Tensor | None, q_len: int, k_len: int,
                top_left_causal: bool = False, device: torch.device | None = None
                ) -> torch.Tensor:
    """A bool mask broadcastable to (B, H, Lq, Lk): True where a query attends to a key.
    `None` means causal with the queries at the end of the keys (a KV cache's layout), unless
    `top_left_causal` (SDPA's is_causal)."""
    if mask is None:
        offset = 0 if top_left_causal else k_len - q_len
        q_pos = torch.arange(q_len, device=device).unsqueeze(-1) + offset
        return (torch.arange(k_len, device=device) <= q_pos).view(1, 1, q_len, k_len)
    if mask.dtype == torch.bool:
        return mask[..., -k_len:]
    # An additive mask: 0 where attended, a large negative number where not.
    return (mask > torch.finfo(mask.dtype).min / 2)[..., -k_len:]


def _compact_keys(key: torch.Tensor, value: torch.Tensor, valid: torch.Tensor):
    """Move the keys no query attends to (left padding, gaps in a cache) behind the others, in
    order, so block j always holds logical key positions 16j..16j+15."""
    used = valid.any(dim=-2, keepdim=True)                         # (B, 1|H, 1, Lk)
    if not bool((used[..., 1:] & ~used[..., :-1]).any()):
        return key, value, valid                                   # already a prefix per row
    if used.shape[1] != 1:
        raise ValueError("batch_invariant attention: per-head key padding is not supported")
    order = torch.argsort((~used).to(torch.int8), dim=-1, stable=True)   # (B, 1, 1, Lk)
    index = order.squeeze(2).unsqueeze(-1).expand(-1, key.shape[1], -1, key.shape[-1])
    valid = valid.expand(valid.shape[0], -1, valid.shape[2], -1)
    return (key.gather(2, index), value.gather(2, index),
            valid.gather(-1, order.expand(-1, valid.shape[1], valid.shape[2], -1)))


def block_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    valid: torch.Tensor, scaling: float) -> torch.Tensor:
    """softmax(q k^T * scaling) v over the valid keys, batch-invariant (module docstring).

    query (B, H, Lq, D); key, value (B, Hkv, Lk, D) with H a multiple of Hkv (GQA); valid bool,
    broadcastable to (B, H, Lq, Lk). Returns (B, H, Lq, D) in the query's dtype."""
    batch, heads, q_len, dim = query.shape
    kv_heads, k_len = key.shape[1], key.shape[2]
    rep = heads // kv_heads
    valid = valid.expand(batch, valid.shape[1], q_len, k_len)
    key, value, valid = _compact_keys(key, value, valid)
    # Fold the query heads that share a KV head into rows: (B, Hkv, rep * Lq, D).
    q = query.float().reshape(batch, kv_heads, rep * q_len, dim)
    if valid.shape[1] == heads:
        valid = valid.reshape(batch, kv_heads, rep * q_len, k_len)
    else:
        valid = valid.unsqueeze(2).expand(batch, 1, rep, q_len, k_len)
        valid = valid.reshape(batch, 1, rep * q_len, k_len)
    rows = rep * q_len
    row_pad = (-rows) % QUERY_TILE
    tiles = (rows + row_pad) // QUERY_TILE
    # Query tiles as one flat batch of (QUERY_TILE, D) matrices: index = (b, kv head, tile).
    q = F.pad(q, (0, 0, 0, row_pad)).reshape(batch * kv_heads * tiles, QUERY_TILE, dim)
    valid = F.pad(valid, (0, 0, 0, row_pad), value=False)
    valid = valid.expand(batch, kv_heads, rows + row_pad, k_len).reshape(
        batch * kv_heads * tiles, QUERY_TILE, k_len)
    # Keys past the last one anybody attends to would only add exact no-ops: skip them.
    used = valid.any(0).any(0).nonzero()     # (any tile, any row) -> keys in use
    n_blocks = math.ceil((int(used.max()) + 1) / KEY_BLOCK) if used.numel() else 0
    key_pad = max(n_blocks * KEY_BLOCK - k_len, 0)
    k = F.pad(key.float(), (0, 0, 0, key_pad))
    v = F.pad(value.float(), (0, 0, 0, key_pad))
    valid = F.pad(valid, (0, key_pad), value=False)

    # Pad the tile count to whole bmm calls, so every per-row tensor below has a length that is a
    # multiple of the vector width too (no element falls into the scalar tail; see _aligned).
    count = q.shape[0]
    extra = (-count) % BMM_CHUNK
    q = F.pad(q, (0, 0, 0, 0, 0, extra))
    valid = F.pad(valid, (0, 0, 0, 0, 0, extra), value=False)

    def per_tile(t: torch.Tensor) -> torch.Tensor:   # (B, Hkv, 16, D) -> one per query tile
        tiled = t.unsqueeze(2).expand(batch, kv_heads, tiles, *t.shape[2:]).reshape(
            count, *t.shape[2:])
        return F.pad(tiled, (0, 0, 0, 0, 0, extra))

    m = q.new_full(q.shape[:2], -math.inf)
    denom = q.new_zeros(q.shape[:2])
    acc = torch.zeros_like(q)
    for j in range(n_blocks):
        block = slice(j * KEY_BLOCK, (j + 1) * KEY_BLOCK)
        scores = _fixed_bmm(q, per_tile(k[:, :, block].transpose(-1, -2))) * scaling
        scores = scores.masked_fill(~valid[..., block], -math.inf)      # (N, 16, 16)
        m_new = torch.maximum(m, scores.amax(-1))
        m_safe = m_new.masked_fill(m_new == -math.inf, 0.0)           # rows with no key yet
        probs = torch.exp(scores - m_safe.unsqueeze(-1))
        rescale = torch.exp(m - m_safe)
        denom = denom * rescale + probs.sum(-1)
        acc = acc * rescale.unsqueeze(-1) + _fixed_bmm(probs, per_tile(v[:, :, block]))
        m = m_new
    out = torch.where(denom.unsqueeze(-1) > 0, acc / denom.clamp(min=1e-30).unsqueeze(-1), 0.0)
    out = out[:count].reshape(batch, kv_heads, tiles * QUERY_TILE, dim)[:, :, :rows]
    return out.reshape(batch, heads, q_len, dim).to(query.dtype)


def hf_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **_):
    """The attention implementation registered with transformers as ATTENTION_NAME."""
    if dropout:
        raise ValueError("batch_invariant attention has no dropout (call model.eval())")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    valid = _valid_keys(attention_mask, query.shape[2], key.shape[2], device=query.device)
    with torch._C.DisableTorchFunction():   # its matmuls are fixed-shape already: no routing
        out = block_attention(query, key, value, valid, scale)
    return out.transpose(1, 2).contiguous(), None


def _sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
          enable_gqa=False):
    """F.scaled_dot_product_attention, for code that calls it directly."""
    if dropout_p:
        raise ValueError("batch_invariant attention has no dropout")
    valid = _valid_keys(attn_mask, query.shape[-2], key.shape[-2],
                        top_left_causal=attn_mask is None and is_causal, device=query.device)
    if attn_mask is None and not is_causal:
        valid = torch.ones(1, 1, query.shape[-2], key.shape[-2], dtype=torch.bool,
                           device=query.device)
    scale = scale if scale is not None else query.shape[-1] ** -0.5
    return block_attention(query, key, value, valid, scale)


def _register_with_transformers() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTENTION_NAME, hf_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, sdpa_mask)


def scaled_log_softmax(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """log_softmax(logits / temperature) over the last dim, in fp32: the one expression the
    sampler draws from and the learner recomputes, so both round alike."""
    logits = logits.float()
    # x / 1.0 is x bitwise: skipping it saves an fp32 copy of the logits, and changes no bit.
    return torch.log_softmax(logits if temperature == 1.0 else logits / temperature, dim=-1)


def _addmm(bias, a, b, *, beta=1, alpha=1):
    return beta * bias + alpha * invariant_matmul(a, b)


# ------------------------------------------------------------------------------ the context
class _BatchInvariantMode(TorchFunctionMode):
    _ROUTES: dict = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        route = self._ROUTES.get(func) or _ELEMENTWISE.get(func)
        if route is None:
            return func(*args, **kwargs)
        return route(*args, **kwargs)


_BatchInvariantMode._ROUTES = {
    F.linear: invariant_linear,
    torch.matmul: invariant_matmul, torch.Tensor.matmul: invariant_matmul,
    torch.Tensor.__matmul__: invariant_matmul,
    torch.mm: invariant_matmul, torch.Tensor.mm: invariant_matmul,
    torch.bmm: invariant_matmul, torch.Tensor.bmm: invariant_matmul,
    torch.addmm: _addmm,
    F.scaled_dot_product_attention: _sdpa,
}


class _ModelSwitch:
    """Global module pre-hook: Hugging Face models get the batch-invariant attention (the old
    choice is put back on exit) and their output embedding is marked for fp32."""

    def __init__(self) -> None:
        from transformers import PreTrainedModel

        self.saved: dict[int, tuple[object, str | None]] = {}
        self.model_class = PreTrainedModel

    def __call__(self, module: torch.nn.Module, args: tuple):
        if isinstance(module, self.model_class):
            config = module.config
            if id(config) not in self.saved:
                self.saved[id(config)] = (config, config._attn_implementation)
                config._attn_implementation = ATTENTION_NAME
            head = module.get_output_embeddings()
            if isinstance(head, torch.nn.Linear):
                _fp32_heads.add(head)
            return None
        if module in _fp32_heads:
            return tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point()
                         else a for a in args)
        return None

    def restore(self) -> None:
        for config, implementation in self.saved.values():
            config._attn_implementation = implementation
        self.saved.clear()


class _Shared:
    """What the context changes process-wide (the module hook, the thread count), set up by the
    first thread that enters and undone by the last that leaves; the TorchFunctionMode itself is
    per thread (torch keeps modes thread-local)."""

    lock = threading.Lock()
    users = 0
    hook = None
    switch: _ModelSwitch | None = None
    threads = 1

    @classmethod
    def acquire(cls) -> None:
        with cls.lock:
            if cls.users == 0:
                _register_with_transformers()
                _enable_vllm_kernels()
                cls.switch = _ModelSwitch()
                cls.hook = torch.nn.modules.module.register_module_forward_pre_hook(cls.switch)
                cls.threads = torch.get_num_threads()
                torch.set_num_threads(1)
            cls.users += 1

    @classmethod
    def release(cls) -> None:
        with cls.lock:
            cls.users -= 1
            if cls.users == 0:
                torch.set_num_threads(cls.threads)
                cls.hook.remove()
                cls.switch.restore()


_local = threading.local()


@contextlib.contextmanager
def batch_invariant() -> Iterator[None]:
    """Run Hugging Face causal LMs (and plain torch code) batch-invariantly; see the module
    docstring for what changes. Re-entrant and thread-safe; restores the thread count and the
    models' attention choice when the last user leaves."""
    if getattr(_local, "depth", 0):
        _local.depth += 1
        try:
            yield
        finally:
            _local.depth -= 1
        return
    _Shared.acquire()
    _local.depth = 1
    try:
        with _BatchInvariantMode():
            yield
    finally:
        _local.depth = 0
        _Shared.release()
