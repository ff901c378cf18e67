"""The synthetic drift dataset: H&M layout, determinism, real drift, learnable signal, CLI."""

from __future__ import annotations

import csv
import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xsmoe_ray.config import SynthConfig
from xsmoe_ray.data.synthetic import ARTICLE_COLUMNS, generate, make_synthetic, write_hm

SMALL = SynthConfig(users=300, items=150, interactions=12_000, seed=1)
ROOT = Path(__file__).resolve().parents[1]
TX_HEADER = "t_dat,customer_id,article_id,price,sales_channel_id"


@pytest.fixture(scope="module")
def world():
    return generate(SMALL)


@pytest.fixture(scope="module")
def written(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return out, write_hm(world, out)


def _read_articles(out: Path) -> list[dict]:
    with open(out / "articles.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_hm_layout(written):
    out, summary = written
    lines = (out / "transactions_train.csv").read_text().splitlines()
    assert lines[0] == TX_HEADER and len(lines) - 1 == SMALL.interactions == summary["transactions"]
    rows = [line.split(",") for line in lines[1:]]
    dates = [r[0] for r in rows]
    assert dates == sorted(dates) and all(len(d) == 10 and d[4] == d[7] == "-" for d in dates)
    assert all(len(r[1]) == 64 and int(r[1], 16) >= 0 and r[1] == r[1].lower() for r in rows[:500])
    assert {r[4] for r in rows} == {"1", "2"} and all(float(r[3]) > 0 for r in rows[:500])

    with open(out / "articles.csv", newline="") as f:
        assert tuple(next(csv.reader(f))) == ARTICLE_COLUMNS
    articles = _read_articles(out)
    ids = [a["article_id"] for a in articles]
    assert len(ids) == SMALL.items == len(set(ids)) and all(len(i) == 10 and i[0] == "0" for i in ids)
    assert {r[2] for r in rows} <= set(ids)
    assert all(a["prod_name"] for a in articles)
    assert sum(bool(a["detail_desc"]) for a in articles) >= 0.9 * len(articles)

    with_image = [i for i in ids if (out / "images" / i[:3] / f"{i}.jpg").exists()]
    assert 0 < len(ids) - len(with_image) <= 0.1 * len(ids)  # some, not many, lack a picture
    for i in with_image[:20]:
        with Image.open(out / "images" / i[:3] / f"{i}.jpg") as img:
            assert img.format == "JPEG" and img.size == (SMALL.image_size, SMALL.image_size)


def test_deterministic_per_seed(written, tmp_path):
    out, _ = written
    again = make_synthetic(tmp_path / "again", SMALL)
    other = make_synthetic(tmp_path / "other", dataclasses.replace(SMALL, seed=2))
    for name in ("transactions_train.csv", "articles.csv"):
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes()
        assert (tmp_path / "other" / name).read_bytes() != (out / name).read_bytes()
    some = sorted((out / "images").rglob("*.jpg"))[:5]
    assert all((tmp_path / "again" / p.relative_to(out)).read_bytes() == p.read_bytes() for p in some)
    assert again["transactions"] == other["transactions"]


def test_refuses_foreign_dataset(world, tmp_path):
    (tmp_path / "articles.csv").write_text("not ours\n")
    with pytest.raises(FileExistsError):
        write_hm(world, tmp_path)


def test_windows_are_equal_count_time_periods(world):
    counts = np.bincount(world.window, minlength=world.windows)
    assert counts.max() - counts.min() <= 1
    assert np.all(np.diff(world.day) >= 0) and np.all(np.diff(world.window) >= 0)
    assert world.same_day_repeats == 0  # de-duplication of exact (user, article, day) rows drops nothing
    assert all((world.item_release[world.item[world.window == w]] <= w).all() for w in range(world.windows))
    assert all((world.item_release == w).any() for w in range(world.windows))  # new articles every window


def _tv(world, labels: np.ndarray, k: int, a: int, b: int) -> float:
    pa, pb = (np.bincount(labels[world.window == w], minlength=k) / (world.window == w).sum() for w in (a, b))
    return 0.5 * float(np.abs(pa - pb).sum())


@pytest.mark.parametrize("factor", ["style", "tone"])
def test_drift_is_real_and_comes_back(world, factor):
    labels = (world.item_style if factor == "style" else world.item_tone)[world.item]
    k = SMALL.styles if factor == "style" else SMALL.tones
    tv = [_tv(world, labels, k, 0, w) for w in range(world.windows)]
    assert tv[1] < 0.15  # window 1 still shares window 0's phase for both factors
    assert max(tv[-2:]) > 0.3  # late windows differ from the start
    assert min(tv[6:]) < min(tv[3:6])  # an old phase returns: some late window is closer than the middle


def _previous_item(world) -> np.ndarray:
    n = len(world.user)
    order = np.lexsort((np.arange(n), world.user))  # per user, in time (= file) order
    prev = np.full(n, -1)
    same = world.user[order][1:] == world.user[order][:-1]
    prev[order[1:][same]] = world.item[order[:-1][same]]
    return prev


def _hr10(scores: np.ndarray, target: np.ndarray) -> float:
    hit = scores[np.arange(len(target)), target][:, None]
    return float(np.mean((scores > hit).sum(1) < 10))


def test_oracle_beats_previous_window_popularity(world):
    """Knowing the window's trend, the clusters and stickiness ranks next items far better."""
    prev, k = _previous_item(world), SMALL.tones
    cell = world.item_style * k + world.item_tone
    oracle_hr, pop_hr = [], []
    for w in range(2, world.windows):
        rows = np.flatnonzero((world.window == w) & (prev >= 0))
        p, target = prev[rows], world.item[rows]
        style_p, tone_p = world.phase_taste[w].sum(1), world.phase_taste[w].sum(0)
        ks, kt = world.knobs.style_stick, world.knobs.tone_stick
        f_style = ks * (world.item_style == world.item_style[p][:, None]) + (1 - ks) * style_p[world.item_style]
        f_tone = kt * (world.item_tone == world.item_tone[p][:, None]) + (1 - kt) * tone_p[world.item_tone]
        weight = world.item_weight(w)
        within = weight / np.maximum(np.bincount(cell, weight, SMALL.styles * k)[cell], 1e-12)
        oracle_hr.append(_hr10(f_style * f_tone * within, target))
        pop = np.bincount(world.item[world.window == w - 1], minlength=world.n_items).astype(float)
        pop_hr.append(_hr10(np.broadcast_to(pop, (len(rows), world.n_items)), target))
    assert np.mean(oracle_hr) > np.mean(pop_hr) + 0.2
    assert all(o > p for o, p in zip(oracle_hr, pop_hr))


def test_sequential_consistency(world):
    prev = _previous_item(world)
    has = prev >= 0
    same_style = np.mean(world.item_style[world.item[has]] == world.item_style[prev[has]])
    assert same_style > 1.5 / SMALL.styles  # far above what independent draws would give


def test_cli_help_and_write(tmp_path):
    py = sys.executable
    helped = subprocess.run([py, "-m", "xsmoe_ray.synth", "--help"], capture_output=True, text=True, check=True,
                            cwd=ROOT)
    assert "--interactions" in helped.stdout and "--image-size" in helped.stdout
    out = tmp_path / "cli"
    subprocess.run([py, "-m", "xsmoe_ray.synth", "--out", str(out), "--users", "50", "--items", "40",
                    "--interactions", "800", "--seed", "3", "--windows", "5", "--styles", "3", "--tones", "4",
                    "--image-size", "16"], capture_output=True, text=True, check=True, cwd=ROOT)
    assert (out / "transactions_train.csv").read_text().count("\n") == 801
    assert len(_read_articles(out)) == 40
    jpgs = list((out / "images").rglob("*.jpg"))
    assert jpgs and Image.open(jpgs[0]).size == (16, 16)
    bad = subprocess.run([py, "-m", "xsmoe_ray.synth", "--out", str(tmp_path / "x"), "--styles", "1"],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "styles" in bad.stderr
