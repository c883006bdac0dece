"""enwik8: the first 10^8 bytes of an English Wikipedia dump (Hutter prize), byte-level benchmark.

Design: download once from the canonical address into a cache folder, through a `.part` file that
is renamed only when complete, then extract the single member and check its size and md5 against
the published values before it is ever used. A stamp file records a verified extraction so later
loads skip re-hashing 100 MB. Offline machines get one clear error saying where to put the file.
The benchmark split is bytes [0, 90M) train, [90M, 95M) validation, [95M, 100M) test; smaller
files (tests) are split with the same 90/5/5 proportions.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

from ttmem.data.errors import DataUnavailableError

ENWIK8_URL = "http://mattmahoney.net/dc/enwik8.zip"
ENWIK8_MD5 = "a1fa5ffddb56f4953e226637dabbb36a"  # published md5 of the 100,000,000-byte member
ENWIK8_SIZE = 100_000_000
SPLIT_FRACTIONS = (0.90, 0.05, 0.05)


def default_cache_dir() -> Path:
    """`$TTMEM_CACHE` if set, else `$XDG_CACHE_HOME/ttmem`, else `~/.cache/ttmem`."""
    if os.environ.get("TTMEM_CACHE"):
        return Path(os.environ["TTMEM_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ttmem"


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(url: str, dest: Path, timeout_s: float) -> None:
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response, part.open("wb") as out:
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
    except (urllib.error.URLError, OSError) as err:
        part.unlink(missing_ok=True)
        raise DataUnavailableError(
            f"could not download enwik8 from {url} ({getattr(err, 'reason', err)}); if this machine is "
            f"offline, copy enwik8.zip (or the extracted enwik8) into {dest.parent}"
        ) from err
    os.replace(part, dest)


def fetch_enwik8(
    cache_dir: str | Path | None = None,
    url: str = ENWIK8_URL,
    md5: str = ENWIK8_MD5,
    size: int | None = ENWIK8_SIZE,
    timeout_s: float = 60.0,
) -> Path:
    """Path of the verified, extracted enwik8 file, downloading and extracting it if needed."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    target, stamp, archive = cache / "enwik8", cache / "enwik8.verified", cache / "enwik8.zip"
    if target.is_file() and stamp.is_file() and stamp.read_text().strip() == md5:
        return target
    if not target.is_file():
        if not archive.is_file():
            _download(url, archive, timeout_s)
        try:
            with zipfile.ZipFile(archive) as zf:
                member = next((n for n in zf.namelist() if Path(n).name == "enwik8"), None)
                if member is None:
                    raise DataUnavailableError(f"{archive} has no member named 'enwik8'")
                part = target.with_name("enwik8.part")
                with zf.open(member) as src, part.open("wb") as out:
                    for block in iter(lambda: src.read(1 << 20), b""):
                        out.write(block)
                os.replace(part, target)
        except zipfile.BadZipFile as err:
            archive.unlink(missing_ok=True)  # a truncated download must not be trusted next time
            raise DataUnavailableError(f"{archive} is not a valid zip archive (deleted; retry)") from err
    actual_size = target.stat().st_size
    if size is not None and actual_size != size:
        raise DataUnavailableError(f"{target} has {actual_size} bytes, expected {size}; delete it and retry")
    actual_md5 = _md5(target)
    if actual_md5 != md5:
        raise DataUnavailableError(f"{target} has md5 {actual_md5}, expected {md5}; delete it and retry")
    stamp.write_text(md5 + "\n")
    return target


def split_enwik8(path: str | Path) -> dict[str, np.ndarray]:
    """The standard byte split {"train", "validation", "test"} (uint8 arrays) of an enwik8 file."""
    data = np.fromfile(str(path), dtype=np.uint8)
    n_train = int(len(data) * SPLIT_FRACTIONS[0])
    n_val = int(len(data) * SPLIT_FRACTIONS[1])
    return {
        "train": data[:n_train],
        "validation": data[n_train : n_train + n_val],
        "test": data[n_train + n_val :],
    }
