"""An adapter so lm-evaluation-harness can score ttmem models (its `LM` interface).

Design: `HarnessAdapter` implements the three request types on any causal model with plain torch and
does not import lm-eval, so it works (and is tested) without the optional extra;
`lm_eval_model` wraps it in a subclass of lm-eval's `LM` for `lm_eval.simple_evaluate`. Requests
are scored one at a time, truncated from the left to `max_length` tokens. Rolling log-likelihood
cuts the text into consecutive windows of at most `max_length` predicted tokens, each predicted
with up to `max_length` preceding tokens as context; the first token is predicted after
`prefix_token` (a newline byte by default, as bytes have no end-of-text token).

An exported ttmem model (`ttmem export`, see `ttmem.hf`) is scored identically by lm-eval's standard `hf`
backend; this adapter remains for what does not export: any `nn.Module` (custom model factories) and models
trained with tiktoken or sentencepiece tokenizers.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ttmem.data import Tokenizer, get_tokenizer
from ttmem.eval.generation import sample
from ttmem.train.objective import logits_of, model_device


def _args(request: Any) -> tuple:
    return tuple(request.args) if hasattr(request, "args") else tuple(request)


class HarnessAdapter:
    """loglikelihood / loglikelihood_rolling / generate_until for a model + tokenizer."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: str | Tokenizer = "bytes",
        max_length: int = 1024,
        prefix_token: int = 10,
    ) -> None:
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        self.model = model.eval()
        self.tok = get_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
        self.max_length, self.prefix_token = max_length, prefix_token

    @torch.no_grad()
    def _score(self, inputs: list[int], targets: list[int]) -> tuple[float, bool]:
        """Log-probability of `targets`, which are the last len(targets) tokens following `inputs`'s
        positions: targets[i] is predicted at inputs position len(inputs) - len(targets) + i."""
        ids = torch.tensor([inputs], dtype=torch.long, device=model_device(self.model))
        logits = logits_of(self.model(ids))[0, -len(targets) :].float()
        logprobs = F.log_softmax(logits, dim=-1)
        tgt = torch.tensor(targets, dtype=torch.long, device=logits.device)
        total = float(logprobs.gather(-1, tgt[:, None]).sum())
        return total, bool((logits.argmax(-1) == tgt).all())

    def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
        """[(log P(continuation | context), whether greedy decoding yields the continuation)]."""
        out = []
        for request in requests:
            context, continuation = _args(request)[:2]
            ctx = [int(t) for t in self.tok.encode(context)] or [self.prefix_token]
            cont = [int(t) for t in self.tok.encode(continuation)]
            if not cont:
                raise ValueError("loglikelihood needs a non-empty continuation")
            full = (ctx + cont)[-(self.max_length + 1) :]
            out.append(self._score(full[:-1], cont[-(len(full) - 1) :]))
        return out

    def loglikelihood_rolling(self, requests: list[Any]) -> list[float]:
        """[log P(text)] summed over all tokens of each text (see the module docstring)."""
        out = []
        for request in requests:
            tokens = [int(t) for t in self.tok.encode(_args(request)[0])]
            full = [self.prefix_token, *tokens]  # token i sits at full[i + 1]
            total = 0.0
            for start in range(0, len(tokens), self.max_length):
                end = min(start + self.max_length, len(tokens))
                first = max(0, end - self.max_length)
                total += self._score(full[first:end], tokens[start:end])[0]
            out.append(total)
        return out

    def generate_until(self, requests: list[Any]) -> list[str]:
        """Greedy (or sampled, if gen_kwargs has temperature > 0) continuations cut at `until`."""
        out = []
        for request in requests:
            context, gen_kwargs = _args(request)[:2]
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(gen_kwargs.get("max_gen_toks", 256))
            temperature = (
                float(gen_kwargs.get("temperature", 0.0)) if gen_kwargs.get("do_sample", True) else 0.0
            )
            ctx = ([int(t) for t in self.tok.encode(context)] or [self.prefix_token])[-self.max_length :]
            ids = sample(self.model, torch.tensor([ctx]), max_new, temperature)
            text = self.tok.decode(ids[0, len(ctx) :].tolist())
            cuts = [text.index(stop) for stop in until if stop and stop in text]
            out.append(text[: min(cuts)] if cuts else text)
        return out


def lm_eval_model(model: nn.Module, tokenizer: str | Tokenizer = "bytes", max_length: int = 1024) -> Any:
    """An lm-eval `LM` instance scoring `model` (needs `pip install 'ttmem[lm-eval]'`)."""
    try:
        base = importlib.import_module("lm_eval.api.model").LM
    except ImportError as err:
        raise ValueError(
            "the lm-eval adapter needs lm-evaluation-harness: pip install 'ttmem[lm-eval]'"
        ) from err

    class TtmemLM(base):
        def __init__(self) -> None:
            base.__init__(self)
            self._adapter = HarnessAdapter(model, tokenizer, max_length)

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return self._adapter.loglikelihood(requests)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return self._adapter.loglikelihood_rolling(requests)

        def generate_until(self, requests, disable_tqdm: bool = False):
            return self._adapter.generate_until(requests)

    return TtmemLM()
