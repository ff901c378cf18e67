"""Amazon reviews 2018 image downloader: ``python -m xsmoe_ray.data.images --data-dir DIR [--category C]``.

The 2018 dumps ship image URLs, not images (DESIGN.md §3). For every asin of
``meta_<Category>.json[.gz]`` (first line per asin) this fetches the first URL of
``imageURLHighRes``, else of ``imageURL``, to ``<DIR>/images/<asin>.jpg``, where
:func:`xsmoe_ray.data.amazon.load_amazon` looks for it.

* Resumable: an ``<asin>.jpg`` that is an image is skipped, and a download is written to a hidden
  temporary name and renamed, so an interrupted run never leaves a truncated ``.jpg`` behind.
* Retries: connection errors, timeouts, HTTP 5xx, 408 and 429 are retried ``retries`` times with
  exponential backoff (``BACKOFF_S``, doubled each time); other HTTP errors (404, 403) are final.
* Only http(s) URLs are fetched (a ``file://`` URL in a dump must not copy local files). Non-ASCII
  characters in a URL are percent-encoded (an already valid URL, ``%XX`` escapes included, is sent
  unchanged); a URL that still cannot be sent fails on its own, with its reason.
* Only images are kept: a response that is not a JPEG, PNG, GIF or WEBP (by its first bytes) or another
  format Pillow identifies (an HTML error page with HTTP 200, say) fails with ``not an image``. A
  ``<asin>.jpg`` already there that is not an image is fetched again, not skipped.
* ``images/download_report.json`` (also returned): counts ``ok`` (downloaded now), ``skipped``
  (already there), ``failed`` (with ``failures``: asin → url and reason), ``no_url`` and
  ``refetched_non_images`` (existing files that were not images, fetched again; when that fails too,
  the failure says the old file was kept).

Exit codes: 0 when some image was downloaded or already there (or no asin has a URL); 1 when there
were image URLs and every one failed (a one-line summary on stderr; reasons in the report); 2 on bad
input (no metadata file, an unreadable one).
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import logging
import os
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from xsmoe_ray.data.amazon import find_meta, image_name, iter_records, text_id
from xsmoe_ray.data.schema import DataError

REPORT_NAME = "download_report.json"
BACKOFF_S = 0.5  # first retry delay; tests shorten it
USER_AGENT = "xsmoe_ray-image-downloader/0.1 (+urllib)"
PROGRESS_EVERY = 1000
TRANSIENT_HTTP = (408, 429)
HEAD_BYTES = 16
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a")
_URL_SAFE = "!#$%&'()*+,/:;=?@[]~"  # RFC 3986's reserved characters and "%", so existing escapes stay
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
    try:
        request = urllib.request.Request(request_url(url), headers={"User-Agent": USER_AGENT})
    except ValueError as e:  # e.g. a host name that IDNA cannot encode
        return f"bad URL: {type(e).__name__}: {e}"
    reason = ""
    for attempt in range(retries + 1):
        reason, final = _try_once(request, target, timeout)
        if reason is None or final:
            return reason
        if attempt < retries:
            time.sleep(BACKOFF_S * 2**attempt)
    return reason


def request_url(url: str) -> str:
    """``url`` with non-ASCII characters percent-encoded (http.client sends ASCII only) and a non-ASCII
    host IDNA-encoded. A valid URL comes back unchanged: every character RFC 3986 allows is safe."""
    netloc = urllib.parse.urlsplit(url).netloc
    if not netloc.isascii():  # percent-encoding a host name would only make DNS fail
        url = url.replace(netloc, netloc.encode("idna").decode("ascii"), 1)
    return urllib.parse.quote(url, safe=_URL_SAFE)


def _try_once(request: urllib.request.Request, target: Path, timeout: float) -> tuple[str | None, bool]:
    """(None, _) when saved, else (reason, whether asking again is pointless)."""
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data, kind = response.read(), response.headers.get_content_type()
        if not data:
            return "empty response", False
        if not is_image(data[:HEAD_BYTES], io.BytesIO(data)):
            return not_an_image(data, kind), True  # the server's answer for this URL, not a hiccup
        _write_atomic(target, data)
        return None, False
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code} {e.reason}", e.code < 500 and e.code not in TRANSIENT_HTTP
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        return f"{type(e).__name__}: {getattr(e, 'reason', e)}", False
    except ValueError as e:  # a URL or header http.client cannot encode: it fails the same way every time
        return f"{type(e).__name__}: {e}", True


def is_image(head: bytes, source) -> bool:
    """Whether ``head`` (the first bytes) starts like a JPEG, PNG, GIF or WEBP, else whether Pillow
    identifies ``source`` (a path or a binary file) as any image it reads."""
    if head.startswith(_IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return True
    from PIL import Image  # only for the rare formats without a known signature

    try:
        with Image.open(source):
            return True
    except Image.DecompressionBombError:  # identified, only too large to open with Pillow's default limit
        return True
    except Exception:  # Pillow's plugins raise many kinds on non-images; each means "not one"
        return False


def not_an_image(data: bytes, kind: str = "") -> str:
    head = data[:HEAD_BYTES].decode("ascii", "backslashreplace")
    return f"not an image (starts with {head!r}" + (f", Content-Type {kind})" if kind else ")")


def _existing_image(path: Path) -> bool | None:
    """None when there is no non-empty file at ``path``, else whether it is an image."""
    if not path.is_file() or path.stat().st_size == 0:
        return None
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
    return is_image(head, path)


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
    todo, skipped, not_images = _plan(urls, folder, failures)
    log.info("%s: %d image URLs, %d already downloaded, %d to fetch (%d existing file(s) are not images)",
             meta.name, len(urls), skipped, len(todo), len(not_images))
    ok = _fetch_all(todo, failures, workers=workers, retries=retries, timeout=timeout)
    for asin in not_images.intersection(failures):
        failures[asin]["existing_file"] = "not an image; kept, and fetched again on the next run"
    report = {
        "meta_file": str(meta), "images_dir": str(folder.resolve()), "asins_with_url": len(urls),
        "ok": ok, "skipped": skipped, "failed": len(failures), "no_url": no_url,
        "refetched_non_images": len(not_images), "failures": dict(sorted(failures.items())),
    }
    _write_atomic(folder / REPORT_NAME, (json.dumps(report, indent=2) + "\n").encode())
    return report


def _plan(urls: dict[str, str], folder: Path, failures: dict
          ) -> tuple[list[tuple[str, str, Path]], int, set[str]]:
    """(downloads to do, images already there, asins whose existing file is not an image)."""
    todo: list[tuple[str, str, Path]] = []
    skipped = 0
    not_images: set[str] = set()
    for asin, url in urls.items():
        name = image_name(asin)
        if name is None:
            failures[asin] = {"url": url, "reason": "asin is not a safe file name"}
            continue
        existing = _existing_image(folder / name)
        if existing:
            skipped += 1
            continue
        if existing is False:  # e.g. an HTML page saved by an older version: skipping it would keep it forever
            not_images.add(asin)
        todo.append((asin, url, folder / name))
    return todo, skipped, not_images


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
        "skipped (files that are not images are fetched again). Writes images/download_report.json.",
        epilog="Exit codes: 0 when some image was downloaded or already there (or no asin has a URL); 1 when "
        "every image URL failed; 2 on bad input (no or an unreadable metadata file).",
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
    path = Path(report["images_dir"]) / REPORT_NAME
    print(f"ok {report['ok']}, skipped {report['skipped']}, failed {report['failed']}, "
          f"no URL {report['no_url']}, refetched non-images {report['refetched_non_images']}; report: {path}")
    if report["failed"] and not report["ok"] and not report["skipped"]:
        reason, count = Counter(f["reason"] for f in report["failures"].values()).most_common(1)[0]
        print(f"error: all {report['failed']} image URL(s) failed; the most common reason ({count}x): {reason}; "
              f"every reason is in {path}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
