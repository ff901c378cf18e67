"""Where a run lives: a local directory, or a URI (``s3://bucket/run``, ``gs://…``, ``file:///…``).

A local ``run.out`` is used as it is. For a URI, everything that must be a real directory —
the prepared windows and the memory-mapped layer cache, which every worker reads — goes to a
local (or shared) directory, ``run.local_dir``; Ray Train stores its checkpoints under
``<run.out>/ray`` through pyarrow's filesystem layer (so resume works from the URI alone), and the
run's report files are written locally, then copied to ``run.out``. On a multi-node cluster
``run.local_dir`` (or ``cache.dir``) must be on storage every node sees.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from xsmoe_ray.config import ConfigError, RunConfig


def is_uri(path: str) -> bool:
    return "://" in path


@dataclass(frozen=True)
class RunDir:
    """``local``: the run's working directory; ``storage``: Ray Train's storage path; ``uri``: set when remote."""

    local: Path
    storage: str
    uri: str | None = None

    def publish(self, names: list[str]) -> None:
        """Copy the named report files from ``local`` to the remote run directory (no-op when local)."""
        if self.uri is None:
            return
        fs, root = pafs.FileSystem.from_uri(self.uri)
        fs.create_dir(root, recursive=True)
        for name in names:
            pafs.copy_files(str(self.local / name), f"{root}/{name}", source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=fs)


def run_dir(run: RunConfig) -> RunDir:
    """Resolve ``run.out`` (and ``run.local_dir`` for a URI); a URI pyarrow cannot open is a config error."""
    if not is_uri(run.out):
        local = Path(run.out).expanduser().resolve()
        return RunDir(local=local, storage=str(local / "ray"))
    try:
        pafs.FileSystem.from_uri(run.out)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as e:
        raise ConfigError(f"run.out={run.out}: not a filesystem URI pyarrow can open ({e})") from e
    uri = run.out.rstrip("/")
    local = Path(run.local_dir).expanduser() if run.local_dir else default_local_dir(uri)
    return RunDir(local=local.resolve(), storage=f"{uri}/ray", uri=uri)


def default_local_dir(uri: str) -> Path:
    """One stable local directory per URI, so a relaunch reuses its prepared data and cache."""
    digest = hashlib.sha256(uri.encode()).hexdigest()[:12]
    return Path.home() / ".cache" / "xsmoe_ray" / "runs" / digest


SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's list of registered checkpoints


def snapshot_location(storage: str, name: str) -> str:
    """Where Ray Train lists run ``name``'s registered checkpoints (written after each one is complete)."""
    return f"{storage}/{name}/{SNAPSHOT}"


def read_bytes(location: str) -> bytes:
    """A whole file from a local path or a URI (FileNotFoundError when it is not there)."""
    if not is_uri(location):
        return Path(location).read_bytes()
    fs, path = pafs.FileSystem.from_uri(location)
    with fs.open_input_stream(path) as f:
        return f.read()


def has_registered_windows(storage: str, name: str) -> bool:
    try:
        read_bytes(snapshot_location(storage, name))
    except FileNotFoundError:
        return False
    return True
