"""Writing generated files: all or nothing, and never over a file the user edited.

A manifest (.hydra-generated.json) records the hash of every file as generate
wrote it. A file whose current hash differs from the manifest was edited by
hand and is only replaced with --force. Every file of every host is staged
first and every target checked; then the files are moved into place, and if a
move still fails the ones already moved are put back. A lock keeps two
generate runs from interleaving.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import OutputError
from ..render.compose import RenderedFile
from .signals import held

MANIFEST = ".hydra-generated.json"
LOCK = ".hydra-generate.lock"


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _cannot_write(out_dir: Path, exc: OSError) -> OutputError:
    return OutputError(f"cannot write to {out_dir}: {exc.strerror}",
                       "choose a writable directory with -o, or fix its permissions")


@contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    lock = out_dir / LOCK
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        if lock.is_symlink() or (lock.exists() and not lock.is_file()):  # a FIFO would block open() forever
            raise OutputError(f"{lock} is not a regular file", f"remove {lock} and run generate again")
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as exc:
        raise _cannot_write(out_dir, exc) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(f"another hydra-compose generate is writing to {out_dir}",
                              "wait for it to finish, then run generate again") from None
        yield
    finally:
        os.close(fd)


def _clear_stale_staging(out_dir: Path) -> None:
    """Staging folders of a generate that was killed (they may hold the API key): the lock is ours."""
    for stale in out_dir.glob(".hydra-staging-*"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)


def _check_target(out_dir: Path, rel: str) -> None:
    """The path must be a regular file or absent, and every folder on the way a folder."""
    target = out_dir / rel
    for parent in reversed(target.relative_to(out_dir).parents):
        p = out_dir / parent
        if p.exists() and not p.is_dir():
            raise OutputError(f"{p} is in the way: a folder of generated files goes there",
                              f"move {p} away and run generate again")
    if target.is_symlink() or (target.exists() and not target.is_file()):
        raise OutputError(f"{target} is not a regular file", f"move {target} away and run generate again")


def _changed(out_dir: Path, files: list[RenderedFile], manifest: dict, force: bool) -> list[str]:
    changed = []
    for f in files:
        _check_target(out_dir, f.path)
        target = out_dir / f.path
        if not target.exists():
            changed.append(f.path)
            continue
        current = target.read_bytes()
        if current == f.text.encode():
            continue
        if not force and manifest.get(f.path) != _digest(current):
            raise OutputError(f"{target} was edited since the last generate (or was not written by it)",
                              "move your edits into cluster.yaml or templates/, or pass --force to overwrite")
        changed.append(f.path)
    return changed


def _stale(out_dir: Path, files: list[RenderedFile], manifest: dict) -> list[str]:
    """Fallback plans a previous generate wrote and this one does not (the supervisor reads every
    file in that folder): removed, unless edited by hand."""
    new = {f.path for f in files}
    out = []
    for rel, digest in manifest.items():
        target = out_dir / rel
        if "/fallback/" in f"/{rel}" and rel not in new and target.is_file() and not target.is_symlink():
            if _digest(target.read_bytes()) == digest:
                out.append(rel)
    return out


def write_files(out_dir: Path, files: list[RenderedFile], force: bool, sweep: bool = True) -> list[str]:
    """Writes files under out_dir; returns the paths that changed. sweep: files is a whole generate's
    output, so fallback plans it no longer holds are stale (a command rewriting one file passes False)."""
    with _locked(out_dir):
        _clear_stale_staging(out_dir)
        manifest_path = out_dir / MANIFEST
        try:
            manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
        except (OSError, ValueError):
            manifest = {}
        if not isinstance(manifest, dict):
            manifest = {}
        changed = _changed(out_dir, files, manifest, force)
        stale = _stale(out_dir, files, manifest) if sweep else []
        _check_target(out_dir, MANIFEST)
        # staging (it holds the API key), moving every file and the manifest, and removing the staging
        # copy happen as one step: Ctrl-C or SIGTERM waits the moment it takes, then stops the command
        with held():
            try:
                staging = Path(tempfile.mkdtemp(prefix=".hydra-staging-", dir=out_dir))
            except OSError as exc:
                raise _cannot_write(out_dir, exc) from None
            try:
                for f in files:
                    tmp = staging / "new" / f.path
                    tmp.parent.mkdir(parents=True, exist_ok=True)
                    tmp.write_text(f.text)
                    os.chmod(tmp, f.mode)
                manifest.update({f.path: _digest(f.text.encode()) for f in files})
                for rel in stale:
                    manifest.pop(rel, None)
                (staging / "new" / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
                _move_all(out_dir, staging, [f.path for f in files] + [MANIFEST])
                for rel in stale:
                    (out_dir / rel).unlink(missing_ok=True)
                for f in files:
                    os.chmod(out_dir / f.path, f.mode)  # a checkout does not keep 0600 on .env
            except OSError as exc:
                raise _cannot_write(out_dir, exc) from None
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    return changed


def _move_all(out_dir: Path, staging: Path, paths: list[str]) -> None:
    """Moves staged files into place; on any failure puts back what was there before."""
    done: list[tuple[Path, Path | None]] = []
    try:
        for rel in paths:
            target = out_dir / rel
            backup = None
            if target.exists():
                backup = staging / "old" / rel
                backup.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(target, backup)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / "new" / rel, target)
            done.append((target, backup))
    except OSError:
        for target, backup in reversed(done):
            try:
                if backup is None:
                    target.unlink()
                else:
                    os.replace(backup, target)
            except OSError:
                pass
        raise
