"""Durable files: atomic writes, SHA-256 manifests, stale temporary files, and OS errors in one line.

Design choices:
- Atomic write. A file is written to a hidden temporary sibling `.NAME.tmp-PID`, flushed and fsynced,
  then renamed over NAME with `os.replace` (atomic on POSIX), and the folder is fsynced so the rename
  survives a power cut. Whatever stops the write (no space, a read-only folder, Ctrl-C) removes the
  temporary file; only `kill -9` can leave one behind, and `remove_stale_temporaries` deletes those of
  processes that no longer run (or all of them, for a caller that holds the folder's lock).
- Manifest. `manifest.json` in a folder maps file names to the SHA-256 digests their content had when
  written; `verify_file` recomputes the digest before anything reads the file. A name may map to
  several accepted digests for the instant between recording a new version and renaming it in place,
  so a process killed at any point leaves every file matching its entry.
- OS errors. Libraries sometimes wrap an OSError in another exception (torch.save turns "no space
  left" into `RuntimeError: [enforce fail at inline_container.cc]`); `os_error_in` finds it in the
  chain and `describe_os_error` turns it into one sentence that says what to do.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "ttmem-manifest"
_TEMPORARY = re.compile(r"^\..+\.tmp-(\d+)$")


class IntegrityError(ValueError):
    """A file's content does not match the SHA-256 recorded when it was written."""


class UnverifiedError(ValueError):
    """A file has no recorded SHA-256, so its content cannot be checked."""


class UnverifiedWarning(UserWarning):
    """A file from a folder without any manifest (written before digests were recorded) was read unchecked."""


def os_error_in(err: BaseException) -> OSError | None:
    """The first OSError in `err`'s chain of causes / contexts (itself included; a context hidden by
    `raise ... from None` is not followed), else None."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return None


_ADVICE = {
    errno.ENOSPC: "no space left on the device; free some space and run the command again",
    errno.EDQUOT: "disk quota exceeded; free some space and run the command again",
    errno.EROFS: "the file system is read-only; choose a writable location",
    errno.EACCES: "permission denied; choose a location you may write to or fix its permissions",
    errno.EPERM: "operation not permitted; choose a location you may write to or fix its permissions",
    errno.ENOENT: "no such file or directory",
    errno.EISDIR: "is a directory, expected a file",
    errno.ENOTDIR: "a part of the path is a file, expected a directory",
}


def describe_os_error(err: OSError) -> str:
    """One sentence: the path (if known), what went wrong, and what to do."""
    if err.errno is None:  # an OSError raised with a ready-made message
        return str(err)
    what = _ADVICE.get(err.errno) or (err.strerror or str(err)).lower()
    where = err.filename if err.filename is not None else ""
    return f"{where}: {what}" if where else what


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def temporary_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def fsync_folder(folder: Path) -> None:
    try:  # make a rename durable; not every platform / file system allows opening a folder
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_temporary(path: Path, write: Callable[[IO[bytes]], None], durable: bool = True) -> tuple[Path, str]:
    """Write `path`'s future content to its temporary sibling; returns (temporary path, SHA-256).

    On any failure the temporary file is removed and the underlying OSError (if any) is raised with
    `path` as its file name, so the message names the file the user asked for."""
    tmp = temporary_path(path)
    try:
        with tmp.open("wb") as handle:
            write(handle)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        return tmp, sha256_file(tmp)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        cause = os_error_in(err)
        if cause is not None and cause is not err and isinstance(err, Exception):
            raise OSError(cause.errno, cause.strerror, str(path)) from err
        raise


def commit_temporary(tmp: Path, path: Path, durable: bool = True) -> None:
    """Rename a finished temporary file over `path` (atomic) and make the rename durable."""
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_folder(path.parent)


def commit_directory(tmp: Path, path: Path) -> None:
    """Rename a finished temporary folder to `path` and make the rename durable. Atomic when `path` does
    not exist (the case of every new checkpoint); an existing `path` is first moved to a hidden
    temporary name and removed after the rename, so the folder is never seen half-written."""
    old = _hide(path) if path.exists() else None
    os.replace(tmp, path)
    fsync_folder(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _hide(path: Path) -> Path:
    """Rename `path` to a hidden temporary name (never listed, removed as stale if we are killed)."""
    hidden = path.with_name(f".{path.name}.old.tmp-{os.getpid()}")
    os.replace(path, hidden)
    return hidden


def remove_directory(path: str | Path) -> None:
    """Delete a folder so that it is never seen half-deleted: first renamed away (atomic), then emptied."""
    shutil.rmtree(_hide(Path(path)), ignore_errors=True)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None], durable: bool = True) -> str:
    """Write `path` atomically; returns the SHA-256 of what was written. `durable=False` skips the
    fsyncs: the file is still never seen half-written, but a power cut may bring back the old one."""
    path = Path(path)
    tmp, digest = write_temporary(path, write, durable)
    commit_temporary(tmp, path, durable)
    return digest


def atomic_write_text(path: str | Path, text: str, durable: bool = True) -> str:
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")), durable)


# -- manifests ----------------------------------------------------------------------------------------
def read_manifest(folder: str | Path) -> dict[str, list[str]]:
    """{file name: accepted SHA-256 digests} of `folder` ({} without a manifest)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != MANIFEST_FORMAT:
            raise ValueError
        return {str(name): [str(d) for d in digests] for name, digests in data["files"].items()}
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        raise IntegrityError(f"{path} is damaged, so no file in {Path(folder)} can be verified") from None


def write_manifest(
    folder: str | Path, entries: dict[str, list[str]], durable: bool = True, writing: Iterable[str] = ()
) -> None:
    """Replace `folder`'s manifest atomically; entries of files that no longer exist are dropped, except
    those of the names in `writing` (recorded before their file is renamed into place)."""
    folder = Path(folder)
    writing = set(writing)
    kept = {
        name: digests for name, digests in sorted(entries.items()) if name in writing or (folder / name).is_file()
    }
    text = json.dumps({"format": MANIFEST_FORMAT, "version": 1, "files": kept}, indent=1) + "\n"
    atomic_write_text(folder / MANIFEST, text, durable)


def record_digests(
    folder: str | Path, digests: dict[str, str], keep_previous: bool = False, durable: bool = True
) -> None:
    """Record `digests` ({name: sha256}) in the manifest; `keep_previous` also keeps each name's old
    digests accepted (for the moment before the new version is renamed into place)."""
    entries = read_manifest(folder)
    for name, digest in digests.items():
        previous = entries.get(name, []) if keep_previous else []
        entries[name] = [*dict.fromkeys([*previous, digest])]
    write_manifest(folder, entries, durable, writing=digests)


def write_verified(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Atomic write of `path` whose SHA-256 is recorded in its folder's manifest before the rename."""
    path = Path(path)
    tmp, digest = write_temporary(path, write)
    try:
        record_digests(path.parent, {path.name: digest}, keep_previous=True)
        commit_temporary(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    # Dropping the old digest needs no fsync: if a power cut loses it, the superset above still holds.
    record_digests(path.parent, {path.name: digest}, durable=False)
    return path


def warn_unverified(path: Path, what: str) -> None:
    warnings.warn(
        f"{what} {path} cannot be verified: its folder has no {MANIFEST} (written by an older ttmem, or copied "
        "without it)",
        UnverifiedWarning,
        stacklevel=3,
    )


def verify_file(path: str | Path, what: str = "file") -> bool:
    """True if `path` matches a digest in its folder's manifest; IntegrityError / UnverifiedError if not.

    False for a folder with no manifest at all (written before ttmem recorded digests, or a file copied
    alone): nothing can be checked, and the caller reads it with `warn_unverified`. A folder that has a
    manifest but no entry for the file refuses it."""
    path = Path(path)
    if not (path.parent / MANIFEST).exists():
        return False
    accepted = read_manifest(path.parent).get(path.name)
    if not accepted:
        raise UnverifiedError(
            f"{what} {path} has no recorded SHA-256 in {path.parent / MANIFEST}, so its integrity cannot be "
            "checked (copy it together with that manifest)"
        )
    if sha256_file(path) not in accepted:
        raise IntegrityError(
            f"{what} {path} is corrupt or truncated: its SHA-256 differs from the one recorded when it was written"
        )
    return True


def seal(folder: str | Path, names: Iterable[str]) -> None:
    """Record the current content of `names` in `folder` as trusted (for files edited on purpose)."""
    folder = Path(folder)
    record_digests(folder, {name: sha256_file(folder / name) for name in names})


# -- stale temporaries --------------------------------------------------------------------------------
def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(folder: str | Path, all_stale: bool = False) -> list[Path]:
    """Delete `.NAME.tmp-PID` files (and folders) left by killed writers; returns what was removed.

    all_stale: the caller holds the folder's lock, so every temporary file but its own is stale."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.iterdir():
        match = _TEMPORARY.match(path.name)
        if not match or not (path.is_file() or path.is_dir()):
            continue
        pid = int(match.group(1))
        if pid == os.getpid() or (not all_stale and _running(pid)):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed
