"""Synthetic H&M-layout dataset with modality-level preference drift (the embedded demo's data).

The generative story (DESIGN.md §3, "Synthetic")
------------------------------------------------
Catalogue. ``items`` articles grouped into products of 1-3 colour variants, like H&M's
``product_code`` / ``article_id``. Every article has two independent latent factors:

* a visual *style* (per article, ``styles`` clusters) rendered into its JPEG: each style owns a
  two-colour palette (evenly spaced hues) and a pattern (stripe, check, dot, ...); an article adds
  hue jitter, its own pattern frequency and offset and pixel noise, so a vision encoder can separate
  the styles but no two images are alike;
* a text *tone* (per product, shared by its variants as H&M's ``detail_desc`` is; ``tones``
  clusters) rendered into ``prod_name`` and ``detail_desc``: tone vocabulary (romantic, sporty,
  minimalist, ...) mixed with product words every tone uses.

``initial_item_frac`` of the articles exist from window 0; the rest are released in equal batches
in windows 1..W-1 (cold-start items), styles and tones balanced within every batch.

Time. ``days`` days from ``start_date`` are cut into ``windows`` equal spans and every window gets
the same number of interactions, so the equal-row-count chunks of the streaming protocol (DESIGN.md
§4) coincide with the drift windows.

Drift. A trend *phase* is a logit vector over styles and one over tones (orthogonal to the other
phases while the dimension allows, so phases really differ), scaled by ``trend_strength``. Windows
are grouped in spans of about W/5 and span g shows phase g, except that the fourth span brings
phase 0 back (``comeback`` of it, the rest new): a model that forgot window 0 pays for it. The tone
schedule lags the style schedule by one window, so at most boundaries one modality moves while the
other holds (modality-level drift). A user's taste in window w, per modality, is
``softmax(follow_u * trend_w + personal_u)``: how much the user follows trends (``trend_follow``)
and a personal offset (``personal_sigma``).

Interactions. Per window, users are drawn by activity (log-normal, ``activity_sigma``, times a
per-window gamma factor; ``new_user_frac`` of them join in a later window). Each user's steps, in
time order, pick a (style, tone) cell: the style repeats the user's previous one with probability
``style_stick``, otherwise it is drawn from the taste; the tone likewise and independently. This is
the sequential signal a sequence model can learn. Within the cell the article is drawn among those
released so far in proportion to a log-normal popularity (``pop_sigma``) times a freshness boost
``1 + fresh_boost * fresh_decay ** age``. A same-day repeat of one (user, article) is redrawn, so
H&M de-duplication of exact duplicate rows removes nothing and chunk boundaries stay aligned.

Everything is drawn from ``numpy`` generators spawned from the seed, one per component, and written
with fixed formatting: one seed gives byte-identical CSVs.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from xsmoe_ray.config import SynthConfig
from xsmoe_ray.data.hm import ARTICLE_COLUMNS, TRANSACTION_COLUMNS
from xsmoe_ray.data.synth_content import article_table, item_looks, render_image

META_FILE = "synth_meta.json"
COMEBACK_PHASE = 3  # the span index at which phase 0 partly returns


@dataclass(frozen=True)
class SynthKnobs:
    """Shape of the generative story; the defaults are the demo's (see the module docstring)."""

    days: int = 730  # about two years of transactions
    start_date: str = "2018-09-20"  # H&M's first transaction day
    initial_item_frac: float = 0.4  # articles on sale from window 0; the rest arrive later
    trend_strength: float = 2.0  # RMS logit of a trend phase: higher = sharper trends
    comeback: float = 0.75  # share of phase 0 in the phase that returns
    personal_sigma: float = 0.7  # std of a user's personal style/tone logits
    trend_follow: tuple[float, float] = (0.6, 1.4)  # per-user trend-following factor, uniform range
    style_stick: float = 0.5  # P(next item keeps the previous item's style)
    tone_stick: float = 0.5  # P(next item keeps the previous item's tone)
    pop_sigma: float = 1.0  # log-normal article popularity
    fresh_boost: float = 3.0  # extra weight of a just-released article ...
    fresh_decay: float = 0.5  # ... multiplied by this per window of age
    activity_sigma: float = 1.0  # log-normal user activity
    new_user_frac: float = 0.3  # customers who join in a later window
    channel_2_frac: float = 0.7  # customers preferring the online channel (2)
    missing_image_frac: float = 0.03  # articles without a JPEG (H&M has some)
    missing_desc_frac: float = 0.02  # products with an empty detail_desc
    discount_prob: float = 0.15  # transactions at 70% of the article's price
    image_noise: float = 10.0  # pixel noise std (0-255 scale)


DEFAULT_KNOBS = SynthKnobs()


def _empty_int() -> np.ndarray:
    return np.empty(0, dtype=np.int64)


@dataclass
class SynthWorld:
    """The latent truth of one generated dataset and its interactions (file order = time order).

    Item index ``i`` is row ``i`` of ``articles.csv`` (articles ascending by id); user index ``u`` is
    ``customer_id[u]``. Windows are 0..W-1; a phase id indexes ``style_trend`` / ``tone_trend``.
    """

    cfg: SynthConfig
    windows: int
    knobs: SynthKnobs
    day_bounds: np.ndarray  # (W+1,) window w covers days [day_bounds[w], day_bounds[w+1])
    # catalogue
    article_id: np.ndarray  # (I,) int64, ascending
    item_product: np.ndarray  # (I,) product index (variants share text and tone)
    item_style: np.ndarray  # (I,) visual style cluster
    item_tone: np.ndarray  # (I,) text tone cluster
    item_release: np.ndarray  # (I,) first window the article is on sale
    item_pop: np.ndarray  # (I,) base popularity
    item_price: np.ndarray  # (I,) list price
    item_has_image: np.ndarray  # (I,) bool
    item_rgb: np.ndarray  # (I, 2, 3) uint8 primary and secondary colour of the image
    item_pattern: np.ndarray  # (I,) index into PATTERNS
    item_freq: np.ndarray  # (I,) pattern repeats across the image
    item_shift: np.ndarray  # (I,) pattern offset in [0, 1)
    articles: dict[str, list]  # articles.csv columns, item order
    # drift
    style_phase: np.ndarray  # (W,) phase id of the style trend per window
    tone_phase: np.ndarray  # (W,) phase id of the tone trend per window
    style_trend: np.ndarray  # (P, S) logits per phase
    tone_trend: np.ndarray  # (P, K)
    phase_taste: np.ndarray  # (W, S, K) global taste over (style, tone) cells per window
    # customers
    customer_id: list[str]
    user_join: np.ndarray  # (U,) first window the customer can buy in
    user_activity: np.ndarray  # (U,)
    user_follow: np.ndarray  # (U,) trend-following factor
    user_style: np.ndarray  # (U, S) personal style logits
    user_tone: np.ndarray  # (U, K) personal tone logits
    user_channel: np.ndarray  # (U,) preferred sales channel
    # interactions, sorted by time
    user: np.ndarray = field(default_factory=_empty_int)
    item: np.ndarray = field(default_factory=_empty_int)
    day: np.ndarray = field(default_factory=_empty_int)  # days since start_date
    window: np.ndarray = field(default_factory=_empty_int)
    price: np.ndarray = field(default_factory=lambda: np.empty(0))
    channel: np.ndarray = field(default_factory=_empty_int)
    same_day_repeats: int = 0  # (user, article, day) repeats left after redrawing (normally 0)

    @property
    def n_items(self) -> int:
        return len(self.article_id)

    @property
    def n_users(self) -> int:
        return len(self.customer_id)

    def available(self, w: int) -> np.ndarray:
        """(I,) bool: articles on sale in window ``w``."""
        return self.item_release <= w

    def item_weight(self, w: int) -> np.ndarray:
        """(I,) sampling weight of each article inside its cell in window ``w`` (0 when not on sale)."""
        age = np.maximum(w - self.item_release, 0)
        fresh = 1.0 + self.knobs.fresh_boost * self.knobs.fresh_decay ** age
        return np.where(self.available(w), self.item_pop * fresh, 0.0)

    def user_taste(self, w: int) -> tuple[np.ndarray, np.ndarray]:
        """(U, S) style and (U, K) tone probabilities of every user in window ``w``."""
        follow = self.user_follow[:, None]
        return (_softmax(follow * self.style_trend[self.style_phase[w]] + self.user_style),
                _softmax(follow * self.tone_trend[self.tone_phase[w]] + self.user_tone))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# ---------------------------------------------------------------- drift schedule and trends

def phase_schedule(windows: int) -> tuple[np.ndarray, np.ndarray]:
    """Phase id per window for styles and tones; the tone schedule lags the style one by a window."""
    span = max(1, round(windows / 5))
    w = np.arange(windows)
    return w // span, np.maximum(w - 1, 0) // span


def _trend_logits(n_phases: int, n_clusters: int, knobs: SynthKnobs, rng: np.random.Generator) -> np.ndarray:
    """(P, C) phase logits with RMS ``trend_strength``; phase COMEBACK_PHASE is mostly phase 0."""
    out = np.empty((n_phases, n_clusters))
    basis: list[np.ndarray] = []
    for g, row in enumerate(rng.standard_normal((n_phases, n_clusters))):
        v = row - row.mean()  # softmax ignores shifts; centring makes the norms comparable
        if len(basis) < n_clusters - 1:  # keep phases orthogonal while the centred space has room
            for b in basis:
                v = v - (v @ b) * b
            basis.append(v / np.linalg.norm(v))
        out[g] = v / np.linalg.norm(v) * np.sqrt(n_clusters) * knobs.trend_strength
    if n_phases > COMEBACK_PHASE:
        out[COMEBACK_PHASE] = knobs.comeback * out[0] + (1 - knobs.comeback) * out[COMEBACK_PHASE]
    return out


# ---------------------------------------------------------------- catalogue

def _balanced(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` cluster labels in ``0..k-1`` with counts as equal as possible, shuffled."""
    return rng.permutation(np.arange(n) % k)


def _catalogue(cfg: SynthConfig, windows: int, knobs: SynthKnobs, rng: np.random.Generator) -> dict:
    n = cfg.items
    sizes = rng.choice([1, 2, 3], size=n, p=[0.6, 0.3, 0.1])  # colour variants per product
    last = int(np.searchsorted(np.cumsum(sizes), n))
    sizes = sizes[: last + 1]
    sizes[-1] -= int(sizes.sum()) - n
    product = np.repeat(np.arange(len(sizes)), sizes)
    variant = np.arange(n) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    # Articles are in id order and ids grow with release, as in H&M; variants share the release.
    n0 = max(1, round(knobs.initial_item_frac * n)) if windows > 1 else n
    pos = np.arange(n)
    release_by_pos = np.where(pos < n0, 0, 1 + (pos - n0) * max(windows - 1, 1) // max(n - n0, 1))
    first_of_product = np.cumsum(sizes) - sizes
    release = release_by_pos[first_of_product][product]
    style = np.empty(n, dtype=np.int64)
    tone_of_product = np.empty(len(sizes), dtype=np.int64)
    product_release = release[first_of_product]
    for w in np.unique(release):  # balance the clusters inside every release batch
        style[release == w] = _balanced(int((release == w).sum()), cfg.styles, rng)
        tone_of_product[product_release == w] = _balanced(int((product_release == w).sum()), cfg.tones, rng)
    codes = np.sort(rng.choice(np.arange(100_000, 960_000), size=len(sizes), replace=False))
    base, step = rng.integers(1, 20, len(sizes)), rng.integers(1, 10, len(sizes))
    article_id = codes[product] * 1000 + base[product] + step[product] * variant
    price = np.clip(0.025 * rng.lognormal(0.0, 0.6, n), 0.001, 0.5)
    has_image = np.ones(n, dtype=bool)
    n_missing = max(1, round(knobs.missing_image_frac * n)) if n > 1 else 0
    has_image[rng.choice(n, size=n_missing, replace=False)] = False
    return dict(article_id=article_id.astype(np.int64), item_product=product, item_style=style,
                item_tone=tone_of_product[product], item_release=release.astype(np.int64),
                item_pop=rng.lognormal(0.0, knobs.pop_sigma, n), item_price=np.round(price, 6),
                item_has_image=has_image, product_code=codes)



# ---------------------------------------------------------------- interactions

def _draw_rows(probs: np.ndarray, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One category per row from ``probs[rows]`` by inverse CDF (vectorised)."""
    cdf = np.cumsum(probs, axis=1)[rows]
    return np.minimum((cdf < rng.random(len(rows))[:, None]).sum(1), probs.shape[1] - 1)


def _sticky(fresh: np.ndarray, user: np.ndarray, last: np.ndarray, stick: float,
            rng: np.random.Generator) -> np.ndarray:
    """Rows grouped by user in time order: each keeps the previous row's value with P=stick.

    A user's first row in the window continues from ``last`` (their previous window), -1 = none.
    Implemented as a forward fill from the 'anchor' rows (fresh draws and carried values).
    """
    n = len(fresh)
    stay = rng.random(n) < stick
    start = np.ones(n, dtype=bool)
    start[1:] = user[1:] != user[:-1]
    value = fresh.copy()
    carried = start & stay & (last[user] >= 0)
    value[carried] = last[user[carried]]
    anchor = ~stay | start
    return value[np.maximum.accumulate(np.where(anchor, np.arange(n), 0))]


class _CellSampler:
    """Draws articles inside (style, tone) cells by weight, in one ``searchsorted`` per batch."""

    def __init__(self, cell: np.ndarray, weight: np.ndarray, n_styles: int, n_tones: int):
        on_sale = np.flatnonzero(weight > 0)
        self.order = on_sale[np.argsort(cell[on_sale], kind="stable")]
        c, w = cell[self.order], weight[self.order]
        n_cells = n_styles * n_tones
        totals = np.bincount(c, w, n_cells)
        within = (np.cumsum(w) - np.concatenate([[0.0], np.cumsum(totals)])[c]) / totals[c]
        ends = np.searchsorted(c, np.arange(n_cells), side="right") - 1
        within[ends[totals > 0]] = 1.0  # exact cell edges, whatever the rounding
        self.key = c + within  # cell k's articles own the interval (k, k+1]
        self.cdf_all = np.cumsum(w) / w.sum()
        self.remap = _nearest_stocked(totals > 0, n_styles, n_tones)

    def draw(self, cell: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        u = 1.0 - rng.random(len(cell))  # (0, 1], so a draw never lands on the previous cell's edge
        pos = np.searchsorted(self.key, self.remap[cell] + u, side="left")
        return self.order[np.minimum(pos, len(self.order) - 1)]

    def draw_any(self, n: int, rng: np.random.Generator) -> np.ndarray:
        pos = np.searchsorted(self.cdf_all, rng.random(n), side="right")
        return self.order[np.minimum(pos, len(self.order) - 1)]


def _nearest_stocked(stocked: np.ndarray, n_styles: int, n_tones: int) -> np.ndarray:
    """Cell -> itself if it has articles on sale, else the nearest stocked cell (same style first)."""
    s, t = np.divmod(np.arange(n_styles * n_tones), n_tones)
    remap = np.arange(n_styles * n_tones)
    cand = np.flatnonzero(stocked)
    for c in np.flatnonzero(~stocked):
        dt = np.minimum(abs(t[cand] - t[c]), n_tones - abs(t[cand] - t[c]))
        ds = np.minimum(abs(s[cand] - s[c]), n_styles - abs(s[cand] - s[c]))
        remap[c] = cand[np.lexsort((dt, ds))[0]]  # smallest style distance, then tone distance
    return remap


def _repeats(user: np.ndarray, item: np.ndarray, day: np.ndarray, n_users: int, n_items: int) -> np.ndarray:
    """True for rows repeating an earlier (user, article, day) row."""
    key = (day.astype(np.int64) * n_users + user) * n_items + item
    order = np.argsort(key, kind="stable")
    dup = np.zeros(len(key), dtype=bool)
    dup[order[1:][key[order][1:] == key[order][:-1]]] = True
    return dup


def _sample_window(world: SynthWorld, w: int, n_rows: int, last: np.ndarray, rng: np.random.Generator) -> dict:
    """The window's rows in time order; updates ``last`` ((2, U) style/tone of each user's last item)."""
    cfg = world.cfg
    activity = world.user_activity * rng.gamma(2.0, 0.5, world.n_users) * (world.user_join <= w)
    user = np.repeat(np.arange(world.n_users), rng.multinomial(n_rows, activity / activity.sum()))
    lo, hi = world.day_bounds[w], world.day_bounds[w + 1]
    t = rng.uniform(lo, hi, n_rows)
    t = t[np.lexsort((t, user))]  # user is already grouped: this orders each user's steps in time
    style_p, tone_p = world.user_taste(w)
    style = _sticky(_draw_rows(style_p, user, rng), user, last[0], world.knobs.style_stick, rng)
    tone = _sticky(_draw_rows(tone_p, user, rng), user, last[1], world.knobs.tone_stick, rng)
    cell = style * cfg.tones + tone
    sampler = _CellSampler(world.item_style * cfg.tones + world.item_tone, world.item_weight(w),
                           cfg.styles, cfg.tones)
    item = sampler.draw(cell, rng)
    day = np.minimum(np.floor(t).astype(np.int64), hi - 1)
    for attempt in range(8):  # redraw same-day repeats: in-cell first, then anywhere
        dup = _repeats(user, item, day, world.n_users, world.n_items)
        if not dup.any():
            break
        item[dup] = sampler.draw(cell[dup], rng) if attempt < 3 else sampler.draw_any(int(dup.sum()), rng)
    ends = np.flatnonzero(np.r_[user[1:] != user[:-1], True]) if n_rows else _empty_int()
    last[0, user[ends]], last[1, user[ends]] = world.item_style[item[ends]], world.item_tone[item[ends]]
    order = np.argsort(t, kind="stable")
    user, item, day = user[order], item[order], day[order]
    discount = rng.random(n_rows) < world.knobs.discount_prob
    keep_channel = rng.random(n_rows) < 0.9
    pref = world.user_channel[user]
    return dict(user=user, item=item, day=day, window=np.full(n_rows, w, dtype=np.int64),
                price=np.round(world.item_price[item] * np.where(discount, 0.7, 1.0), 6),
                channel=np.where(keep_channel, pref, 3 - pref),
                repeats=int(_repeats(user, item, day, world.n_users, world.n_items).sum()))


# ---------------------------------------------------------------- public API

def generate(cfg: SynthConfig, windows: int = 10, knobs: SynthKnobs = DEFAULT_KNOBS) -> SynthWorld:
    """Draw the latent world and its interactions (no files)."""
    if windows < 1:
        raise ValueError(f"windows must be >= 1, got {windows}")
    if cfg.interactions < windows or knobs.days < windows:
        raise ValueError(f"need at least one interaction and one day per window "
                         f"(interactions={cfg.interactions}, days={knobs.days}, windows={windows})")
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(cfg.seed).spawn(6)]
    cat = _catalogue(cfg, windows, knobs, rngs[0])
    looks = item_looks(cat["item_style"], cfg.styles, rngs[1])
    articles = article_table(cat, looks, cfg.tones, knobs.missing_desc_frac, rngs[2])
    style_phase, tone_phase = phase_schedule(windows)
    n_phases = int(max(style_phase.max(), tone_phase.max())) + 1
    style_trend = _trend_logits(n_phases, cfg.styles, knobs, rngs[3])
    tone_trend = _trend_logits(n_phases, cfg.tones, knobs, rngs[3])
    taste = _softmax(style_trend[style_phase])[:, :, None] * _softmax(tone_trend[tone_phase])[:, None, :]

    r, U = rngs[4], cfg.users
    join = np.zeros(U, dtype=np.int64)
    n_late = int(knobs.new_user_frac * U) if windows > 1 else 0
    join[U - n_late:] = r.integers(1, max(windows, 2), n_late)
    ids = r.integers(0, 256, (U, 32), dtype=np.uint8)
    world = SynthWorld(
        cfg=cfg, windows=windows, knobs=knobs,
        day_bounds=(np.arange(windows + 1) * knobs.days) // windows,
        article_id=cat["article_id"], item_product=cat["item_product"], item_style=cat["item_style"],
        item_tone=cat["item_tone"], item_release=cat["item_release"], item_pop=cat["item_pop"],
        item_price=cat["item_price"], item_has_image=cat["item_has_image"], articles=articles, **looks,
        style_phase=style_phase, tone_phase=tone_phase, style_trend=style_trend, tone_trend=tone_trend,
        phase_taste=taste, customer_id=[row.tobytes().hex() for row in ids], user_join=join,
        user_activity=r.lognormal(0.0, knobs.activity_sigma, U), user_follow=r.uniform(*knobs.trend_follow, U),
        user_style=r.normal(0.0, knobs.personal_sigma, (U, cfg.styles)),
        user_tone=r.normal(0.0, knobs.personal_sigma, (U, cfg.tones)),
        user_channel=np.where(r.random(U) < knobs.channel_2_frac, 2, 1),
    )
    per_window = np.full(windows, cfg.interactions // windows) + (np.arange(windows) < cfg.interactions % windows)
    last = np.full((2, U), -1, dtype=np.int64)
    parts = [_sample_window(world, w, int(n), last, rngs[5]) for w, n in enumerate(per_window)]
    for name in ("user", "item", "day", "window", "price", "channel"):
        setattr(world, name, np.concatenate([p[name] for p in parts]))
    world.same_day_repeats = sum(p["repeats"] for p in parts)
    return world


def _prepare_out(out: Path) -> None:
    """Refuse to overwrite a dataset this generator did not write; clear a previous synthetic one."""
    ours = (out / META_FILE).exists()
    # any file at all, not only H&M names: a user's own dataset given without its format lands here
    present = sorted(e.name for e in out.iterdir()) if out.is_dir() and not ours else []
    if present:
        shown = ", ".join(present[:5]) + (f" and {len(present) - 5} more" if len(present) > 5 else "")
        raise FileExistsError(f"{out} is not empty ({shown}) and was not written by the synthetic generator "
                              f"(no {META_FILE}). If it is your dataset, prepare it in its own format (prepare --format, or "
                              "data.format=hm|amazon|generic|recbole); otherwise choose an empty directory "
                              "for the synthetic data")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file; the synthetic generator needs a directory")
    if (out / "images").exists():
        shutil.rmtree(out / "images")  # stale JPEGs of another seed would survive otherwise
    out.mkdir(parents=True, exist_ok=True)


def _write_articles(world: SynthWorld, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(ARTICLE_COLUMNS)
        writer.writerows(zip(*(world.articles[c] for c in ARTICLE_COLUMNS)))
    os.replace(tmp, path)


def _write_transactions(world: SynthWorld, path: Path) -> None:
    dates = (np.datetime64(world.knobs.start_date) + np.arange(world.knobs.days)).astype(str)
    table = pa.table({
        "t_dat": pa.array(dates).take(pa.array(world.day)),
        "customer_id": pa.array(world.customer_id).take(pa.array(world.user)),
        "article_id": pa.array(world.articles["article_id"]).take(pa.array(world.item)),
        "price": pa.array(world.price, pa.float64()),
        "sales_channel_id": pa.array(world.channel, pa.int8()),
    })
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:  # H&M's header is unquoted; pyarrow would quote it
        f.write((",".join(TRANSACTION_COLUMNS) + "\n").encode())
        pacsv.write_csv(table, f, pacsv.WriteOptions(include_header=False, quoting_style="none"))
    os.replace(tmp, path)


def _write_images(world: SynthWorld, root: Path) -> int:
    size, noise = world.cfg.image_size, world.knobs.image_noise
    seeds = np.random.SeedSequence([world.cfg.seed, 7]).spawn(world.n_items)  # per article: order-free
    written = 0
    for i in np.flatnonzero(world.item_has_image):
        aid = world.articles["article_id"][i]
        folder = root / aid[:3]
        folder.mkdir(parents=True, exist_ok=True)
        img = render_image(world.item_rgb[i].astype(np.float64), int(world.item_pattern[i]), int(world.item_freq[i]),
                           float(world.item_shift[i]), size, noise, np.random.default_rng(seeds[i]))
        img.save(folder / f"{aid}.jpg", "JPEG", quality=90)
        written += 1
    return written


def summarize(world: SynthWorld) -> dict:
    """Sizes, date range and drift schedule of a world (what ``write_hm`` returns)."""
    start = np.datetime64(world.knobs.start_date)
    n = len(world.day)
    return {
        "customers": world.n_users,
        "active_customers": int(len(np.unique(world.user))),
        "articles": world.n_items,
        "transactions": n,
        "windows": world.windows,
        "articles_per_release_window": np.bincount(world.item_release, minlength=world.windows).tolist(),
        "articles_without_image": int((~world.item_has_image).sum()),
        "articles_without_desc": sum(1 for d in world.articles["detail_desc"] if not d),
        "date_from": str(start + int(world.day[0])) if n else None,
        "date_to": str(start + int(world.day[-1])) if n else None,
        "style_phase": world.style_phase.tolist(),
        "tone_phase": world.tone_phase.tolist(),
        "same_day_repeats": world.same_day_repeats,
    }


def write_hm(world: SynthWorld, out: str | Path) -> dict:
    """Write ``transactions_train.csv``, ``articles.csv``, ``images/`` and ``synth_meta.json`` to ``out``.

    ``synth_meta.json`` (config, knobs, summary; ``complete`` false until the end) marks the folder
    as generated, so a later run may overwrite it and a reader can tell a half-written one.
    """
    out = Path(out)
    _prepare_out(out)
    meta = {"generator": "xsmoe_ray.data.synthetic", "config": asdict(world.cfg), "windows": world.windows,
            "knobs": asdict(world.knobs), "complete": False}
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    _write_articles(world, out / "articles.csv")
    _write_transactions(world, out / "transactions_train.csv")
    summary = summarize(world)
    summary["images"] = _write_images(world, out / "images")
    meta.update(complete=True, summary=summary)
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return summary


def make_synthetic(out: str | Path, cfg: SynthConfig, windows: int = 10,
                   knobs: SynthKnobs = DEFAULT_KNOBS) -> dict:
    """Generate the world for ``cfg`` and write it to ``out`` in H&M layout; returns the summary."""
    return write_hm(generate(cfg, windows, knobs), out)
