"""What the pipeline writes for the inspector: per-token loss records, token strings, the index."""

import json
import math

import torch

from factories import make_sample
from slipstream.buffer.records import TrainedSample, to_json_dict
from slipstream.buffer.rollout_log import deterministic_gap_tokens, index_row, write_step
from slipstream.trainer.losses import GRPOLossConfig, LossInputs, compute_loss
from slipstream.trainer.losses.base import token_records


def _inputs(trainer, sampler, advantages, mask=None):
    trainer = torch.tensor(trainer, dtype=torch.float32)
    mask = torch.ones_like(trainer, dtype=torch.bool) if mask is None else torch.tensor(mask)
    per_token = torch.tensor(advantages, dtype=torch.float32).unsqueeze(-1).expand_as(trainer)
    return LossInputs(trainer, torch.tensor(sampler, dtype=torch.float32), per_token, mask, None,
                      int(mask.sum()), len(advantages))


def test_ppo_clip_masks_exactly_the_tokens_whose_clipped_branch_won():
    # ratios exp(0.5)=1.65 (above 1.2) and exp(-0.5)=0.61 (below 0.8), 1, then padding.
    inputs = _inputs([[0.0, -1.0, -1.0, 0.0]], [[-0.5, -0.5, -1.0, 0.0]], [1.0],
                     mask=[[True, True, True, False]])
    out = compute_loss(inputs, GRPOLossConfig())
    [record] = token_records(out, [3])
    # A > 0: the high ratio is clipped (no gradient), the low one is not (min picks it).
    assert record["mask_reasons_T"] == ("ppo_clip", "", "")
    assert record["masked_T"] == (True, False, False)
    assert record["importance_weights_T"][0] == torch.tensor(1.2, dtype=torch.float32).item()
    assert record["importance_weights_T"][1] == torch.exp(torch.tensor(-0.5)).item()
    assert record["importance_weights_T"][2] == 1.0
    # The same tokens with A < 0: now the low ratio is the clipped one.
    out = compute_loss(_inputs([[0.0, -1.0, -1.0]], [[-0.5, -0.5, -1.0]], [-1.0]),
                       GRPOLossConfig())
    assert token_records(out, [3])[0]["mask_reasons_T"] == ("", "ppo_clip", "")


def test_tis_reports_truncated_weights_without_masking_them():
    out = compute_loss(_inputs([[0.0, -1.0]], [[-1.0, -1.0]], [1.0]),
                       GRPOLossConfig(correction={"tis": "token", "tis_cap": 2.0}))
    [record] = token_records(out, [2])
    assert record["mask_reasons_T"] == ("tis_truncated", "")
    assert record["masked_T"] == (False, False)
    assert record["importance_weights_T"] == (2.0, 1.0)


def test_zero_gap_stays_exactly_zero_through_the_record_and_index(tmp_path):
    sampler = [-0.1 / 3, -1e-17, -12.345678901234567]
    sample = make_sample(versions=(1, 1, 1), logprobs=sampler)
    trainer = (sampler[0], sampler[1] + 1e-18, sampler[2] - 0.25)
    trained = TrainedSample(sample, step=2, learner_version=1, advantage=0.5,
                            trainer_logprobs_T=trainer)
    write_step(tmp_path, 2, [trained])
    [row] = [json.loads(line) for line in (tmp_path / "index.jsonl").read_text().splitlines()]
    with (tmp_path / row["file"]).open("rb") as handle:
        handle.seek(row["offset"])
        record = json.loads(handle.read(row["bytes"]))
    assert record["trainer_logprobs_T"][0] - record["sample"]["sampler_logprobs_T"][0] == 0.0
    assert record["trainer_logprobs_T"] == list(trainer)
    assert row["max_gap"] == abs(trainer[2] - sampler[2])
    expected_k3 = sum(math.expm1(t - s) - (t - s) for t, s in zip(trainer, sampler)) / 3
    assert row["k3"] == expected_k3
    assert (row["len"], row["staleness"], row["versions"], row["step"]) == (3, 0, 1, 2)
    assert (row["det_tokens"], row["det_nonzero"]) == (3, 2)   # a 1e-18 gap is not 0


def test_deterministic_count_follows_reproducible_tokens_only():
    sample = make_sample(versions=(2, 1, 2, 2), logprobs=[-1.0, -1.0, -1.0, -1.0])
    record = to_json_dict(TrainedSample(sample, 3, 2, 0.0, (-1.0, -2.0, -2.0, -1.0)))
    assert deterministic_gap_tokens(record) == (1, 0)   # KV kept: token 1 and later attend to v1
    record["own_version_logprobs_T"] = [-1.0, -1.5, -1.0, -1.0]
    assert deterministic_gap_tokens(record) == (1, 0)   # still only the unchanged prefix
    record["sample"]["prefix_recomputed"] = True         # the reference sampler: every token
    assert deterministic_gap_tokens(record) == (4, 1)
    record["own_version_logprobs_T"] = None               # without own: the learner's version
    assert deterministic_gap_tokens(record) == (3, 1)


def test_index_row_of_a_record_without_loss_fields():
    record = to_json_dict(TrainedSample(make_sample(versions=(0, 1)), 2, 1, 0.0, (-0.5, -0.5)))
    for key in ("importance_weights_T", "masked_T", "mask_reasons_T", "reuse_count"):
        record.pop(key)
    row = index_row(record, "step-000002.jsonl", 0, 10)
    assert row["max_iw"] is None and row["masked"] == 0 and row["reasons"] == {}
    assert row["staleness"] == 1 and row["versions"] == 2 and row["reuse"] == 0


def test_token_texts_concatenate_to_the_decoding_and_keep_multibyte_characters(tmp_path):
    import slipstream  # noqa: F401  (hides the broken torchvision before transformers loads)
    from transformers import AutoTokenizer

    from slipstream.launch.models import make_tiny_model
    from slipstream.rollout.group import token_texts

    tokenizer = AutoTokenizer.from_pretrained(make_tiny_model(tmp_path / "m"))
    text = "héllo 日本 🙂 <script>alert(1)</script> 12 + 34"
    ids = tuple(tokenizer(text, add_special_tokens=False)["input_ids"])
    texts = token_texts(tokenizer, ids)
    assert len(texts) == len(ids)
    assert "".join(texts) == tokenizer.decode(ids) == text
    assert "\ufffd" not in "".join(texts) and "日" in texts and "🙂" in texts
