"""batch_invariant() on stock Hugging Face models (Llama and Qwen2 families, random weights):
one sequence's logprobs are bitwise the same alone, in a right-padded batch at any place, token by
token with a KV cache, in prefill chunks, and left-padded as `generate` lays out a batch."""

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache, LlamaConfig, Qwen2Config

import slipstream  # noqa: F401
from slipstream.buffer.records import Sample
from slipstream.trainer.logprobs import collate, token_logprobs
from slipstream.trainer.numerics import batch_invariant

CASES = [("llama", torch.float32), ("llama", torch.bfloat16), ("qwen2", torch.float32),
         ("qwen2", torch.bfloat16)]


def random_model(arch: str, dtype: torch.dtype, seed: int = 0, hidden: int = 96,
                 heads: int = 6, kv_heads: int = 2, intermediate: int = 172):
    torch.manual_seed(seed)
    config_cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[arch]
    config = config_cls(vocab_size=301, hidden_size=hidden, intermediate_size=intermediate,
                        num_hidden_layers=2, num_attention_heads=heads,
                        num_key_value_heads=kv_heads, max_position_embeddings=512,
                        tie_word_embeddings=arch == "qwen2")
    return AutoModelForCausalLM.from_config(config, dtype=dtype).eval()


def logprobs(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float(), dim=-1)


def right_padded(seqs):
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)], mask[i, : len(s)] = s, 1
    return ids, mask


@pytest.fixture(params=CASES, ids=[f"{a}-{str(d)[6:]}" for a, d in CASES])
def model(request):
    arch, dtype = request.param
    return random_model(arch, dtype)


def test_batch_composition_padding_and_place(model):
    seqs = [torch.randint(0, 301, (n,)) for n in (37, 5, 70, 16, 1)]
    with torch.no_grad(), batch_invariant():
        alone = [logprobs(model(input_ids=s[None]).logits[0]) for s in seqs]
        ids, mask = right_padded(seqs)
        batched = logprobs(model(input_ids=ids, attention_mask=mask).logits)
        flipped = logprobs(model(input_ids=ids.flip(0), attention_mask=mask.flip(0)).logits)
    for i, s in enumerate(seqs):
        assert torch.equal(batched[i, : len(s)], alone[i]), i
        assert torch.equal(flipped.flip(0)[i, : len(s)], alone[i]), i


def test_kv_cache_decode_and_chunked_prefill_match_one_forward(model):
    seq = torch.randint(0, 301, (70,))
    with torch.no_grad(), batch_invariant():
        full = logprobs(model(input_ids=seq[None]).logits[0])
        cache, steps = DynamicCache(config=model.config), []
        for t in range(len(seq)):
            out = model(input_ids=seq[None, t:t + 1], past_key_values=cache, use_cache=True)
            steps.append(logprobs(out.logits[0, -1]))
        cache, chunks = DynamicCache(config=model.config), []
        for a, b in ((0, 20), (20, 51), (51, 70)):
            out = model(input_ids=seq[None, a:b], past_key_values=cache, use_cache=True)
            chunks.append(logprobs(out.logits[0]))
    assert torch.equal(torch.stack(steps), full)
    assert torch.equal(torch.cat(chunks), full)


def test_left_padding_with_position_ids_and_batched_decode(model):
    long, short = torch.randint(0, 301, (40,)), torch.randint(0, 301, (23,))
    with torch.no_grad(), batch_invariant():
        alone_long = logprobs(model(input_ids=long[None]).logits[0])
        alone_short = logprobs(model(input_ids=short[None]).logits[0])
        ids = torch.zeros(2, 40, dtype=torch.long)
        mask = torch.zeros_like(ids)
        ids[0], mask[0] = long, 1
        ids[1, 17:], mask[1, 17:] = short, 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=model.config)
        prefill = model(input_ids=ids[:, :30], attention_mask=mask[:, :30],
                        position_ids=positions[:, :30], past_key_values=cache, use_cache=True)
        out = [logprobs(prefill.logits)]
        for t in range(30, 40):                     # then batched decode, one token a step
            step = model(input_ids=ids[:, t:t + 1], attention_mask=mask[:, :t + 1],
                         position_ids=positions[:, t:t + 1], past_key_values=cache,
                         use_cache=True)
            out.append(logprobs(step.logits))
    together = torch.cat(out, dim=1)
    assert torch.equal(together[0], alone_long)
    assert torch.equal(together[1, 17:], alone_short)


def test_a_model_loaded_from_disk_is_switched_and_restored(tmp_path):
    random_model("llama", torch.float32).save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    before = loaded.config._attn_implementation
    seq = torch.randint(0, 301, (33,))
    with torch.no_grad():
        plain = logprobs(loaded(input_ids=seq[None]).logits[0])
        with batch_invariant():
            assert loaded(input_ids=seq[None]).logits.dtype == torch.float32
            inside = logprobs(loaded(input_ids=seq[None]).logits[0])
    assert loaded.config._attn_implementation == before
    assert torch.allclose(plain, inside, atol=1e-4)    # same function, other rounding


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_learner_logprobs_do_not_depend_on_micro_batch_or_neighbours(dtype):
    model = random_model("qwen2", dtype, seed=3)
    torch.manual_seed(5)
    samples = []
    for i, (p, c) in enumerate([(7, 12), (3, 30), (11, 1), (5, 17), (9, 9), (2, 25)]):
        prompt, completion = torch.randint(0, 301, (p,)), torch.randint(0, 301, (c,))
        samples.append(Sample(
            sample_id=f"g-{i}", group_id="g", prompt_id="p", prompt_ids=tuple(prompt.tolist()),
            completion_ids_T=tuple(completion.tolist()), sampler_logprobs_T=(0.0,) * c,
            versions_T=(0,) * c, prompt_text="", completion_text="", finish_reason="stop",
            reference="", reward=0.0))
    per_sample = {}
    with torch.no_grad(), batch_invariant():
        for micro in (1, 2, 4, 6):
            order = samples if micro != 4 else samples[::-1]
            for start in range(0, len(order), micro):
                chunk = order[start:start + micro]
                lp = token_logprobs(model, collate(chunk, pad_id=0), temperature=0.7)
                for row, s in zip(lp, chunk):
                    value = row[: len(s.completion_ids_T)]
                    previous = per_sample.setdefault(s.sample_id, value)
                    assert torch.equal(previous, value), (micro, s.sample_id)


@pytest.mark.parametrize("seed", range(6))
def test_random_shapes_and_dtypes(seed):
    """Random architectures (odd head dims, GQA ratios, widths, vocabularies; fp16 too) and random
    batches: batched, permuted and KV-cache decode all equal the sequence alone."""
    import random

    rng = random.Random(seed)
    torch.manual_seed(seed)
    heads = rng.choice([1, 2, 3, 4, 6])
    config = (LlamaConfig if rng.random() < 0.5 else Qwen2Config)(
        vocab_size=rng.randint(50, 700), hidden_size=heads * rng.choice([8, 12, 24, 40]),
        intermediate_size=rng.randint(10, 300), num_hidden_layers=rng.randint(1, 3),
        num_attention_heads=heads,
        num_key_value_heads=rng.choice([h for h in (1, 2, 3, 6) if heads % h == 0]),
        max_position_embeddings=512, tie_word_embeddings=rng.random() < 0.5)
    dtype = rng.choice([torch.float32, torch.bfloat16, torch.float16])
    model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    seqs = [torch.randint(0, config.vocab_size, (rng.randint(1, 60),))
            for _ in range(rng.randint(2, 6))]
    ids, mask = right_padded(seqs)
    order = torch.randperm(len(seqs))
    with torch.no_grad(), batch_invariant():
        batched = model(input_ids=ids, attention_mask=mask).logits
        permuted = model(input_ids=ids[order], attention_mask=mask[order]).logits
        for i, s in enumerate(seqs):
            alone = model(input_ids=s[None]).logits[0]
            assert torch.equal(batched[i, : len(s)], alone), i
            assert torch.equal(permuted[int((order == i).nonzero()[0, 0]), : len(s)], alone), i
            cache, steps = DynamicCache(config=model.config), []
            for t in range(len(s)):
                out = model(input_ids=s[None, t:t + 1], past_key_values=cache, use_cache=True)
                steps.append(out.logits[0, -1])
            assert torch.equal(torch.stack(steps), alone), i
