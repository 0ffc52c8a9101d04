"""Writing generated files: all or nothing, and never over a file the user edited.

A manifest (.hydra-generated.json) records the hash of every file as generate
wrote it. A file whose current hash differs from the manifest was edited by
hand and is only replaced with --force.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import OutputError
from .render import RenderedFile

MANIFEST = ".hydra-generated.json"


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_files(out_dir: Path, files: list[RenderedFile], force: bool) -> list[str]:
    """Writes files under out_dir; returns the paths that changed."""
    manifest_path = out_dir / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    except (OSError, ValueError):
        manifest = {}
    changed = []
    for f in files:
        target = out_dir / f.path
        if not target.exists():
            changed.append(f.path)
            continue
        current = target.read_bytes()
        if current == f.text.encode():
            os.chmod(target, f.mode)  # a checkout does not keep 0600 on .env
            continue
        if not force and manifest.get(f.path) != _digest(current):
            raise OutputError(f"{target} was edited since the last generate (or was not written by it)",
                              "move your edits into cluster.yaml or templates/, or pass --force to overwrite")
        changed.append(f.path)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".hydra-staging-", dir=out_dir))
    except OSError as exc:
        raise OutputError(f"cannot write to {out_dir}: {exc.strerror}",
                          "choose a writable directory with -o, or fix its permissions") from None
    try:
        for f in files:
            tmp = staging / f.path
            tmp.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(f.text)
            os.chmod(tmp, f.mode)
        for f in files:
            target = out_dir / f.path
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / f.path, target)
            os.chmod(target, f.mode)
        manifest.update({f.path: _digest(f.text.encode()) for f in files})
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        os.replace(staging / MANIFEST, manifest_path)
    except OSError as exc:
        raise OutputError(f"cannot write to {out_dir}: {exc.strerror}",
                          "choose a writable directory with -o, or fix its permissions") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return changed
