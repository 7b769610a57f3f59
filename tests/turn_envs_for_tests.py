"""Turn-taking envs the tests name as `env.kind=python` (importable in Ray workers: tests/ is on
PYTHONPATH in the e2e runs)."""

import time

from slipstream.envs import EnvReply, Prompt


class ScriptedEpisode:
    """Answers every turn with a numbered observation until `turns` policy turns are done."""

    def __init__(self, turns: int, raise_at: int | None, hang_at: int | None) -> None:
        self.turns, self.raise_at, self.hang_at, self.seen = turns, raise_at, hang_at, []

    def step(self, text: str) -> EnvReply:
        self.seen.append(text)
        if self.raise_at == len(self.seen):
            raise RuntimeError("scripted env failure")
        if self.hang_at == len(self.seen):
            time.sleep(5)
        if len(self.seen) >= self.turns:
            return EnvReply(done=True, info={"tool": None})
        return EnvReply(messages=({"role": "user", "content": f"observation {len(self.seen)}"},),
                        info={"tool": "script", "status": "ok"})


class ScriptedTurnEnv:
    def __init__(self, seed: int, turns: int = 3, max_turns: int = 8,
                 raise_at: int | None = None, max_turn_tokens: int | None = None,
                 hang_at: int | None = None, step_timeout_s: float | None = None) -> None:
        self.seed, self.turns, self.max_turns, self.raise_at = seed, turns, max_turns, raise_at
        self.max_turn_tokens, self.hang_at, self.step_timeout_s = max_turn_tokens, hang_at, \
            step_timeout_s
        self.name = "scripted"
        self.episodes: list[ScriptedEpisode] = []

    def prompt(self, index: int) -> Prompt:
        return Prompt(prompt_id=f"scripted-{index:06d}",
                      messages=({"role": "user", "content": f"Count to {index % 7 + 2}."},),
                      reference=str(index % 7 + 2), metadata={"env": "scripted"})

    def held_out(self, count: int) -> list[Prompt]:
        return [self.prompt(10**6 + i) for i in range(count)]

    def episode(self, prompt: Prompt) -> ScriptedEpisode:
        self.episodes.append(ScriptedEpisode(self.turns, self.raise_at, self.hang_at))
        return self.episodes[-1]


def make_env(seed: int, **options) -> ScriptedTurnEnv:
    return ScriptedTurnEnv(seed, **options)
