"""What the checkpoint integrity check costs: save / load times of a training checkpoint, and the part of
each spent on its SHA-256 (the digest recorded at save, recomputed at every load).

Method: a payload of float32 tensors of the given size is saved with `save_checkpoint` (temporary directory,
fsync, digests, manifest, rename) and loaded with `load_checkpoint` (digest checks, then the safetensors and
`torch.load` reads) `--repeats` times in one process; the digests alone are timed with `sha256_file` on the same
files. Medians.

    python benchmarks/checkpoint_integrity.py --sizes 8 32 128 --json checkpoint_integrity.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ttmem.fileio import sha256_file
from ttmem.train.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(mib: int, repeats: int, folder: Path) -> dict[str, float]:
    tensors = max(1, mib // 4)  # 4 MiB each
    payload = {"step": 1, "model": {f"w{i}": torch.randn(1024, 1024) for i in range(tensors)}}
    path = checkpoint_path(folder / f"{mib}mib", 1)
    save = _median_seconds(lambda: save_checkpoint(path, payload), repeats)
    load = _median_seconds(lambda: load_checkpoint(path), repeats)
    digest = _median_seconds(lambda: [sha256_file(p) for p in path.iterdir() if p.name != "manifest.json"], repeats)
    return {"mib": 4 * tensors, "save_s": save, "load_s": load, "sha256_s": digest,
            "sha256_share_of_load": digest / load}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 32, 128], help="checkpoint sizes in MiB")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default="checkpoint_integrity.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(size, args.repeats, Path(tmp)) for size in args.sizes]
    Path(args.json).write_text(json.dumps({"torch": torch.__version__, "rows": rows}, indent=2) + "\n")
    print("| MiB | save s | load s | SHA-256 s | SHA-256 share of load |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mib']} | {r['save_s']:.3f} | {r['load_s']:.3f} | {r['sha256_s']:.3f} | "
              f"{100 * r['sha256_share_of_load']:.0f}% |")
    print(f"json: {args.json}")


if __name__ == "__main__":
    main()
