"""Evaluation: perplexity / bits per byte, recall on MQAR and the needle task, lm-eval adapter."""

from ttmem.eval.metrics import evaluate_lm, lm_nll_sums, logits_of, summarize_nll, token_nll_sum

__all__ = ["evaluate_lm", "lm_nll_sums", "logits_of", "summarize_nll", "token_nll_sum"]
