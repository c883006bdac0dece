"""The `ttmem` command: train, eval, generate, bench, info, export, audit, serve, demo. The project's one
command-line entry (`python -m ttmem` runs it too); it only parses arguments and calls the library.

One error boundary (`main` -> `_failure`) turns every expected failure into one line on stderr that
says what to do: user errors (bad names, paths, config keys, checkpoints, a diverged run) exit 2; the
environment's failures (no space, a read-only or unwritable folder, a run directory locked by another
run, a missing optional package) exit 1; Ctrl-C exits 130, whenever it comes (imports included). The
library guarantees that none of these loses a checkpoint already written. Warnings print as one line
each. Set TTMEM_DEBUG=1 to see tracebacks. A run stopped by SIGINT / SIGTERM exits 128 + signal
number after writing its checkpoint; a second signal stops it at once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

USAGE_ERROR = 2
ENVIRONMENT_ERROR = 1


class _ArgumentsError(ValueError):
    """A command line argparse rejects; `prog` is the (sub)command it belongs to."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """argparse whose errors reach the error boundary (one line, exit 2) instead of printing the usage."""

    def error(self, message: str) -> NoReturn:
        raise _ArgumentsError(self.prog, f"{message} (see '{self.prog} --help')")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ttmem", description="Test-time memory models: train, evaluate, use."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser(
        "train", help="train a model (no arguments: the main job, Titans LMM vs sliding-window baseline)"
    )
    train.add_argument("settings", nargs="*", help="key=value overrides of the training config")
    train.add_argument("--config", help="YAML or TOML config file")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    train.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in out_dir")
    train.add_argument(
        "--resume-from", default="", metavar="PATH", help="continue from a checkpoint, or a run folder's newest"
    )
    train.add_argument(
        "--allow-change",
        dest="allow_changes",
        action="append",
        default=[],
        metavar="KEY[,KEY]",
        help="on resume, accept these run-defining settings changed from the run's (recorded in config_history.jsonl)",
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bars")

    ev = sub.add_parser("eval", help="evaluate checkpoints / run folders on the same data")
    ev.add_argument("checkpoints", nargs="+")
    ev.add_argument("--data", default="stdlib", help="corpus for bits per byte ('' to skip)")
    ev.add_argument("--seq-len", type=int, default=None)
    ev.add_argument("--eval-tokens", type=int, default=65536)
    ev.add_argument("--needle", default="", metavar="LENGTHS", help="comma-separated needle lengths")
    ev.add_argument("--depths", type=int, default=10)
    ev.add_argument("--samples", type=int, default=4)
    ev.add_argument("--mqar-pairs", type=int, default=0)
    ev.add_argument("--compare", action="store_true", help="print one table (implied by several checkpoints)")
    ev.add_argument("--heatmap", default="", help="PNG path for the needle heatmap (first model)")
    ev.add_argument("--json", dest="json_out", default="", help="write the metrics as JSON here")

    gen = sub.add_parser("generate", help="sample text from a trained model")
    gen.add_argument("checkpoint")
    gen.add_argument("--prompt", default="def ")
    gen.add_argument("--max-new-tokens", type=int, default=200)
    gen.add_argument("--temperature", type=float, default=0.8)
    gen.add_argument("--top-k", type=int, default=None)
    gen.add_argument("--top-p", type=float, default=None)
    gen.add_argument("--seed", type=int, default=0)

    bench = sub.add_parser("bench", help="training and inference throughput of a model")
    bench.add_argument("--model", default="mac-tiny", help="preset name or FILE.py:FACTORY")
    bench.add_argument("--batch-size", type=int, default=8)
    bench.add_argument("--seq-len", type=int, default=256)
    bench.add_argument("--iters", type=int, default=5)
    bench.add_argument("--device", default="auto")
    bench_sub = bench.add_subparsers(dest="bench_command", required=False, metavar="{regress}")
    regress = bench_sub.add_parser(
        "regress", help="compare a benchmark report (JSON) with a baseline; exit 1 on any regression"
    )
    regress.add_argument("--baseline", required=True, metavar="A.json", help="the committed baseline report")
    regress.add_argument("--latest", required=True, metavar="B.json", help="the new run's report")
    regress.add_argument("--max-loss-regression-pct", type=float, default=5.0)
    regress.add_argument("--max-time-regression-pct", type=float, default=10.0)
    regress.add_argument("--min-gain-regression-pct", type=float, default=5.0)
    regress.add_argument("--allow-device-change", action="store_true")

    sub.add_parser("info", help="versions, devices, available presets, rules, optimizers, datasets")

    export = sub.add_parser("export", help="convert a trained run or checkpoint to a Hugging Face model directory")
    export.add_argument("run_dir", metavar="RUN_DIR", help="run folder, checkpoint or save_model directory")
    export.add_argument("out_dir", metavar="OUT_DIR", help="directory to write (empty, new, or an earlier export)")

    _add_security_commands(sub)
    _add_demo_command(sub)
    return parser


def _add_security_commands(sub: argparse._SubParsersAction) -> None:
    """`ttmem audit timing MODEL` and `ttmem serve` (ttmem.security)."""
    audit = sub.add_parser("audit", help="timing-safety audits of a model (`ttmem audit timing MODEL`)")
    instruments = audit.add_subparsers(dest="instrument", required=True)
    timing = instruments.add_parser(
        "timing", help="does decode time depend on content, context length or prefix-cache reuse?"
    )
    timing.add_argument("model", help="model preset name, or tiny-attention[:V] / tiny-theta[:V]")
    timing.add_argument("--trials", type=int, default=200)
    timing.add_argument("--warmup", type=int, default=10)
    timing.add_argument("--length", type=int, default=64, help="prefix length for the content classes")
    timing.add_argument("--lengths", type=int, nargs="+", default=[16, 64, 256, 1024])
    timing.add_argument("--permutations", type=int, default=1000)
    timing.add_argument("--seed", type=int, default=0)
    timing.add_argument("--device", default="cpu")
    timing.add_argument("--threads", type=int, default=1, help="torch intra-op threads while timing")
    timing.add_argument("--json", dest="json_path", default="", help="also write the report as JSON here")

    serve = sub.add_parser(
        "serve", help="loopback serving engine for timing-safety experiments; prints PORT N once listening"
    )
    serve.add_argument("--backend", default="tiny-attention", help="tiny-attention[:V], tiny-theta[:V] or a preset")
    serve.add_argument("--mode", default="shared", help="shared (one prefix cache) or isolated (a state per user)")
    serve.add_argument("--port", type=int, default=0, help="on 127.0.0.1; 0 picks a free one")
    serve.add_argument("--max-new-tokens", type=int, default=256, help="largest answer a request may ask for")
    serve.add_argument("--lifetime-s", type=float, default=3600.0, help="stop after this long (or SIGTERM / SIGINT)")
    serve.add_argument("--threads", type=int, default=1, help="torch compute threads")


def _add_demo_command(sub: argparse._SubParsersAction) -> None:
    """`ttmem demo` (ttmem.demo)."""
    demo = sub.add_parser("demo", help="recall of key-value pairs written once into each memory rule (no training)")
    demo.add_argument("--dim", type=int, default=64, help="memory width")


def _cmd_train(args: argparse.Namespace) -> int:
    from ttmem.eval.report import run_main_job
    from ttmem.train import resolve_config
    from ttmem.train.distributed import shutdown_distributed

    config = resolve_config(args.config, [*args.overrides, *args.settings])
    allow = [key.strip() for item in args.allow_changes for key in item.split(",") if key.strip()]
    try:
        out = run_main_job(
            config, resume=args.resume_from or args.resume, progress=not args.no_progress, allow_changes=allow
        )
    except BaseException:
        shutdown_distributed(finished=False)
        raise
    shutdown_distributed()
    stopped = next(
        (r for r in (out.get("main"), out.get("baseline")) if r is not None and r.interrupted), None
    )
    if stopped is not None:
        print(
            f"stopped by {stopped.interrupted} after step {stopped.step}; checkpoint: {stopped.checkpoint}; "
            "continue with the same command plus --resume",
            file=sys.stderr,
        )
        signum = getattr(signal, str(stopped.interrupted), None)
        return 128 + int(signum) if signum is not None else 1
    main = out["main"]
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    print(f"trained {config.model}: {main.step} steps, final loss {main.last_loss:.4f}")
    print(f"checkpoint: {main.checkpoint}")
    if "report" in out:
        print(out["report"]["table"])
        print(f"report: {out['report']['report']}")
    elif main.validation:
        print(f"validation bits per byte: {main.validation['bpb']:.4f}")
    return 0


def _at_least(minimum: int, **values: int | None) -> None:
    """ValueError naming the first option below `minimum` (None = not given)."""
    for name, value in values.items():
        if value is not None and value < minimum:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {minimum}, got {value}")


def _cmd_eval(args: argparse.Namespace) -> int:
    _at_least(1, seq_len=args.seq_len, eval_tokens=args.eval_tokens, depths=args.depths, samples=args.samples)
    _at_least(0, mqar_pairs=args.mqar_pairs)
    from ttmem.eval.pipeline import compare, format_table, report_depths
    from ttmem.eval.recall import save_heatmap

    try:
        lengths = [int(x) for x in args.needle.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--needle expects comma-separated integers, got '{args.needle}'") from None
    rows = compare(
        args.checkpoints,
        data=args.data,
        seq_len=args.seq_len,
        needle_lengths=lengths or None,
        eval_tokens=args.eval_tokens,
        depths=args.depths,
        samples=args.samples,
        mqar_pairs=args.mqar_pairs,
        progress=True,
    )
    print(format_table(rows))
    if args.heatmap and lengths:
        path = save_heatmap(rows[0]["needle_grid"], lengths, report_depths(args.depths), args.heatmap)
        print(f"heatmap: {path}")
    if args.json_out:
        clean = [{k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in r.items()} for r in rows]
        Path(args.json_out).write_text(json.dumps(clean, indent=2))
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    if not 0 <= args.temperature < math.inf:
        raise ValueError(f"--temperature must be a finite number >= 0, got {args.temperature}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise ValueError(f"--top-p must be in (0, 1], got {args.top_p}")
    _at_least(0, max_new_tokens=args.max_new_tokens)
    _at_least(1, top_k=args.top_k)
    import torch

    from ttmem.data import get_tokenizer
    from ttmem.eval.generation import sample
    from ttmem.eval.pipeline import load_trained

    model, payload = load_trained(args.checkpoint)
    tokenizer = get_tokenizer(payload.get("train_config", {}).get("tokenizer", "bytes"))
    prompt = torch.as_tensor(tokenizer.encode(args.prompt), dtype=torch.long)[None]
    if prompt.shape[1] == 0:
        raise ValueError("--prompt must not be empty")
    ids = sample(model, prompt, args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed)
    print(tokenizer.decode(ids[0].tolist()))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.bench_command == "regress":
        return _cmd_bench_regress(args)
    _at_least(1, batch_size=args.batch_size, seq_len=args.seq_len, iters=args.iters)
    from ttmem.eval.speed import measure_throughput
    from ttmem.train.distributed import DistEnv, pick_device
    from ttmem.train.modelspec import build_from_spec

    model, _ = build_from_spec(args.model, {}, 256)
    model = model.to(pick_device(args.device, DistEnv()))
    stats = measure_throughput(model, args.batch_size, args.seq_len, args.iters)
    params = sum(p.numel() for p in model.parameters())
    print(f"{args.model}: {params} parameters, batch {args.batch_size} x {args.seq_len}")
    for key, value in stats.items():
        print(f"  {key}: {value:,.1f}")
    return 0


def _cmd_bench_regress(args: argparse.Namespace) -> int:
    """Exit 1 on a regression or on reports that cannot be compared (one line), 0 when every check passes."""
    from ttmem.eval.regress import RegressionRefused, compare_reports, format_rows, load_report

    tolerances = {"loss": args.max_loss_regression_pct, "time": args.max_time_regression_pct,
                  "gain": args.min_gain_regression_pct}
    try:
        rows = compare_reports(load_report(args.baseline), load_report(args.latest), tolerances,
                               args.allow_device_change)
    except RegressionRefused as err:
        _say(f"ttmem bench regress: error: {err}")
        return 1
    print(format_rows(rows))
    return 1 if any(not r["passed"] for r in rows) else 0


def _cmd_info(_: argparse.Namespace) -> int:
    import torch

    import ttmem
    from ttmem.data import TASKS
    from ttmem.memory import RULES
    from ttmem.models import MODEL_PRESETS
    from ttmem.train.optim import optimizer_names

    print(f"ttmem {ttmem.__version__}, torch {torch.__version__}, python {sys.version.split()[0]}")
    cuda = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    print(
        f"devices: cpu ({torch.get_num_threads()} threads)"
        + "".join(f", cuda:{i} {n}" for i, n in enumerate(cuda))
    )
    print(f"model presets: {', '.join(sorted(MODEL_PRESETS))}")
    print(f"memory rules: {', '.join(sorted(RULES))}")
    print(f"optimizers: {', '.join(optimizer_names())}")
    print("datasets: stdlib (embedded), enwik8, hf:NAME[:CONFIG], a text file or folder")
    print(f"synthetic tasks: {', '.join(TASKS)}")
    return 0


def _cmd_audit(args: argparse.Namespace) -> int:
    _at_least(1, threads=args.threads)
    import torch

    from ttmem.security.audit import format_report, run_timing_audit

    torch.set_num_threads(args.threads)
    report = run_timing_audit(
        args.model, args.trials, args.warmup, args.length, args.lengths, args.permutations, args.seed, args.device
    )
    print(format_report(report))
    if args.json_path:
        report.write_json(args.json_path)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    _at_least(1, threads=args.threads)
    import torch

    from ttmem.security.backends import build_backend
    from ttmem.security.server import serve_until_stopped
    from ttmem.security.serving import ServingEngine

    engine = ServingEngine(build_backend(args.backend), mode=args.mode, max_new_tokens=args.max_new_tokens)

    def listening(port: int) -> None:
        torch.set_num_threads(args.threads)
        sys.setswitchinterval(1e-4)  # let handler threads answer promptly while the worker holds the GIL
        print(f"PORT {port}", flush=True)

    serve_until_stopped(engine, args.port, args.lifetime_s, listening)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ttmem.demo import recall_table

    for line in recall_table(args.dim):
        print(line, flush=True)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    try:
        from ttmem.hf import export_run
    except ImportError as err:
        raise ValueError(str(err)) from None

    out = export_run(args.run_dir, args.out_dir)
    print(f"exported {args.run_dir} to {out} (load with ttmem.hf and AutoModelForCausalLM.from_pretrained)")
    return 0


COMMANDS = {
    "train": _cmd_train,
    "eval": _cmd_eval,
    "generate": _cmd_generate,
    "bench": _cmd_bench,
    "info": _cmd_info,
    "audit": _cmd_audit,
    "export": _cmd_export,
    "serve": _cmd_serve,
    "demo": _cmd_demo,
}


_USER_ERRORS = (ValueError, TypeError, FileNotFoundError, IsADirectoryError, NotADirectoryError)
_USER_ERRORS_BY_NAME = ("DataUnavailableError", "TrainingDiverged")


@contextlib.contextmanager
def _one_line_warnings(prefix: str) -> Iterator[None]:
    """Warnings as `ttmem CMD: warning: ...` lines (the library's notices about a resumed run included)."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        kind = "" if category.__module__.startswith("ttmem") else f"{category.__name__}: "
        _say(f"{prefix}: warning: {kind}{message}")

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def _say(line: str) -> None:
    """One line on stderr, whatever the message holds (a library message may span lines)."""
    print(" ".join(line.split()), file=sys.stderr)


def _failure(prefix: str, err: BaseException) -> int | None:
    """The exit status for an expected failure, after printing its one line; None for anything else."""
    from ttmem.fileio import describe_os_error, os_error_in

    if isinstance(err, KeyboardInterrupt):
        detail = f": {err}" if str(err) else ""
        _say(f"{prefix}: interrupted{detail}")
        return 128 + int(getattr(err, "signum", signal.SIGINT))
    if isinstance(err, _USER_ERRORS) or type(err).__name__ in _USER_ERRORS_BY_NAME:
        text = describe_os_error(err) if isinstance(err, OSError) else str(err)
        _say(f"{prefix}: error: {text}")
        return USAGE_ERROR
    if type(err).__name__ == "RunLocked":  # by name: the boundary must not import torch to classify
        _say(f"{prefix}: error: {err}")
        return ENVIRONMENT_ERROR
    cause = os_error_in(err)
    if cause is not None:
        _say(f"{prefix}: error: {describe_os_error(cause)}")
        return ENVIRONMENT_ERROR
    if isinstance(err, ModuleNotFoundError):
        _say(f"{prefix}: error: this needs the package '{err.name}', which is not installed")
        return ENVIRONMENT_ERROR
    return None


class _Interrupts:
    """SIGINT while a command runs outside the trainer: the first raises KeyboardInterrupt (and is
    remembered, because an import interrupted half-way may surface as another error, e.g. numpy's
    "cannot load module more than once"); the second exits at once. Inside `deferred()` the first
    is only recorded and raised at the end of the block: a KeyboardInterrupt raised while torch's
    C++ extensions load can abort the process."""

    count = 0
    defer = False

    @classmethod
    def handle(cls, signum: int, _frame: object) -> None:
        cls.count += 1
        if cls.count > 1:
            os._exit(128 + signum)
        if not cls.defer:
            raise KeyboardInterrupt

    @classmethod
    @contextlib.contextmanager
    def deferred(cls) -> Iterator[None]:
        cls.defer = True
        try:
            yield
        finally:
            cls.defer = False
        if cls.count:
            raise KeyboardInterrupt

    @classmethod
    def install(cls) -> object | None:
        """Install the handler; returns the previous one (None where signals cannot be set)."""
        cls.count = 0
        try:
            return signal.signal(signal.SIGINT, cls.handle)
        except ValueError:  # not the main thread
            return None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `ttmem` console script; returns the exit status."""
    prefix, previous_handler = "ttmem", _Interrupts.install()
    try:
        args = _parser().parse_args(argv)
        prefix = f"ttmem {args.command}"
        # OpenMP threads that spin only briefly before they sleep: with other busy processes on the machine,
        # threads that spin long steal the cores their own preempted siblings need, and each of a training step's
        # thousands of small parallel regions then waits for a time slice; sleeping at once (PASSIVE) costs
        # speed on an idle machine (benchmarks/contention.py, README). Read once when torch loads; the user's
        # own OMP_WAIT_POLICY or GOMP_SPINCOUNT wins.
        if "OMP_WAIT_POLICY" not in os.environ:
            os.environ.setdefault("GOMP_SPINCOUNT", "10000")
        with _Interrupts.deferred():
            import torch  # noqa: F401  (every command needs it; loaded here so Ctrl-C cannot cut it)
        with _one_line_warnings(prefix):
            return COMMANDS[args.command](args)
    except (Exception, KeyboardInterrupt) as err:
        if os.environ.get("TTMEM_DEBUG"):
            raise
        prefix = err.prog if isinstance(err, _ArgumentsError) else prefix
        status = _failure(prefix, KeyboardInterrupt() if _Interrupts.count else err)
        if status is None:
            raise
        return status
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)
