"""batch_invariant(): each op, then whole Hugging Face models, bitwise, on random inputs.

Every check compares with torch.equal (bitwise). The controls show that the plain ops do vary
with batch shape on this CPU, so the invariance tests could fail.
"""

import pytest
import torch
import torch.nn.functional as F

import slipstream  # noqa: F401  (hides the broken torchvision before transformers loads)
from slipstream.trainer.numerics import (KEY_BLOCK, TILE_ROWS, batch_invariant, block_attention,
                                         invariant_linear, invariant_matmul, scaled_log_softmax)

DTYPES = [torch.float32, torch.bfloat16]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("in_out", [(576, 1536), (96, 172), (7, 13), (149, 4)])
def test_linear_row_does_not_depend_on_row_count_neighbours_or_place(dtype, in_out):
    k, n = in_out
    weight, bias = torch.randn(n, k, dtype=dtype), torch.randn(n, dtype=dtype)
    row = torch.randn(1, k, dtype=dtype)
    alone = invariant_linear(row, weight, bias)[0]
    for rows in (2, 3, TILE_ROWS - 1, TILE_ROWS, TILE_ROWS + 1, 5 * TILE_ROWS + 3):
        batch = torch.randn(rows, k, dtype=dtype)
        place = int(torch.randint(rows, ()))
        batch[place] = row[0]
        assert torch.equal(invariant_linear(batch, weight, bias)[place], alone), (rows, place)


def test_control_plain_fp32_matmul_varies_with_row_count():
    weight = torch.randn(1536, 576)
    x = torch.randn(300, 576)
    results = {rows: F.linear(x[:rows], weight)[0] for rows in (1, 2, 4, 64, 300)}
    assert any(not torch.equal(results[1], r) for r in results.values()), \
        "plain fp32 linear did not vary on this CPU: the invariance tests prove less here"


@pytest.mark.parametrize("dtype", DTYPES)
def test_batched_matmul_per_matrix_does_not_depend_on_the_batch(dtype):
    a, b = torch.randn(9, 37, 24, dtype=dtype), torch.randn(9, 24, 11, dtype=dtype)
    whole = invariant_matmul(a, b)
    for i in range(9):
        assert torch.equal(invariant_matmul(a[i:i + 1], b[i:i + 1])[0], whole[i])
        assert torch.equal(invariant_matmul(a[i, 5:6], b[i])[0], whole[i, 5])
    assert invariant_matmul(a[0, 0], b[0]).shape == (11,)          # 1-D operands as torch.matmul


def _attention_inputs(dtype, batch=3, heads=6, kv_heads=2, length=53, dim=16):
    q = torch.randn(batch, heads, length, dim, dtype=dtype)
    k = torch.randn(batch, kv_heads, length, dim, dtype=dtype)
    v = torch.randn(batch, kv_heads, length, dim, dtype=dtype)
    return q, k, v


def _causal(q_len, k_len, offset=0):
    return (torch.arange(k_len) <= torch.arange(q_len).unsqueeze(-1) + offset).view(
        1, 1, q_len, k_len)


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_decode_and_prefill_chunks_match_one_forward(dtype):
    q, k, v = _attention_inputs(dtype)
    full = block_attention(q, k, v, _causal(53, 53), 0.25)
    for t in (0, 1, KEY_BLOCK - 1, KEY_BLOCK, 40, 52):     # one query against a cache of t+1
        one = block_attention(q[:, :, t:t + 1], k[:, :, :t + 1], v[:, :, :t + 1],
                              _causal(1, t + 1, t), 0.25)
        assert torch.equal(one[:, :, 0], full[:, :, t]), t
    chunk = block_attention(q[:, :, 20:35], k[:, :, :35], v[:, :, :35], _causal(15, 35, 20), 0.25)
    assert torch.equal(chunk, full[:, :, 20:35])


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_ignores_padding_left_right_and_gaps(dtype):
    q, k, v = _attention_inputs(dtype, batch=1, length=30)
    reference = block_attention(q, k, v, _causal(30, 30), 0.3)
    for left, right in ((0, 7), (5, 0), (11, 4)):
        pad = lambda t: F.pad(t, (0, 0, left, right))  # noqa: E731
        length = left + 30 + right
        mask = torch.zeros(1, 1, length, length, dtype=torch.bool)
        mask[..., left:left + 30, left:left + 30] = _causal(30, 30)
        out = block_attention(pad(q), pad(k), pad(v), mask, 0.3)
        assert torch.equal(out[:, :, left:left + 30], reference), (left, right)


def test_attention_matches_sdpa_closely_and_handles_additive_masks():
    q, k, v = _attention_inputs(torch.float32)
    mask = _causal(53, 53)
    ours = block_attention(q, k, v, mask, 16 ** -0.5)
    theirs = F.scaled_dot_product_attention(q, k.repeat_interleave(3, 1),
                                            v.repeat_interleave(3, 1), attn_mask=mask)
    assert torch.allclose(ours, theirs, atol=1e-5)
    additive = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
    with batch_invariant():
        routed = F.scaled_dot_product_attention(q[:, :2], k[:, :2], v[:, :2], attn_mask=additive)
        causal = F.scaled_dot_product_attention(q[:, :2], k[:, :2], v[:, :2], is_causal=True)
    assert torch.equal(routed, causal)


@pytest.mark.parametrize("dtype", DTYPES)
def test_elementwise_ops_do_not_depend_on_buffer_length(dtype):
    x = torch.randn(5, 37, dtype=dtype) * 4
    with batch_invariant():
        for op in (F.silu, torch.exp, torch.sigmoid, torch.cos):
            whole = op(x)
            for rows in (1, 2, 3):
                assert torch.equal(op(x[:rows]), whole[:rows]), op


def test_log_softmax_row_does_not_depend_on_the_batch():
    logits = torch.randn(6, 9, 50_000)
    whole = scaled_log_softmax(logits, 0.7)
    assert torch.equal(scaled_log_softmax(logits[2, 3], 0.7), whole[2, 3])
    assert torch.equal(scaled_log_softmax(logits[2:3, 3], 0.7)[0], whole[2, 3])


def test_context_restores_threads_and_nests():
    torch.set_num_threads(2)
    with batch_invariant():
        assert torch.get_num_threads() == 1
        with batch_invariant():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
