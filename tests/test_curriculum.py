"""The edge-of-competence curriculum on synthetic pass rates (envs/curriculum.py)."""

import json
from collections import Counter

import pytest

from slipstream.envs import Prompt
from slipstream.envs.curriculum import (CurriculumConfig, EdgeCurriculum, bucket_status,
                                        pass_rates)
from slipstream.errors import SlipstreamError


class LevelledEnv:
    """Prompt i has level i % 3 (its metadata), like a multi-difficulty procedural env."""

    name = "levelled"

    def prompt(self, index: int) -> Prompt:
        return Prompt(f"p{index}", ({"role": "user", "content": str(index)},), "0",
                      {"level": index % 3})

    def held_out(self, count: int):
        return []


CONFIG = CurriculumConfig(kind="edge", window=4, min_groups=2, mastered_pass1=0.9, reprobe=0.1,
                          discover=30)


def _feed(curriculum, level: int, successes: list[list[bool]]) -> None:
    for k, group in enumerate(successes):
        curriculum.observe(-1 - k, [1.0 if s else 0.0 for s in group], {"level": level})


@pytest.mark.parametrize("window, status", [
    ([[True, False]], "new"),                                   # fewer than min_groups
    ([[True] * 4, [True, True, True, True]], "mastered"),
    ([[True] * 4, [True, True, True, False]], "mastered"),      # pass@1 7/8 >= 0.85
    ([[False] * 4, [False] * 4], "unsolved"),
    ([[False, False, True, False], [False] * 4], "edge"),       # pass@1 1/8, pass@k 1/2
])
def test_bucket_status_by_hand(window, status):
    config = CONFIG.model_copy(update={"mastered_pass1": 0.85})   # 7/8 = 0.875 is mastered
    assert bucket_status(window, config) == status


def test_pass_rates_by_hand():
    assert pass_rates([[True, False], [False, False]]) == (0.25, 0.5)
    assert pass_rates([]) is None


def test_edge_buckets_are_drawn_most_and_retired_ones_reprobed():
    curriculum = EdgeCurriculum(CONFIG, LevelledEnv(), seed=0)
    assert curriculum.buckets == ["0", "1", "2"]
    _feed(curriculum, 0, [[True] * 4] * 4)                          # mastered
    _feed(curriculum, 1, [[True, False, False, False]] * 4)         # edge: pass@1 .25, pass@k 1
    _feed(curriculum, 2, [[False] * 4] * 4)                         # unsolved
    assert curriculum.weights() == {"0": 0.1, "1": 1.0, "2": 0.1}
    picks = Counter(LevelledEnv().prompt(curriculum.index_for(t)).metadata["level"]
                    for t in range(2000))
    # Expected shares 1/1.2 = 0.83 and 0.1/1.2 = 0.083 each; 2000 draws: a few points of noise.
    assert 0.78 < picks[1] / 2000 < 0.88 and picks[0] > 100 and picks[2] > 100
    metrics = curriculum.metrics()
    assert metrics["curriculum/1/pass1"] == 0.25 and metrics["curriculum/1/passk"] == 1.0
    assert metrics["curriculum/1/picks"] == picks[1]


def test_each_ticket_gets_one_fresh_prompt_of_its_bucket():
    curriculum = EdgeCurriculum(CONFIG, LevelledEnv(), seed=1)
    indices = [curriculum.index_for(t) for t in range(300)]
    assert len(set(indices)) == 300                                  # no prompt twice
    assert [curriculum.index_for(t) for t in range(300)] == indices   # stable per ticket
    curriculum.observe(5, [1.0], {"level": indices[5] % 3})
    assert curriculum.index_for(5) != indices[5]                     # finished: a new pick


def test_the_window_lets_a_bucket_move_from_edge_to_mastered():
    curriculum = EdgeCurriculum(CONFIG, LevelledEnv(), seed=0)
    _feed(curriculum, 1, [[True, False, False, False]] * 4)
    assert curriculum.weights()["1"] == 1.0
    _feed(curriculum, 1, [[True] * 4] * 4)                          # the old groups drop out
    assert curriculum.weights()["1"] == 0.1


def test_state_round_trips_through_json_and_picks_go_on_the_same():
    first = EdgeCurriculum(CONFIG, LevelledEnv(), seed=3)
    _feed(first, 1, [[True, False]] * 3)
    held = [first.index_for(t) for t in range(10)]
    state = json.loads(json.dumps(first.state()))
    second = EdgeCurriculum(CONFIG, LevelledEnv(), seed=99)
    second.restore(state)
    assert [second.index_for(t) for t in range(10)] == held           # tickets in flight kept
    assert [second.index_for(t) for t in range(10, 60)] == \
        [first.index_for(t) for t in range(10, 60)]


def test_a_key_no_prompt_has_is_one_line():
    with pytest.raises(SlipstreamError, match="curriculum.key 'task' is in no prompt"):
        EdgeCurriculum(CONFIG.model_copy(update={"key": "task"}), LevelledEnv(), seed=0)


EXPLORING = CONFIG.model_copy(update={"explore_k": 16})


def test_exploration_draws_only_unsolved_buckets_and_keeps_only_a_success():
    curriculum = EdgeCurriculum(EXPLORING, LevelledEnv(), seed=0)
    assert curriculum.explore_index() is None            # every bucket new: nothing unsolved
    _feed(curriculum, 0, [[True, False]] * 2)            # edge
    _feed(curriculum, 1, [[True] * 2] * 2)               # mastered
    _feed(curriculum, 2, [[False] * 2] * 2)              # unsolved
    explored = [curriculum.explore_index() for _ in range(5)]
    assert [i % 3 for i in explored] == [2] * 5 and len(set(explored)) == 5
    # A group without a success is discarded: the bucket stays unsolved.
    assert not curriculum.observe_exploration(explored[0], [0.0] * 16, {"level": 2})
    assert curriculum.weights()["2"] == 0.1
    # One success keeps it: the bucket is at the edge, and its prompt is the next ticket's.
    assert curriculum.observe_exploration(explored[1], [0.0] * 15 + [1.0], {"level": 2})
    assert curriculum.weights()["2"] == 1.0
    assert curriculum.index_for(100) == explored[1]
    assert curriculum.index_for(101) not in explored     # the found queue is spent
    metrics = curriculum.metrics()
    assert (metrics["curriculum/explore/groups"], metrics["curriculum/explore/kept"]) == (2, 1)


def test_exploration_leaves_the_regular_draws_as_they_were():
    plain, exploring = (EdgeCurriculum(c, LevelledEnv(), seed=5) for c in (CONFIG, EXPLORING))
    for curriculum in (plain, exploring):
        _feed(curriculum, 2, [[False] * 2] * 2)
    exploring.explore_index()                            # takes a level-2 prompt off the stream
    levels = [[c._env.prompt(c.index_for(t)).metadata["level"] for t in range(40)]
              for c in (plain, exploring)]
    assert levels[0] == levels[1]
    assert "curriculum/explore/groups" not in plain.metrics()


def test_exploration_state_survives_a_checkpoint():
    first = EdgeCurriculum(EXPLORING, LevelledEnv(), seed=2)
    _feed(first, 0, [[False] * 2] * 2)
    _feed(first, 2, [[False] * 2] * 2)
    first.observe_exploration(first.explore_index(), [0.0] * 16, {"level": 0})
    second = EdgeCurriculum(EXPLORING, LevelledEnv(), seed=7)
    second.restore(json.loads(json.dumps(first.state())))
    picks = [first.explore_index() for _ in range(8)]
    assert [second.explore_index() for _ in range(8)] == picks
    assert {i % 3 for i in picks} == {0, 2}              # the generator chose, and alike
    found = picks[0]
    first.observe_exploration(found, [1.0] + [0.0] * 15, {"level": found % 3})
    third = EdgeCurriculum(EXPLORING, LevelledEnv(), seed=7)
    third.restore(json.loads(json.dumps(first.state())))
    assert third.index_for(0) == found
    assert (third.metrics()["curriculum/explore/groups"],
            third.metrics()["curriculum/explore/kept"]) == (2, 1)
