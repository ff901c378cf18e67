"""What synthetic articles look like and say: H&M vocabularies, style images and tone texts.

Used by :mod:`xsmoe_ray.data.synthetic`, which owns the generative story (catalogue, drift,
interactions) and the writing of the files. A style becomes a two-colour palette and a pattern
rendered into the JPEG; a tone becomes the vocabulary of ``prod_name`` and ``detail_desc``.
"""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image

from xsmoe_ray.data.hm import ARTICLE_COLUMNS


# Patterns a style can be drawn with, and H&M's graphical appearance they are listed under.
PATTERNS = ((1010016, "Solid"), (1010017, "Stripe"), (1010004, "Check"), (1010008, "Dot"),
            (1010001, "All over pattern"), (1010010, "Melange"), (1010026, "Other structure"))
# (code, name, perceived value id, value name, master id, master name, RGB) - nearest names the image.
COLOURS = (
    (9, "Black", 4, "Dark", 5, "Black", (25, 25, 25)), (10, "White", 3, "Light", 9, "White", (240, 240, 240)),
    (7, "Grey", 2, "Medium Dusty", 12, "Grey", (128, 128, 128)),
    (13, "Beige", 2, "Medium Dusty", 11, "Beige", (200, 180, 150)),
    (42, "Red", 1, "Bright", 18, "Red", (205, 35, 45)), (43, "Dark Red", 4, "Dark", 18, "Red", (115, 20, 30)),
    (52, "Pink", 1, "Bright", 4, "Pink", (230, 110, 170)),
    (51, "Light Pink", 3, "Light", 4, "Pink", (245, 190, 210)),
    (32, "Orange", 1, "Bright", 17, "Orange", (240, 140, 30)),
    (22, "Yellow", 1, "Bright", 8, "Yellow", (240, 220, 40)),
    (62, "Dark Green", 4, "Dark", 19, "Green", (30, 90, 40)), (63, "Green", 5, "Medium", 19, "Green", (60, 170, 70)),
    (82, "Turquoise", 5, "Medium", 7, "Turquoise", (40, 190, 190)),
    (71, "Light Blue", 3, "Light", 2, "Blue", (150, 190, 235)), (72, "Blue", 5, "Medium", 2, "Blue", (40, 90, 200)),
    (73, "Dark Blue", 4, "Dark", 2, "Blue", (20, 30, 90)),
    (92, "Purple", 5, "Medium", 3, "Lilac Purple", (130, 60, 170)),
    (91, "Light Purple", 3, "Light", 3, "Lilac Purple", (200, 170, 230)),
)
# (type no, type name, product group, garment group no, garment group name, department no, department name)
PRODUCT_TYPES = (
    (253, "Vest top", "Garment Upper body", 1002, "Jersey Basic", 1676, "Jersey Basic"),
    (255, "T-shirt", "Garment Upper body", 1005, "Jersey Fancy", 1626, "Jersey Fancy"),
    (252, "Sweater", "Garment Upper body", 1003, "Knitwear", 1722, "Knitwear"),
    (258, "Blouse", "Garment Upper body", 1010, "Blouses", 1336, "Blouse"),
    (259, "Shirt", "Garment Upper body", 1011, "Shirts", 1747, "Shirt"),
    (245, "Jacket", "Garment Upper body", 1007, "Outdoor", 1515, "Outdoor"),
    (272, "Trousers", "Garment Lower body", 1009, "Trousers", 1722, "Trouser"),
    (274, "Shorts", "Garment Lower body", 1025, "Shorts", 1640, "Shorts"),
    (275, "Skirt", "Garment Lower body", 1012, "Skirts", 1310, "Skirt"),
    (265, "Dress", "Garment Full body", 1013, "Dresses Ladies", 1313, "Dress"),
    (264, "Jumpsuit/Playsuit", "Garment Full body", 1013, "Dresses Ladies", 1313, "Dress"),
    (306, "Bra", "Underwear", 1017, "Under-, Nightwear", 1339, "Clean Lingerie"),
    (87, "Hat/beanie", "Accessories", 1019, "Accessories", 3209, "Small Accessories"),
    (94, "Sneakers", "Shoes", 1020, "Shoes", 3510, "Shoes"),
)
# (index code, index name, index group no, index group name, [(section no, section name), ...])
INDEXES = (
    ("A", "Ladieswear", 1, "Ladieswear", ((16, "Womens Everyday Basics"), (15, "Womens Everyday Collection"))),
    ("B", "Lingeries/Tights", 1, "Ladieswear", ((61, "Womens Lingerie"),)),
    ("D", "Divided", 2, "Divided", ((53, "Divided Collection"), (51, "Divided Basics"))),
    ("F", "Menswear", 3, "Menswear", ((21, "Contemporary Casual"), (26, "Men Underwear"))),
    ("H", "Children Sizes 92-140", 4, "Baby/Children", ((46, "Kids Girl"), (47, "Kids Boy"))),
    ("S", "Sport", 26, "Sport", ((5, "Ladies H&M Sport"), (22, "Men H&M Sport"))),
)
# Tone vocabularies: words that carry a tone, and closing lines; more tones get pseudo-word lexicons.
TONES = (
    ("delicate dreamy graceful feminine flowing sweetheart tender blush ruffled airy whimsical lacy",
     "Made for slow summer evenings.|A soft touch of romance.|Pretty from every angle."),
    ("breathable quick-dry performance training stretchy sweat-wicking active racerback reflective "
     "ventilated athletic dynamic", "Built to move with you.|Ready for your next workout.|Go further, go faster."),
    ("clean-lined understated essential simple pared-back sleek neutral streamlined timeless modern "
     "uncluttered refined", "Less, but better.|A quiet wardrobe staple.|Nothing more than needed."),
    ("bold rebellious studded distressed grunge raw-edged statement dark fierce ripped rock-inspired "
     "unapologetic", "Break the rules.|Turn it up loud.|Made to stand out."),
    ("fun cheerful quirky bright bubbly colourful cheeky happy sunny bouncy jolly zany",
     "Guaranteed to make you smile.|Life is too short for boring clothes.|Pure good mood."),
    ("tailored sophisticated polished luxurious classic elegant crisp chic sharp impeccable "
     "distinguished stately", "Effortless elegance for any occasion.|A true classic.|Dressed to impress."),
    ("boho earthy free-spirited embroidered fringed laid-back artisan folk sun-washed wanderlust "
     "tasselled rustic", "For festival days and open roads.|Free as the wind.|Handcrafted feel."),
    ("functional durable water-repellent reinforced practical adjustable insulated utility "
     "multi-pocket weatherproof hardwearing certified",
     "Tested for everyday use.|Specifications: see label.|Designed to last."),
)
MATERIALS = ("cotton jersey", "woven fabric", "soft viscose", "denim", "fine-knit fabric", "organic cotton",
             "recycled polyester", "a linen blend", "cotton twill", "soft modal")
FEATURES = ("a round neckline", "long sleeves", "short sleeves", "side pockets", "an elasticated waist",
            "a concealed zip", "buttons down the front", "a regular fit", "a relaxed fit", "dropped shoulders",
            "a wide hem", "narrow shoulder straps", "a high collar", "a drawstring")
NAMES = ("Ava", "Luna", "Milo", "Jade", "Nova", "Kai", "Iris", "Leo", "Mira", "Otto", "Sage", "Tess", "Rio", "Elin")
SYLLABLES = ("ka", "lo", "mi", "ren", "sa", "tu", "vel", "zo", "qui", "dra", "fen", "ob", "ny", "pax", "ul", "ter")


def _style_looks(n_styles: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per style: (S, 2, 3) HSV of primary/secondary colour, (S,) pattern index."""
    hsv = np.empty((n_styles, 2, 3))
    hsv[:, 0, 0] = (np.arange(n_styles) + rng.uniform(0, 0.3)) / n_styles  # evenly spaced hues
    hsv[:, 1, 0] = hsv[:, 0, 0] + rng.choice([0.5, 0.12, -0.12, 0.33], n_styles)
    hsv[:, :, 1] = rng.uniform(0.45, 0.95, (n_styles, 2))
    hsv[:, :, 2] = rng.uniform(0.35, 0.95, (n_styles, 2))
    pattern = rng.permutation(np.arange(max(n_styles, len(PATTERNS))) % len(PATTERNS))[:n_styles]
    return hsv, pattern


def item_looks(style: np.ndarray, n_styles: int, rng: np.random.Generator) -> dict:
    hsv, pattern = _style_looks(n_styles, rng)
    item_hsv = hsv[style].copy()
    item_hsv[:, :, 0] += rng.normal(0.0, 0.015, (len(style), 1))  # same style, slightly different dye
    rgb = np.array([[colorsys.hsv_to_rgb(h % 1.0, s, v) for h, s, v in pair] for pair in item_hsv])
    return dict(item_rgb=np.round(rgb * 255).astype(np.uint8), item_pattern=pattern[style],
                item_freq=rng.integers(2, 6, len(style)), item_shift=rng.random(len(style)))


def render_image(rgb: np.ndarray, pattern: int, freq: int, shift: float, size: int, noise: float,
                 rng: np.random.Generator) -> Image.Image:
    """One article's picture: two colours mixed by the style's pattern, plus pixel noise."""
    y, x = np.mgrid[0:size, 0:size] / size
    wave = lambda a: np.sin(2 * np.pi * (freq * a + shift))  # noqa: E731
    name = PATTERNS[pattern][1]
    if name == "Solid":
        mix = 0.1 * (wave(x + y) > 0.9)
    elif name == "Stripe":
        mix = wave(y) > 0
    elif name == "Check":
        mix = (wave(x) > 0) ^ (wave(y) > 0)
    elif name == "Dot":
        cx, cy = (freq * x + shift) % 1 - 0.5, (freq * y + shift) % 1 - 0.5
        mix = cx**2 + cy**2 < 0.09
    elif name == "All over pattern":
        mix = wave(x + y) + wave(x - y) > 0.5
    elif name == "Melange":
        mix = rng.random((size, size)) < 0.4
    else:  # "Other structure": a soft gradient
        mix = (y + 0.3 * x + shift) % 1.0
    mix = np.asarray(mix, dtype=np.float64)[:, :, None]
    img = rgb[0] * (1 - mix) + rgb[1] * mix + rng.normal(0.0, noise, (size, size, 3))
    return Image.fromarray(np.clip(np.round(img), 0, 255).astype(np.uint8), "RGB")


def _tone_lexicon(n_tones: int, rng: np.random.Generator) -> list[tuple[list[str], list[str]]]:
    lex = [(words.split(), lines.split("|")) for words, lines in TONES[:n_tones]]
    for _ in range(n_tones - len(lex)):  # beyond the written tones: distinct pseudo-word vocabularies
        words = ["".join(rng.choice(SYLLABLES, 3)) for _ in range(12)]
        lex.append((words, [f"Truly {words[0]} and {words[1]}.", f"The {words[2]} way to dress."]))
    return lex


def article_table(cat: dict, looks: dict, n_tones: int, missing_desc_frac: float,
                  rng: np.random.Generator) -> dict:
    """articles.csv columns: product-level text and type, article-level colour and pattern."""
    lex = _tone_lexicon(n_tones, rng)
    n_products = len(cat["product_code"])
    tone = np.zeros(n_products, dtype=np.int64)
    tone[cat["item_product"]] = cat["item_tone"]
    ptype = rng.integers(0, len(PRODUCT_TYPES), n_products)
    pindex = rng.integers(0, len(INDEXES), n_products)
    empty_desc = rng.random(n_products) < missing_desc_frac
    names, descs, sections = [], [], []
    for p in range(n_products):
        words, lines = lex[tone[p]]
        w = list(rng.choice(words, 4, replace=False))
        if rng.random() < 0.1:  # a stray word of another tone: tones are clusters, not labels
            w[3] = rng.choice(lex[int(rng.integers(n_tones))][0])
        kind = PRODUCT_TYPES[ptype[p]][1].lower()
        feats = rng.choice(FEATURES, 2, replace=False)
        descs.append("" if empty_desc[p] else
                     f"{w[0].capitalize()} {kind} in {rng.choice(MATERIALS)} with {feats[0]} and {feats[1]}. "
                     f"{w[1].capitalize()}, {w[2]} look with a {w[3]} finish. {rng.choice(lines)}")
        lead = w[0].capitalize() if rng.random() < 0.5 else str(rng.choice(NAMES))
        names.append(f"{lead} {PRODUCT_TYPES[ptype[p]][1]}")
        opts = INDEXES[pindex[p]][4]
        sections.append(opts[int(rng.integers(len(opts)))])
    palette = np.array([c[6] for c in COLOURS], dtype=np.float64)
    nearest = ((looks["item_rgb"][:, 0, None, :] - palette[None]) ** 2).sum(-1).argmin(1)
    cols: dict[str, list] = {c: [] for c in ARTICLE_COLUMNS}
    for i, p in enumerate(cat["item_product"]):
        t, ix, col = PRODUCT_TYPES[ptype[p]], INDEXES[pindex[p]], COLOURS[nearest[i]]
        gno, gname = PATTERNS[looks["item_pattern"][i]]
        row = (f"{cat['article_id'][i]:010d}", f"{cat['product_code'][p]:07d}", names[p], t[0], t[1], t[2],
               gno, gname, f"{col[0]:02d}", col[1], col[2], col[3], col[4], col[5], t[5], t[6], ix[0], ix[1],
               ix[2], ix[3], sections[p][0], sections[p][1], t[3], t[4], descs[p])
        for c, v in zip(ARTICLE_COLUMNS, row):
            cols[c].append(v)
    return cols
