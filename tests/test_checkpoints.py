"""Crash-consistent checkpoints (trainer/checkpoints.py) with a real DeepSpeed engine on the
CPU: whole or known incomplete, the newest complete one found, only the last K kept."""

from pathlib import Path

import pytest
import torch

from slipstream.trainer.checkpoints import (MANIFEST, complete_checkpoints, is_complete,
                                            latest_complete, save_checkpoint)


@pytest.fixture(scope="module")
def engine():
    import deepspeed

    from slipstream.trainer.learner import init_world_of_one

    init_world_of_one()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 1))
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-2),
        config={"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 1},
                "steps_per_print": 2**31 - 1}, dist_init_required=True)
    return engine


def _step(engine) -> None:
    loss = engine(torch.randn(4, 8)).pow(2).mean()
    engine.backward(loss)
    engine.step()


def test_a_saved_checkpoint_is_whole_named_latest_and_loads_back(engine, tmp_path):
    _step(engine)
    folder = save_checkpoint(engine, tmp_path, "step-000001", {"step": 1}, keep=2)
    assert folder == tmp_path / "step-000001" and is_complete(folder)
    assert (tmp_path / "latest").read_text() == "step-000001"
    assert not list(tmp_path.glob(".*"))               # no partial folder or temp file left
    saved = {n: p.detach().clone() for n, p in engine.module.named_parameters()}
    _step(engine)
    _, client = engine.load_checkpoint(str(tmp_path), tag="step-000001")
    assert client["step"] == 1
    assert all(torch.equal(p, saved[n]) for n, p in engine.module.named_parameters())


def test_only_the_last_k_are_kept(engine, tmp_path):
    for step in range(1, 5):
        _step(engine)
        save_checkpoint(engine, tmp_path, f"step-{step:06d}", {"step": step}, keep=2)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step-000003", "step-000004"]
    # DeepSpeed also drops its conversion scripts (zero_to_fp32.py ...) beside them.
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".py") == [
        "latest", "step-000003", "step-000004"]


def test_a_truncated_or_unfinished_checkpoint_is_passed_over_with_a_warning(engine, tmp_path,
                                                                            capsys):
    for step in (1, 2):
        _step(engine)
        save_checkpoint(engine, tmp_path, f"step-{step:06d}", {"step": step}, keep=3)
    newest = tmp_path / "step-000002"
    victim = max((p for p in newest.rglob("*.pt")), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])   # cut by hand
    (tmp_path / "step-000003").mkdir()            # killed before its manifest was written
    assert latest_complete(tmp_path) == tmp_path / "step-000001"
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == 2 and all("is incomplete" in w for w in warnings)
    (newest / MANIFEST).write_text("{not json")
    assert not is_complete(newest)
    assert latest_complete(Path(tmp_path / "nowhere")) is None
