"""Placement and the weight-transfer choice (launch/placement.py): pure rules, no GPU needed.
What a GPU run then does with them (Ray's `num_gpus`, NCCL, CUDA IPC) is not exercised here."""

import pytest

from slipstream.errors import SlipstreamError
from slipstream.launch.cli import parse_config
from slipstream.launch.placement import CPU_DEFAULT, Placement, check_hosts, plan


def _plan(argv, cluster_gpus):
    return plan(parse_config(argv), cluster_gpus)


@pytest.mark.parametrize("argv, gpus, expected", [
    ([], 0, Placement(0, 0, CPU_DEFAULT)),
    (["--trainer.weight-transfer", "collective"], 0, Placement(0, 0, "collective")),
    (["--trainer.weight-transfer", "shm"], 0, Placement(0, 0, "shm")),
    # one GPU, one worker: colocated, CUDA IPC
    ([], 1, Placement(0.5, 0.5, "ipc")),
    # 1 learner + 7 engines
    (["--rollout.num-workers", "7"], 8, Placement(1, 1, "collective")),
    (["--rollout.num-workers", "2"], 8, Placement(1, 1, "collective")),
    # explicit, colocated on one GPU but with the broadcast
    (["--trainer.num-gpus", "0.4", "--rollout.gpus-per-worker", "0.6",
      "--trainer.weight-transfer", "collective"], 1, Placement(0.4, 0.6, "collective")),
    # deterministic mode's reference sampler takes files
    (["--deterministic", "true"], 1, Placement(0.5, 0.5, "shm")),
])
def test_plan_places_and_picks_the_transfer(argv, gpus, expected):
    placement = _plan(argv, gpus)
    assert placement == expected
    assert placement.engine_backend == {"shm": "slipstream_shm", "ipc": "ipc",
                                        "collective": "slipstream_collective"}[expected.transfer]


@pytest.mark.parametrize("argv, gpus, fragment", [
    (["--rollout.num-workers", "3"], 2, "3 rollout workers need 4 GPUs"),
    (["--trainer.num-gpus", "1", "--rollout.num-workers", "7", "--rollout.gpus-per-worker",
      "1"], 4, "asks Ray for 8 GPUs"),
    (["--trainer.weight-transfer", "ipc"], 0, "ipc needs the learner and one engine on the "
                                               "same GPU"),
    (["--trainer.weight-transfer", "ipc", "--rollout.num-workers", "2"], 8, "same GPU"),
    (["--deterministic", "true", "--trainer.weight-transfer", "collective"], 0,
     "takes weights by file only"),
])
def test_what_cannot_run_stops_in_one_line(argv, gpus, fragment):
    with pytest.raises(SlipstreamError, match=fragment) as error:
        _plan(argv, gpus)
    assert "\n" not in str(error.value)


def test_a_one_host_transfer_refuses_an_engine_on_another_node():
    check_hosts("collective", "node-a", ["node-a", "node-b"])      # any node: fine
    check_hosts("shm", "node-a", ["node-a", "node-a"])
    for transfer in ("shm", "ipc"):
        with pytest.raises(SlipstreamError, match="rollout worker 1 runs on node node-b: use "
                                                  "trainer.weight_transfer collective"):
            check_hosts(transfer, "node-a", ["node-a", "node-b"])


def test_a_bad_transfer_name_is_refused_by_the_config():
    with pytest.raises(SlipstreamError, match="trainer.weight_transfer"):
        parse_config(["--trainer.weight-transfer", "nccl"])


def test_the_log_line_says_where_and_how():
    assert Placement(0, 0, "collective").describe(2) == \
        "learner on CPU, 2 engine(s) on CPU each; weights move by collective (gloo)"
    assert Placement(1, 1, "collective").describe(7) == \
        "learner on 1 GPU, 7 engine(s) on 1 GPU each; weights move by collective (NCCL)"
    assert Placement(0.5, 0.5, "ipc").describe(1).endswith("weights move by ipc")


def test_numbers_the_machine_or_the_model_cannot_hold_stop_in_one_line(tmp_path):
    from slipstream.launch.placement import check_machine

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"max_position_embeddings": 512}')
    check_machine(parse_config(["--model.max-model-len", "512"]), str(model), 2, 24.0)
    for argv, fragment in [
            (["--trainer.threads", "3"], "trainer.threads 3 exceeds this machine's 2 CPU cores"),
            (["--rollout.kv-cache-gb", "12", "--rollout.num-workers", "2"],
             "= 24 GiB of KV cache; this machine has 24 GiB in all"),
            (["--model.max-model-len", "1024"], "exceeds the model's own context (512")]:
        with pytest.raises(SlipstreamError, match=fragment.replace("(", r"\(")):
            check_machine(parse_config(argv), str(model), 2, 24.0)
    check_machine(parse_config(["--model.max-model-len", "9999"]), "org/hub-model", 2, 24.0)


@pytest.mark.parametrize("name", ["/no/such/model", "./no-such", "~/no-such", "models/a/b",
                                  "dir/", "a\\b", ""])
def test_a_model_that_looks_local_but_is_missing_is_not_taken_for_a_hub_name(name):
    from slipstream.launch.models import resolve_model

    with pytest.raises(SlipstreamError, match="does not exist|is empty"):
        resolve_model(name)
    assert resolve_model("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"


def test_auto_threads_give_the_learner_the_cores_the_engines_left_idle():
    from slipstream.launch.placement import LearnerThreads

    threads = LearnerThreads(cores=2, engine_cores=1)
    assert threads.current == 2                     # unmeasured: every core
    assert threads.observe(idle_s=0.0, now=100.0) is None and threads.current == 2
    assert threads.observe(idle_s=16.0, now=120.0) == 0.8 and threads.current == 2
    assert threads.observe(idle_s=20.0, now=140.0) == 0.2 and threads.current == 1
    assert threads.observe(idle_s=25.0, now=160.0) == 0.25 and threads.current == 1
    assert threads.observe(idle_s=31.0, now=180.0) == 0.3 and threads.current == 2
    many = LearnerThreads(cores=16, engine_cores=4)
    many.observe(0.0, 0.0)
    many.observe(5.0, 10.0)                         # half idle: 2 of the 4 engine cores busy
    assert many.current == 14


def test_fixed_threads_never_change_but_the_idle_share_is_still_measured():
    from slipstream.launch.placement import LearnerThreads

    threads = LearnerThreads(cores=2, engine_cores=1, fixed=1)
    threads.observe(0.0, 0.0)
    assert threads.observe(10.0, 10.0) == 1.0 and threads.current == 1


def test_deterministic_mode_keeps_auto_threads_at_one():
    """A thread count that varied by step would change the bits of the gradient norm."""
    from slipstream.launch.config import RunConfig
    from slipstream.launch.placement import LearnerThreads

    threads = LearnerThreads.for_run(RunConfig(deterministic=True))
    threads.observe(0.0, 0.0)
    threads.observe(10.0, 10.0)                     # an idle engine changes nothing
    assert threads.current == 1
    assert LearnerThreads.for_run(RunConfig()).fixed is None
