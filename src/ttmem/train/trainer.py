"""The training loop: AdamW + warm-up/cosine, clipping, accumulation, bf16 autocast, DDP / FSDP,
atomic checkpoints, exact resume, graceful stop on SIGINT / SIGTERM, and a hard stop on NaN.

Design choices:
- Exact resume. Batches are a pure function of (seed, step, row) and the torch RNG is re-seeded
  from (seed, step, rank) at every step, so a run resumed from the checkpoint of step s replays
  steps s+1... exactly as the uninterrupted run; RNG states are also saved and restored.
- One global batch. Each process builds only its rows of the step's global batch and every
  micro-batch's summed loss is divided by the step's global number of target tokens (times the
  world size, which DDP's gradient averaging divides out), so N processes compute the same
  gradient as one process with the same `batch_size`.
- Stopping. A signal only sets a flag; after every step the flags are summed over processes so
  every process stops after the same step, then rank 0 writes a checkpoint. A non-finite loss or
  gradient stops before the optimizer step: no bad weights are ever saved, and no existing
  checkpoint is removed.
- Nothing lost, nothing silent. The run directory is locked for the whole run (`runlock`), stale
  temporary files of killed writers are removed at start, resume takes the newest checkpoint that passes
  its SHA-256 check (saying which newer ones it set aside) and refuses configuration changes that alter
  the run unless allowed (`resume`). A second SIGINT / SIGTERM stops at once (the checkpoints already
  written stay). An OS error (no space, read-only or unwritable folder) stops the run with one message
  that names the last good checkpoint, after trying to checkpoint the steps since it.
- Penalty hook. `penalty(module)`, when given, is a scalar added to the training objective once per
  optimizer step (e.g. `ttmem.optim.EWC(...).penalty` for continual learning). It is computed on the
  unwrapped module and added to the last micro-batch's loss, so under DDP every process adds the same
  term and gradient averaging leaves its gradient unchanged. The logged `loss` stays the data loss;
  the penalty is logged as `penalty`. The callable is not checkpointed: pass it again on resume.
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from ttmem.data import Corpus, CorpusWindows, MixedRows, SyntheticTask, TaskRows, get_tokenizer, load_corpus
from ttmem.data.batches import RowSource, make_batch
from ttmem.fileio import describe_os_error, remove_stale_temporaries
from ttmem.layers import NeuralMemory
from ttmem.models.checkpoint import TRAINER_STATE_FILE, shared_aliases
from ttmem.train import checkpoint as ckpt
from ttmem.train import resume as rs
from ttmem.train.config import TrainConfig, config_changes, validate
from ttmem.train.distributed import (
    DistEnv,
    all_reduce_sum,
    init_distributed,
    pick_device,
    unwrap,
    wrap_model,
)
from ttmem.train.logs import RunLogger, append_records, read_log, truncate_log
from ttmem.train.modelspec import build_from_spec
from ttmem.train.objective import lm_nll_sums, logits_of, summarize_nll, token_nll_sum
from ttmem.train.optim import apply_update, build_optimizer, clip_gradients, warmup_cosine
from ttmem.train.runlock import run_lock


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became NaN / infinite."""


class RunStorageError(OSError):
    """Writing the run's files failed (no space, read-only, permission); the message names the last
    good checkpoint."""


class ForcedStop(KeyboardInterrupt):
    """A second SIGINT / SIGTERM: the run stopped at once, without a final checkpoint."""

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = signum


@dataclass
class TrainResult:
    out_dir: Path
    step: int  # optimizer steps completed
    model: nn.Module  # the trained module (unwrapped), on its device
    model_record: dict[str, Any]
    corpus: Corpus
    checkpoint: Path | None  # newest checkpoint written
    interrupted: str | None = None  # signal name if stopped by a signal
    last_loss: float = float("nan")
    validation: dict[str, float] = field(default_factory=dict)


def build_source(config: TrainConfig, corpus: Corpus) -> RowSource:
    """Training rows: corpus windows, mixed with the synthetic `aux_task` when asked."""
    source: RowSource = CorpusWindows(corpus.train, config.seq_len, config.seed)
    if config.aux_task and config.aux_fraction > 0:
        task = SyntheticTask(config.aux_task, config.seq_len, corpus.vocab_size, get_tokenizer(config.tokenizer))
        source = MixedRows(source, TaskRows(task, config.seed), config.aux_fraction, config.seed)
    return source


def _step_seed(seed: int, step: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, 3, step, rank]).generate_state(1)[0])


def _rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "numpy": np.random.get_state()[1].tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    np.random.set_state(("MT19937", np.asarray(state["numpy"], dtype=np.uint32), 624, 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Trains `config.model` (or the given module) on `config.data`; see the module docstring."""

    def __init__(
        self,
        config: TrainConfig,
        model: nn.Module | None = None,
        corpus: Corpus | None = None,
        progress: bool = False,
        on_step: Callable[[Trainer, dict], None] | None = None,
        penalty: Callable[[nn.Module], torch.Tensor] | None = None,
    ) -> None:
        validate(config)
        self.config, self.progress, self.on_step = config, progress, on_step
        self.penalty = penalty
        self.last_penalty: float | None = None
        self.out_dir = Path(config.out_dir)
        self._stop_reason: str | None = None
        if config.threads:
            torch.set_num_threads(config.threads)
        self.device = pick_device(config.device, DistEnv())
        self.env = init_distributed(self.device.type)
        self.device = pick_device(config.device, self.env)
        per_rank = config.batch_size // self.env.world
        if config.batch_size % (self.env.world * config.grad_accum):
            raise ValueError(
                f"batch_size={config.batch_size} must be divisible by processes x grad_accum = "
                f"{self.env.world} x {config.grad_accum}"
            )
        if penalty is not None and self.env.world > 1 and config.distributed == "fsdp":
            raise ValueError("a training penalty needs whole parameters; use distributed=ddp with penalty=")
        self.rows = range(self.env.rank * per_rank, (self.env.rank + 1) * per_rank)
        self.corpus = corpus or load_corpus(
            config.data,
            config.tokenizer,
            val_fraction=config.val_fraction,
            max_bytes=config.max_bytes or None,
        )
        self.source = build_source(config, self.corpus)
        torch.manual_seed(config.seed)  # the same initial weights on every process
        if model is None:
            model, self.model_record = build_from_spec(config.model, config.model_args, self.corpus.vocab_size)
        else:
            self.model_record = {"spec": f"<{type(model).__name__} instance>", "args": {}}
        self.module = model.to(self.device)
        if config.recompute:  # activation checkpointing in every memory layer (same values)
            for layer in self.module.modules():
                if isinstance(layer, NeuralMemory):
                    layer.recompute = True
        self.tied_names = shared_aliases(self.module)  # before FSDP shards the storages that show the tying
        self.model = wrap_model(
            torch.compile(self.module) if config.compile else self.module,
            self.env,
            config.distributed,
            self.device,
        )
        betas = (float(config.betas[0]), float(config.betas[1]))
        self.optimizer = build_optimizer(config.optimizer, self.model, config.lr, config.weight_decay, betas)
        factor = warmup_cosine(config.warmup_steps, config.steps, config.min_lr_ratio)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        self.autocast_dtype = self._autocast_dtype()
        self.step = 0
        self.tokens = 0  # training tokens consumed so far (batch and length may change on resume)
        self._signals = 0
        self._notices: list[str] = []
        self._logger: RunLogger | None = None
        self._unlogged: list[dict[str, Any]] = []  # log records a resumed checkpoint carried

    # -- setup helpers -------------------------------------------------------------------------
    def _autocast_dtype(self) -> torch.dtype | None:
        precision = self.config.precision
        if precision == "auto":
            cuda_bf16 = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
            return torch.bfloat16 if cuda_bf16 else None
        return torch.bfloat16 if precision == "bf16" else None

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    def request_stop(self, reason: str) -> None:
        """Finish the current step, write a checkpoint, and return from `fit`."""
        self._stop_reason = reason

    # -- checkpoints ---------------------------------------------------------------------------
    def save(self) -> Path | None:
        """Write a checkpoint of the current step (rank 0; every process takes part in gathering)."""
        full = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state = get_model_state_dict(self.model, options=full)
        optim_state = get_optimizer_state_dict(self.model, self.optimizer, options=full)
        if not self.env.is_main:
            return None
        payload = {
            "step": self.step,
            "tokens": self.tokens,
            "model": model_state,
            "model_aliases": {k: v for k, v in self.tied_names.items() if k in model_state},
            "optimizer": optim_state,
            "scheduler": self.scheduler.state_dict(),
            "rng": _rng_state(),
            "model_record": self.model_record,
            "train_config": self.config.to_dict(),
            "world_size": self.env.world,
            "unlogged": list(self._logger.unwritten) if self._logger else [],
        }
        path = ckpt.save_checkpoint(ckpt.checkpoint_path(self.checkpoint_dir, self.step), payload)
        ckpt.prune_checkpoints(self.checkpoint_dir, self.config.keep_checkpoints)
        return path

    def _notice(self, message: str) -> None:
        """Tell the user now (a ResumeWarning) and keep it for the run's log."""
        self._notices.append(message)
        rs.notice(message)

    def _resume_target(self, resume: bool | str | Path) -> tuple[Path | None, dict[str, Any] | None]:
        """(path, payload) of the checkpoint to resume from: the newest valid one of this run (or of the
        run folder / checkpoint folder given), or the given checkpoint (directory, or an earlier version's file)."""
        given = None if resume is True else Path(resume)
        if given is not None and (given.is_file() or (given / TRAINER_STATE_FILE).is_file()):  # one checkpoint
            return given, ckpt.load_checkpoint(given)
        if given is not None and not given.exists():
            raise ValueError(f"checkpoint not found: {given}")
        folder = self.checkpoint_dir if given is None else (
            given / "checkpoints" if (given / "checkpoints").is_dir() else given
        )
        own = folder.resolve() == self.checkpoint_dir.resolve()  # only our locked folder is ours to change
        path, payload, problems = ckpt.latest_valid_checkpoint(folder, set_aside=self.env.is_main and own)
        for problem in problems:
            self._notice(problem)
        if path is None and (problems or given is not None):
            raise ValueError(
                f"{folder} holds no valid checkpoint to resume from; to start over, remove it or choose another out_dir"
            )
        if path is not None and problems:
            self._notice(f"resuming from {path}, the newest checkpoint that passes its integrity check")
        return path, payload

    def _resume(self, resume: bool | str | Path, allowed: set[str]) -> Path | None:
        path, payload = self._resume_target(resume)
        if path is None or payload is None:
            return None
        record = payload.get("model_record", {})
        if record.get("spec") != self.model_record["spec"] or record.get("args") != self.model_record["args"]:
            raise ValueError(
                f"checkpoint {path} was written for model {record.get('spec')} "
                f"{record.get('args')}, but this run builds {self.model_record['spec']} "
                f"{self.model_record['args']}"
            )
        step = int(payload["step"])
        if self.config.steps < step:  # config.yaml would claim a length the run has already passed
            raise ValueError(f"steps={self.config.steps} is below the step {step} of checkpoint {path}")
        stored = payload.get("train_config") or {}
        changes = config_changes(stored, self.config)
        rs.refuse_unallowed(changes, allowed, path, step)
        full = StateDictOptions(full_state_dict=True)
        try:
            set_model_state_dict(self.model, payload["model"], options=full)
        except (RuntimeError, KeyError) as err:
            first = str(err).strip().splitlines()[0]
            raise ValueError(f"checkpoint {path} does not match the model's weights: {first}") from err
        fresh = rs.fresh_hyperparameters(self.optimizer)
        if "optimizer" not in changes:  # a new optimizer (allowed) starts with fresh state
            try:
                set_optimizer_state_dict(self.model, self.optimizer, payload["optimizer"], options=full)
            except (RuntimeError, KeyError, ValueError) as err:
                raise ValueError(
                    f"checkpoint {path} holds optimizer state that does not fit optimizer "
                    f"'{self.config.optimizer}': {err}"
                ) from err
            self.scheduler.load_state_dict(payload["scheduler"])
        rs.apply_changes(self.optimizer, self.scheduler, fresh, changes, step)
        _set_rng_state(payload["rng"])
        self.step = step
        tokens_per_step = int(stored.get("batch_size", self.config.batch_size)) * int(
            stored.get("seq_len", self.config.seq_len)
        )
        self.tokens = int(payload.get("tokens", step * tokens_per_step))
        if changes:
            self._notice(f"resumed at step {step} with changed settings: {rs.format_changes(changes)}")
        self._changes = changes
        self._unlogged = [r for r in payload.get("unlogged", []) if r.get("step", 0) <= step]
        return path

    # -- the loop ------------------------------------------------------------------------------
    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _train_step(self) -> tuple[float, float]:
        """One optimizer step; returns (global mean loss over all processes, grad norm)."""
        cfg = self.config
        torch.manual_seed(_step_seed(cfg.seed, self.step, self.env.rank))
        micro = len(self.rows) // cfg.grad_accum
        batches = [
            make_batch(self.source, self.step, self.rows[i * micro : (i + 1) * micro]).to(self.device)
            for i in range(cfg.grad_accum)
        ]
        local_count = torch.tensor([float(sum(b.num_targets for b in batches))], dtype=torch.float64)
        global_count = float(all_reduce_sum(local_count.to(self.device), self.env).item())
        scale = self.env.world / max(global_count, 1.0)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.model.train()
        for i, batch in enumerate(batches):
            last = i == len(batches) - 1
            sync = last or not hasattr(self.model, "no_sync")
            with contextlib.nullcontext() if sync else self.model.no_sync():
                with self._autocast():
                    nll = token_nll_sum(logits_of(self.model(batch.input_ids)), batch.targets)
                objective = nll * scale
                if last and self.penalty is not None:
                    penalty = self.penalty(self.module)
                    self.last_penalty = float(penalty.detach())
                    objective = objective + penalty
                objective.backward()
            loss_sum += nll.detach().double()
        loss = float(all_reduce_sum(loss_sum, self.env)) / max(global_count, 1.0)
        grad_norm = clip_gradients(self.model, cfg.grad_clip)
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            raise self._diverged(
                f"loss={loss}, grad_norm={grad_norm}; stopped before updating the weights ({self._kept()});"
                " lower lr or check the data"
            )
        apply_update(self.optimizer, self.scheduler)
        if self._weights_not_finite():  # an optimizer can overflow on finite gradients; never checkpoint that
            raise self._diverged(
                f"the {self.config.optimizer} step made weights non-finite (loss={loss}, grad_norm={grad_norm});"
                f" {self._kept()}; lower lr"
            )
        self.step += 1
        self.tokens += cfg.batch_size * cfg.seq_len
        return loss, grad_norm

    def _diverged(self, reason: str) -> TrainingDiverged:
        return TrainingDiverged(f"training diverged at step {self.step + 1}: {reason}")

    def _kept(self) -> str:
        latest = ckpt.latest_checkpoint(self.checkpoint_dir)
        return f"last checkpoint kept: {latest}" if latest else "no checkpoint had been written yet"

    def _any_process(self, local: bool) -> bool:
        """Whether ``local`` holds on any process (the same answer on every process)."""
        flag = torch.tensor([float(local)], dtype=torch.float64, device=self.device)
        return bool(all_reduce_sum(flag, self.env)[0] > 0)

    def _weights_not_finite(self) -> bool:
        """Whether any process holds a non-finite weight (FSDP: each checks its own shard)."""
        local = (p.to_local() if hasattr(p, "to_local") else p for p in self.model.parameters())
        return self._any_process(not all(bool(torch.isfinite(t.detach()).all()) for t in local))

    def _stop_agreed(self) -> bool:
        """Whether any process was asked to stop (the same answer on every process)."""
        return self._any_process(self._stop_reason is not None)

    def validate(self) -> dict[str, float]:
        """Validation loss / bpb on the first `eval_tokens` tokens of the validation split."""
        shard = (self.env.rank, self.env.world) if self.config.distributed == "ddp" else (0, 1)
        model = unwrap(self.model) if shard[1] > 1 or not self.env.enabled else self.model
        with self._autocast():
            nll, count = lm_nll_sums(
                model, self.corpus.validation, self.config.seq_len, 8, self.config.eval_tokens, *shard
            )
        sums = (
            all_reduce_sum(torch.tensor([nll, count], dtype=torch.float64, device=self.device), self.env)
            if shard[1] > 1
            else torch.tensor([nll, count], dtype=torch.float64)
        )
        return summarize_nll(float(sums[0]), int(sums[1]), self.corpus.bytes_per_token)

    def _install_signal_handlers(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, self._on_signal)
        return previous

    def _on_signal(self, signum: int, _frame: Any) -> None:
        """First signal: stop after this step with a checkpoint. Second: stop now."""
        self._signals += 1
        name = signal.Signals(signum).name
        if self._signals > 1:
            raise ForcedStop(f"{name} again: stopped at once, without a checkpoint of this step", signum)
        self.request_stop(name)

    def fit(self, resume: bool | str | Path = False, allow_changes: Iterable[str] = ()) -> TrainResult:
        """Train to `config.steps`, resuming from the latest valid (True) or a given checkpoint / run folder.

        allow_changes: run-defining config keys that may differ from the checkpoint's run (see
        `ttmem.train.resume`); the new values are used from the resumed step on and recorded."""
        allowed = rs.check_allowed_names(allow_changes)
        with run_lock(self.out_dir) if self.env.is_main else contextlib.nullcontext():
            return self._fit(resume, allowed)

    def _start(self, resume: bool | str | Path, allowed: set[str]) -> Path | None:
        """Checks, resume, and the run's files (config, history, log) before the first step."""
        cfg, main = self.config, self.env.is_main
        if main:
            for folder in (self.checkpoint_dir, self.out_dir):
                remove_stale_temporaries(folder, all_stale=True)  # we hold the lock: nobody else writes
        if not resume and ckpt.list_checkpoints(self.checkpoint_dir):
            raise ValueError(
                f"{self.checkpoint_dir} already holds checkpoints; pass --resume to continue that run "
                "or choose another out_dir"
            )
        self._changes: dict[str, tuple[Any, Any]] = {}
        resumed_from = self._resume(resume, allowed) if resume else None
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            cfg.save(self.out_dir / "config.yaml")
            log = self.out_dir / "log.jsonl"
            if resumed_from:
                damaged = truncate_log(log, self.step)
                if damaged:
                    self._notice(f"{damaged} damaged line(s) of {log} moved to {log.name}.damaged")
                append_records(log, self._unlogged)  # what the stopped run could not write
                rs.record_history(
                    self.out_dir,
                    {
                        "event": "resume",
                        "step": self.step,
                        "checkpoint": str(resumed_from),
                        "changes": {k: list(v) for k, v in self._changes.items()},
                        "allowed": sorted(allowed & set(self._changes)),
                    },
                )
            else:
                log.unlink(missing_ok=True)
                rs.record_history(self.out_dir, {"event": "start", "step": 0, "config": cfg.to_dict()}, restart=True)
        return resumed_from

    def _fit(self, resume: bool | str | Path, allowed: set[str]) -> TrainResult:
        cfg, main = self.config, self.env.is_main
        resumed_from = self._start(resume, allowed)
        logger = RunLogger(self.out_dir, cfg.to_dict(), cfg.tensorboard, cfg.wandb) if main else None
        self._logger = logger
        if logger:
            logger.log(
                {
                    "event": "resume" if resumed_from else "start",
                    "step": self.step,
                    "checkpoint": str(resumed_from) if resumed_from else None,
                    "world_size": self.env.world,
                    "device": str(self.device),
                    "model": self.model_record["spec"],
                    "parameters": sum(p.numel() for p in self.module.parameters()),
                }
            )
            for message in self._notices:
                logger.log({"event": "warning", "step": self.step, "message": message})
        previous = self._install_signal_handlers()
        result = TrainResult(
            self.out_dir,
            self.step,
            self.module,
            self.model_record,
            self.corpus,
            ckpt.latest_checkpoint(self.checkpoint_dir),
        )
        if resumed_from and main:  # a resumed run that trains no further step still reports its last loss
            logged = [r["loss"] for r in read_log(self.out_dir / "log.jsonl") if "loss" in r]
            result.last_loss = logged[-1] if logged else result.last_loss
        bar = None
        if self.progress and main:
            from ttmem.progress import progress_bar

            desc = f"train {self.model_record['spec']}"
            bar = progress_bar(total=cfg.steps, initial=self.step, desc=desc, unit="step")
        start, start_tokens = time.perf_counter(), self.tokens
        saving = False
        try:
            while self.step < cfg.steps:
                lr = self.optimizer.param_groups[0]["lr"]
                loss, grad_norm = self._train_step()
                result.last_loss = loss
                record = {"step": self.step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens": self.tokens}
                if self.last_penalty is not None:
                    record["penalty"] = self.last_penalty
                elapsed = time.perf_counter() - start
                record["tokens_per_s"] = (self.tokens - start_tokens) / max(elapsed, 1e-9)
                if logger and (self.step % cfg.log_every == 0 or self.step == cfg.steps):
                    logger.log(record)
                if bar:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.3f}")
                if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
                    result.validation = self.validate()
                    if logger:
                        logger.log({"step": self.step, **{f"val_{k}": v for k, v in result.validation.items()}})
                if self.on_step:
                    self.on_step(self, record)
                stop = self._stop_agreed()
                if stop or self.step % cfg.ckpt_every == 0 or self.step == cfg.steps:
                    saving = True
                    result.checkpoint = self.save() or result.checkpoint
                    saving = False
                    if logger:
                        logger.log({"event": "checkpoint", "step": self.step, "path": str(result.checkpoint)})
                if stop:
                    result.interrupted = self._stop_reason or "stop requested by another process"
                    break
        except OSError as err:
            raise self._storage_error(err, try_checkpoint=not saving) from err
        except KeyboardInterrupt as err:
            if isinstance(err, ForcedStop):
                raise ForcedStop(f"{err}; {self._kept()}", err.signum) from None
            raise
        finally:
            if bar:
                bar.close()
            if logger:
                logger.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        result.step = self.step
        return result

    def _storage_error(self, err: OSError, try_checkpoint: bool) -> RunStorageError:
        """One message for an OS error during the run; first tries to checkpoint the current step
        (this succeeds when only the log's folder failed, or space came back)."""
        saved = ""
        if try_checkpoint and self.env.is_main and not self._written(self.step):
            try:
                path = self.save()
                saved = f"; the current step {self.step} was saved to {path}"
            except OSError:
                pass
        return RunStorageError(
            f"{describe_os_error(err)} (training stopped at step {self.step}{saved}; {self._kept()}; "
            "continue with --resume once fixed)"
        )

    def _written(self, step: int) -> bool:
        return ckpt.checkpoint_path(self.checkpoint_dir, step).exists()
