"""Evaluation: bits per byte, recall on MQAR and the needle task, trained models back from disk and
compared (`pipeline`), the main job's report and plots (`report`), the lm-eval adapter.

The language-modelling loss and its validation measures are the training objective's
(`ttmem.train.objective`); they are re-exported here because evaluation reports them."""

from ttmem.train.objective import evaluate_lm, lm_nll_sums, logits_of, summarize_nll, token_nll_sum

__all__ = ["evaluate_lm", "lm_nll_sums", "logits_of", "summarize_nll", "token_nll_sum"]
