"""The scheduler of a small multi-user serving engine, with or without a shared prefix cache.

Modes:
- "shared": one prefix cache for all users (a token trie of prefill states, LRU-bounded) and a
  longest-prefix-first scheduler: each round sorts the waiting requests by the length of their
  cached prefix (ties by arrival), takes up to ``max_batch`` of them and answers them in that order.
  This is the design PROMPTPEEK (Wu et al., NDSS 2025) attacks.
- "isolated": no cross-user sharing; each user owns one state slot (fixed size with a θ-memory
  backend); requests run first come, first served. ``session="continue"`` resumes the user's slot.

The cache stores prompt prefills only (generated tokens are not inserted). A request reuses at most
``len(prompt) - 1`` cached tokens, since the last prompt token must run to produce logits. With a
backend whose states cannot be cut to a prefix, only exactly cached prompts are reused. Decoding is
greedy. One worker thread runs the requests; ``server`` puts HTTP in front of it and ``client``
talks to that.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from ttmem.security.backends import Backend, check_tokens
from ttmem.security.prefix_cache import PrefixCache

MODES = ("shared", "isolated")


@dataclass
class _Request:
    user: str
    prompt: list[int]
    max_new_tokens: int
    session: str
    arrival: int
    future: Future = field(default_factory=Future)


class QueueFull(RuntimeError):
    """The engine's waiting queue is at its bound."""


class ServingEngine:
    """Schedules generation requests from several users over one backend (see module docstring)."""

    def __init__(
        self,
        backend: Backend,
        mode: str = "shared",
        max_batch: int = 64,
        max_queue: int = 256,
        max_prompt_tokens: int = 4096,
        max_new_tokens: int = 256,
        cache_entries: int = 1024,
        max_users: int = 1024,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not isinstance(backend, Backend):
            raise TypeError("backend must implement the Backend protocol (initial_state, extend, slice_state)")
        bounds = dict(max_batch=max_batch, max_queue=max_queue, max_prompt_tokens=max_prompt_tokens,
                      max_new_tokens=max_new_tokens, max_users=max_users)  # cache_entries: PrefixCache checks it
        for name, value in bounds.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.backend, self.mode = backend, mode
        self.max_batch, self.max_queue = max_batch, max_queue
        self.max_prompt_tokens, self.max_new_tokens, self.max_users = (
            max_prompt_tokens,
            max_new_tokens,
            max_users,
        )
        self.cache = PrefixCache(backend, cache_entries) if mode == "shared" else None
        self.user_states: OrderedDict[str, Any] = OrderedDict()
        self._queue: list[_Request] = []
        self._cond = threading.Condition()
        self._arrivals = 0
        self._stopping = False
        self._worker: threading.Thread | None = None
        self.served = 0

    def validate(self, user: Any, prompt: Any, max_new_tokens: Any = 1, session: Any = "new") -> _Request:
        """Check a request's fields; raises TypeError/ValueError naming the bad field."""
        if not isinstance(user, str) or not 0 < len(user) <= 128:
            raise ValueError("user must be a non-empty string of at most 128 characters")
        tokens = check_tokens(prompt, self.backend.vocab_size, "prompt")
        if len(tokens) > self.max_prompt_tokens:
            raise ValueError(f"prompt must have at most {self.max_prompt_tokens} tokens, got {len(tokens)}")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
            raise TypeError("max_new_tokens must be an int")
        if not 1 <= max_new_tokens <= self.max_new_tokens:
            raise ValueError(f"max_new_tokens must be in [1, {self.max_new_tokens}], got {max_new_tokens}")
        if session not in ("new", "continue"):
            raise ValueError(f"session must be 'new' or 'continue', got {session!r}")
        return _Request(user, tokens, max_new_tokens, session, 0)

    def submit(self, user: str, prompt: Sequence[int], max_new_tokens: int = 1, session: str = "new") -> Future:
        """Queue a request; the future resolves to ``{"tokens": [...]}``. Raises QueueFull at the bound."""
        req = self.validate(user, prompt, max_new_tokens, session)
        with self._cond:
            if self._stopping:
                raise RuntimeError("engine is stopped")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"queue holds {self.max_queue} requests")
            req.arrival, self._arrivals = self._arrivals, self._arrivals + 1
            self._queue.append(req)
            self._cond.notify()
        return req.future

    def generate(self, user: str, prompt: Sequence[int], max_new_tokens: int = 1, session: str = "new") -> dict:
        return self.submit(user, prompt, max_new_tokens, session).result(timeout=60)

    def start(self) -> ServingEngine:
        if self._worker is None:
            self._worker = threading.Thread(target=self._loop, name="ttmem-serving", daemon=True)
            self._worker.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the worker; requests still waiting fail with RuntimeError."""
        with self._cond:
            self._stopping = True
            pending, self._queue = self._queue, []
            self._cond.notify_all()
        for req in pending:
            req.future.set_exception(RuntimeError("engine stopped"))
        if self._worker is not None:
            self._worker.join(timeout)

    def _priority(self, req: _Request) -> tuple[int, int]:
        cached = self.cache.match_length(req.prompt, len(req.prompt) - 1) if self.cache is not None else 0
        return (-cached, req.arrival)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait(0.1)
                if self._stopping:
                    return
                self._queue.sort(key=self._priority)  # longest cached prefix first; FIFO in isolated mode
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            for req in batch:
                try:
                    req.future.set_result(self._run(req))
                except Exception as exc:  # a failing request must not stop the engine
                    req.future.set_exception(exc)
                self.served += 1

    def _run(self, req: _Request) -> dict:
        backend = self.backend
        if self.cache is not None:
            start, state = self.cache.lookup(req.prompt, len(req.prompt) - 1)
            state = backend.initial_state() if state is None else state
        else:
            start = 0
            resume = req.session == "continue" and req.user in self.user_states
            state = self.user_states[req.user] if resume else backend.initial_state()
        state, logits = backend.extend(state, req.prompt[start:])
        if self.cache is not None:
            self.cache.insert(req.prompt, state)
        tokens = []
        for i in range(req.max_new_tokens):
            tokens.append(int(logits.argmax()))
            if i + 1 < req.max_new_tokens or self.cache is None:
                state, logits = backend.extend(state, tokens[-1:])
        if self.cache is None:
            self.user_states[req.user] = state
            self.user_states.move_to_end(req.user)
            while len(self.user_states) > self.max_users:
                self.user_states.popitem(last=False)
        return {"tokens": tokens}
