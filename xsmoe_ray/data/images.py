"""Amazon reviews 2018 image downloader: ``python -m xsmoe_ray.data.images --data-dir DIR [--category C]``.

The 2018 dumps ship image URLs, not images (DESIGN.md §3). For every asin of
``meta_<Category>.json[.gz]`` (first line per asin) this fetches the first URL of
``imageURLHighRes``, else of ``imageURL``, to ``<DIR>/images/<asin>.jpg``, where
:func:`xsmoe_ray.data.amazon.load_amazon` looks for it.

* Resumable: a non-empty ``<asin>.jpg`` is skipped, and a download is written to a hidden temporary
  name and renamed, so an interrupted run never leaves a truncated ``.jpg`` behind.
* Retries: connection errors, timeouts, HTTP 5xx, 408 and 429 are retried ``retries`` times with
  exponential backoff (``BACKOFF_S``, doubled each time); other HTTP errors (404, 403) are final.
* Only http(s) URLs are fetched (a ``file://`` URL in a dump must not copy local files).
* ``images/download_report.json`` (also returned): counts ``ok`` (downloaded now), ``skipped``
  (already there), ``failed`` (with ``failures``: asin → url and reason) and ``no_url``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from xsmoe_ray.data.amazon import find_meta, image_name, iter_records, text_id
from xsmoe_ray.data.schema import DataError

REPORT_NAME = "download_report.json"
BACKOFF_S = 0.5  # first retry delay; tests shorten it
USER_AGENT = "xsmoe_ray-image-downloader/0.1 (+urllib)"
PROGRESS_EVERY = 1000
TRANSIENT_HTTP = (408, 429)
log = logging.getLogger(__name__)


def image_urls(meta: Path) -> tuple[dict[str, str], int]:
    """(asin → first image URL, number of asins without any), first metadata line per asin."""
    urls: dict[str, str] = {}
    seen: set[str] = set()
    for _, record, _ in iter_records(meta):
        if record is None:
            continue  # the loader reports malformed lines; nothing to fetch from them
        asin = text_id(record.get("asin"))
        if not asin or asin in seen:
            continue
        seen.add(asin)
        url = _first_url(record.get("imageURLHighRes")) or _first_url(record.get("imageURL"))
        if url:
            urls[asin] = url
    return urls, len(seen) - len(urls)


def _first_url(value) -> str:
    if isinstance(value, str):
        value = [value]
    if isinstance(value, (list, tuple)):
        return next((v.strip() for v in value if isinstance(v, str) and v.strip()), "")
    return ""


def fetch(url: str, target: Path, *, retries: int, timeout: float) -> str | None:
    """Download ``url`` to ``target`` atomically; None on success, else the last failure reason."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        return "not an http(s) URL"
    reason = ""
    for attempt in range(retries + 1):
        try:
            request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
            with urllib.request.urlopen(request, timeout=timeout) as response:
                data = response.read()
            if not data:
                reason = "empty response"
            else:
                _write_atomic(target, data)
                return None
        except urllib.error.HTTPError as e:
            reason = f"HTTP {e.code} {e.reason}"
            if e.code < 500 and e.code not in TRANSIENT_HTTP:
                return reason  # the server said no; asking again will not change that
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            reason = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
        if attempt < retries:
            time.sleep(BACKOFF_S * 2**attempt)
    return reason


def _write_atomic(target: Path, data: bytes) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.part")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def download_amazon_images(root, category="", *, workers=8, retries=3, timeout=10.0) -> dict:
    """Fetch the image of every asin in the category's metadata to ``root/images`` (module docstring)."""
    root = Path(root)
    meta = find_meta(root, category)
    urls, no_url = image_urls(meta)
    folder = root / "images"
    folder.mkdir(parents=True, exist_ok=True)
    failures: dict[str, dict[str, str]] = {}
    todo: list[tuple[str, str, Path]] = []
    skipped = 0
    for asin, url in urls.items():
        name = image_name(asin)
        if name is None:
            failures[asin] = {"url": url, "reason": "asin is not a safe file name"}
        elif (folder / name).is_file() and (folder / name).stat().st_size > 0:
            skipped += 1
        else:
            todo.append((asin, url, folder / name))
    log.info("%s: %d image URLs, %d already downloaded, %d to fetch", meta.name, len(urls), skipped, len(todo))
    ok = _fetch_all(todo, failures, workers=workers, retries=retries, timeout=timeout)
    report = {
        "meta_file": str(meta), "images_dir": str(folder.resolve()), "asins_with_url": len(urls),
        "ok": ok, "skipped": skipped, "failed": len(failures), "no_url": no_url,
        "failures": dict(sorted(failures.items())),
    }
    _write_atomic(folder / REPORT_NAME, (json.dumps(report, indent=2) + "\n").encode())
    return report


def _fetch_all(todo: list[tuple[str, str, Path]], failures: dict, *, workers: int, retries: int,
               timeout: float) -> int:
    ok = 0

    def one(job: tuple[str, str, Path]) -> str | None:
        return fetch(job[1], job[2], retries=retries, timeout=timeout)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for done, ((asin, url, _), reason) in enumerate(zip(todo, pool.map(one, todo)), 1):
            if reason is None:
                ok += 1
            else:
                failures[asin] = {"url": url, "reason": reason}
            if done % PROGRESS_EVERY == 0:
                log.info("%d/%d fetched (%d failed)", done, len(todo), len(failures))
    return ok


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m xsmoe_ray.data.images",
        description="Download Amazon reviews 2018 item images (imageURLHighRes, else imageURL) from "
        "meta_<Category>.json[.gz] to DATA_DIR/images/<asin>.jpg. Resumable: files already there are "
        "skipped. Writes images/download_report.json.",
    )
    p.add_argument("--data-dir", required=True, help="directory holding meta_<Category>.json[.gz]")
    p.add_argument("--category", default="", help="category file stem, e.g. Home_and_Kitchen "
                   "(optional when the directory holds one metadata file)")
    p.add_argument("--workers", type=int, default=8, help="parallel downloads (default 8)")
    p.add_argument("--retries", type=int, default=3, help="retries per image after the first try (default 3)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per request (default 10)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[images] %(message)s")
    try:
        report = download_amazon_images(args.data_dir, args.category, workers=args.workers,
                                        retries=args.retries, timeout=args.timeout)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"ok {report['ok']}, skipped {report['skipped']}, failed {report['failed']}, "
          f"no URL {report['no_url']}; report: {Path(report['images_dir']) / REPORT_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
