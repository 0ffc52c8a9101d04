"""Running the stunnel configurations `generate` wrote, natively: the files of compose/<host>/tls/
are copied to a folder of their own and the container path (/hydra/tls) in stunnel.conf is pointed
at it; nothing else of the generated text changes. Started and stopped by PID."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from hydra_compose.render.compose import TLS_DIR


def stunnel_binary() -> str | None:
    return shutil.which("stunnel") or shutil.which("stunnel4")


def start_stunnel(project: Path, host: str, work: Path, replace: dict[str, str] | None = None) -> subprocess.Popen:
    """stunnel with compose/<host>/tls as generated; replace: further text substitutions (a test's
    delay proxy in front of the worker host, say)."""
    src = project / "compose" / host / "tls"
    dst = work / f"tls-{host}"
    shutil.copytree(src, dst, dirs_exist_ok=True)
    conf = (src / "stunnel.conf").read_text().replace(TLS_DIR, str(dst))
    for old, new in (replace or {}).items():
        conf = conf.replace(old, new)
    (dst / "stunnel.conf").write_text(conf)
    binary = stunnel_binary()
    if binary is None:
        raise RuntimeError("stunnel is not installed (scripts/test.sh installs stunnel4)")
    proc = subprocess.Popen([binary, str(dst / "stunnel.conf")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    time.sleep(0.5)
    if proc.poll() is not None:
        raise RuntimeError(f"stunnel for {host} exited: {proc.stdout.read()[-2000:]}")
    return proc


def stop(proc: subprocess.Popen) -> str:
    """Stops it and returns what it logged."""
    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out or ""
