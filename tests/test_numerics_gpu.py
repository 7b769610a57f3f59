"""batch_invariant() on CUDA (marked `gpu`: skipped where torch finds no CUDA device).

On a GPU the context enables vLLM's batch-invariant Triton kernels when vLLM is installed and
otherwise keeps the fixed-shape tiles of the CPU path (cuBLAS picks its kernel, split-K included,
from the call's shapes, which the tiles fix). The same model checks as on the CPU."""

import pytest
import torch
from transformers import DynamicCache

from test_numerics_models import logprobs, random_model, right_padded

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_batch_padding_and_kv_cache_invariance(dtype):
    from slipstream.trainer.numerics import batch_invariant

    model = random_model("qwen2", dtype).cuda()
    seqs = [torch.randint(0, 301, (n,), device="cuda") for n in (37, 5, 70)]
    with torch.no_grad(), batch_invariant():
        alone = [logprobs(model(input_ids=s[None]).logits[0]) for s in seqs]
        ids, mask = right_padded([s.cpu() for s in seqs])
        batched = logprobs(model(input_ids=ids.cuda(), attention_mask=mask.cuda()).logits)
        cache, steps = DynamicCache(config=model.config), []
        for t in range(len(seqs[2])):
            out = model(input_ids=seqs[2][None, t:t + 1], past_key_values=cache, use_cache=True)
            steps.append(logprobs(out.logits[0, -1]))
    for i, s in enumerate(seqs):
        assert torch.equal(batched[i, : len(s)], alone[i]), i
    assert torch.equal(torch.stack(steps), alone[2])
