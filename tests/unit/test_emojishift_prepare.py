"""EmojiShift data preparation (benchmarks/emojishift/prepare.py) on tiny fake source trees: no network.

The fake cache mimics the installed packages' layout: a few emoji in PNG (Google, Twemoji), SVG (OpenMoji colour
and black), WebP (Fluent 3D) and iconify JSON (Fluent flat), an ``emoji.json`` and an ``openmoji.json``, and a
handful of OpenClipart SVG/PNG pairs with RDF titles (one title used 4×, one 3×, one PNG over 16 MP).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import shutil
import struct
from pathlib import Path

import matplotlib
import pytest
from PIL import Image, ImageDraw

from benchmarks.emojishift import glyphs
from benchmarks.emojishift import prepare as es
from pipeline.data.format import (
    CAPTIONED,
    LABELLED,
    Manifest,
    ShardWriter,
    encode_png,
    iter_rows,
    read_manifest,
)

try:
    import resvg_py  # noqa: F401

    RASTERISE = None  # the real renderer, as the command uses it
except ImportError:  # the optional wheel is absent: draw each SVG's first fill colour instead

    def RASTERISE(svg: str, side: int) -> Image.Image:  # noqa: N802
        fill = re.search(r'fill="#([0-9a-f]{6})"', svg).group(1)
        img = Image.new("RGBA", (side, side), (0, 0, 0, 0))
        draw = ImageDraw.Draw(img)
        draw.ellipse((2, 2, side - 3, side - 3), fill="#" + fill)
        draw.rectangle((0, 0, side // 3, side // 4), fill="#" + fill[::-1])  # not mirror-symmetric
        return img


# code, name, category, styles; "*" = all six
EMOJI = [
    ("1F34E", "RED APPLE", "Food & Drink", "*"),
    ("1F40D", "SNAKE", "Animals & Nature", "*"),
    ("1F680", "ROCKET", "Travel & Places", "*"),
    ("1F4A1", "ELECTRIC LIGHT BULB", "Objects", "*"),
    ("26BD", "SOCCER BALL", "Activities", "*"),
    ("1F3B8", "GUITAR", "Objects", "*"),
    ("2602-FE0F", "UMBRELLA", "Travel & Places", "*"),  # FE0F in some packages' names only
    ("1F34F", "GREEN APPLE", "Food & Drink", "google twemoji"),  # Google: the red apple's picture
    ("1F350", "PEAR", "Food & Drink", "*"),  # its Twemoji is the red apple's: not a class of its own
    ("1F552", "CLOCK FACE THREE OCLOCK", "Travel & Places", "*"),  # a clock face: never an eval class
    ("1F95D", "KIWIFRUIT", "Food & Drink", "google twemoji openmoji openmoji_black fluent_3d"),  # no flat
    ("1F600", "GRINNING FACE", "Smileys & Emotion", "google twemoji"),
    ("1F44D", "THUMBS UP SIGN", "People & Body", "*"),
    ("1F1EB-1F1F7", "FRANCE FLAG", "Flags", "google openmoji_black"),  # OpenMoji's black flags are all one
    ("1F1EE-1F1F9", "ITALY FLAG", "Flags", "google openmoji_black"),  # picture: ambiguous, never captioned
    ("1F3FB", "EMOJI MODIFIER FITZPATRICK TYPE-1-2", "Component", "google"),
]
OBSOLETE = ("1F3C3", "RUNNER", "People & Body")  # obsoleted_by another code point: skipped
# Far zero-shot sources (make_sources(far=True)): four more emoji of each far category in the far styles, and
# font faces (matplotlib's DejaVu files) in each font package's folder
FAR_STYLES = " ".join(es.FAR_STYLES)
FAR_EMOJI = [
    *[(f"1F60{i}", f"FACE {i}", "Smileys & Emotion", FAR_STYLES) for i in range(1, 5)],
    *[(f"1F64{i}", f"GESTURE {i}", "People & Body", FAR_STYLES) for i in range(5, 9)],
    *[(f"1F1E6-1F1E{i}", f"FLAG {i}", "Flags", FAR_STYLES) for i in range(6, 10)],
    *[(f"267{i}", f"SIGN {i}", "Symbols", FAR_STYLES) for i in range(1, 5)],
]
FAR_ICON_SLUGS = ["face-1", "flag-6"]  # far classes in the icon sets: allowed in `alignment` only
FONTS = {  # font package → faces (matplotlib's DejaVu files)
    "fonts-dejavu-core": ["DejaVuSans.ttf", "DejaVuSans-Bold.ttf"],
    "fonts-liberation2": ["DejaVuSerif.ttf"],
    "fonts-freefont-ttf": ["DejaVuSansMono.ttf"],
    "fonts-urw-base35": ["DejaVuSerif-Bold.ttf", "DejaVuSans-Oblique.ttf"],
}


def _colour(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:6]


def _png(path: Path, colour: str, side: int, fmt: str = "PNG") -> None:
    img = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    draw.ellipse((4, 4, side - 5, side - 5), fill="#" + colour)
    draw.rectangle((side // 3, side // 3, side // 2, side // 2), fill="#" + colour[::-1])
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)


def _svg(colour: str, size: int = 72) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {size} {size}">'
        f'<circle cx="{size / 2}" cy="{size / 2}" r="{size * 0.4}" fill="#{colour}"/>'
        f'<rect x="{size / 3}" y="{size / 3}" width="{size / 4}" height="{size / 5}" fill="#{colour[::-1]}"/></svg>'
    )


def _clipart_svg(title: str, keywords: list[str]) -> str:
    items = "".join(f"<rdf:li>{k}</rdf:li>" for k in keywords)
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" xmlns:cc="http://web.resource.org/cc/"
     xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"
     viewBox="0 0 10 10"><metadata><rdf:RDF><cc:Work rdf:about="">
  <dc:title>{title}</dc:title><dc:subject><rdf:Bag>{items}</rdf:Bag></dc:subject>
</cc:Work></rdf:RDF></metadata><rect width="10" height="10" fill="#{_colour(title)}"/></svg>"""


CLIPART = [  # (relative path, title, keywords)
    ("animals/frog_01", "2 dead frogs", ["frog", "Marsh_Land", "hash(0x885c2bc)", "", "frog"]),
    ("food/candy_01", "Candy", ["hash", "dessert", "candy", "food"]),
    ("food/pear_01", "Pear", ["fruit", "food"]),
    ("tools/hammer_01", "Hammer", ["tool"]),
    ("tools/saw_01", "Clipart by Jean Victor - Saw", ["tool", "http://example.org", "www.example.org"]),
    ("tools/hammer_02", "Hammer", ["tool"]),  # the same picture twice (as in the real package): written once
    ("people/happy_01", "Happy Woman", ["people"]),
    ("shapes/star_0", "gramastar", ["stars"]),  # 4 uses: a collection name, skipped
    ("shapes/star_1", "gramastar", ["stars"]),
    ("shapes/star_2", "Gramastar", ["stars"]),  # the count ignores case
    ("shapes/star_3", "gramastar", ["stars"]),
    ("cards/card_0", "card", ["game"]),  # 3 uses: kept
    ("cards/card_1", "card", ["game"]),
    ("cards/card_2", "card", ["game"]),
    ("maps/huge_map", "World map", ["map"]),  # its PNG claims 5000 × 5000 px: over 16 MP, skipped
    ("misc/untitled", "", ["nothing"]),  # no title: skipped
]


# Icon-set slugs, as the real sets spell them: CLDR slugs, Unicode names, fxemoji's hyphen-free names.
ICON_SLUGS = ["red-apple", "snake", "rocket", "electric-light-bulb", "kiwifruit", "grinning-face", "guitar"]
ICON_SLUGS += ["thumbs-up-sign"]  # the Unicode name; its CLDR name (OpenMoji annotation) is "thumbs up"
ICON_SLUGS += ["apple", "person-light-skin-tone"]  # "apple" names two code points: ambiguous; no code point


def _iconset(style: str, far: bool = False) -> dict:
    slugs = ICON_SLUGS + (FAR_ICON_SLUGS if far else [])
    slugs = [s.replace("-", "") for s in slugs] if style == "fxemoji" else slugs
    body = lambda slug: _svg(_colour(style, slug), 32).split(">", 1)[1].rsplit("<", 1)[0]  # noqa: E731
    icons = {
        "prefix": style,
        "icons": {slug: {"body": body(slug)} for slug in slugs},
        "width": 32,
        "height": 32,
    }
    if style == "emojione":
        icons["aliases"] = {
            "soccer-ball": {"parent": "snake"},  # an alias whose name matches another emoji
            "redapple": {"parent": "red-apple"},  # a second slug for the red apple: a duplicate
        }
    return icons


def make_sources(cache: Path, far: bool = False) -> Path:
    """A fake ``CACHE/sources`` tree in the installed packages' layout, with the 'already installed' markers;
    ``far``: also the far zero-shot sources (FAR_EMOJI, FAR_ICON_SLUGS, FONTS)."""
    npm = cache / "sources" / "npm" / "node_modules"
    for name, version in es.NPM_PACKAGES.items():
        (npm / name).mkdir(parents=True, exist_ok=True)
        (npm / name / "package.json").write_text(json.dumps({"name": name, "version": version}))
    (npm / "emoji-datasource" / "LICENSE").write_text(
        "The MIT License (MIT)\nCopyright (c) 2013 Cal Henderson\n"
    )
    (npm / "openmoji" / "LICENSE.txt").write_text("Attribution-ShareAlike 4.0 International\n(fake)\n")
    meta, openmoji, chars = [], [], {}
    icons: dict = {"prefix": "fluent-emoji-flat", "icons": {}, "aliases": {}, "width": 32, "height": 32}
    for code, name, category, styles in EMOJI + [(*OBSOLETE, "*")] + (FAR_EMOJI if far else []):
        styles = es.STYLES if styles == "*" else tuple(styles.split())
        image = code.lower() + ".png"
        bare = "-".join(p for p in code.split("-") if p != "FE0F")
        entry = {"unified": code, "name": name, "category": category, "subcategory": "sub", "image": image}
        if code in ("1F34E", "1F34F"):
            entry["short_names"] = [name.lower().replace(" ", "_"), "apple"]
        entry |= {"has_img_google": "google" in styles, "has_img_twitter": "twemoji" in styles}
        if (code, name, category) == OBSOLETE:
            entry["obsoleted_by"] = "1F3C3-200D-2642-FE0F"
        meta.append(entry)
        if "google" in styles:
            colour = _colour(code.replace("1F34F", "1F34E"), "google")
            _png(npm / "emoji-datasource-google/img/google/64" / image, colour, 64)
        if "twemoji" in styles:
            colour = _colour(code.replace("1F350", "1F34E"), "twemoji")
            _png(npm / "emoji-datasource-twitter/img/twitter/64" / image, colour, 64)
        if "openmoji" in styles or "openmoji_black" in styles:
            annotation = "three o’clock" if code == "1F552" else name.lower().replace(" sign", "")
            openmoji.append({"hexcode": bare, "annotation": annotation})
        for style, folder in (("openmoji", "color"), ("openmoji_black", "black")):
            if style in styles:
                colour = (
                    "000000" if category == "Flags" and style == "openmoji_black" else _colour(code, style)
                )
                (npm / "openmoji" / folder / "svg").mkdir(parents=True, exist_ok=True)
                (npm / "openmoji" / folder / "svg" / f"{bare}.svg").write_text(_svg(colour))
        if "fluent_3d" in styles:
            webp = npm / "@lobehub/fluent-emoji-3d/assets" / f"{code.lower()}.webp"
            _png(webp, _colour(code, "fluent_3d"), 96, fmt="WEBP")
        if "fluent_flat" in styles:
            slug = name.lower().replace(" ", "-")
            chars[bare.lower()] = slug
            body = _svg(_colour(code, "fluent_flat"), 32).split(">", 1)[1].rsplit("<", 1)[0]
            if code == "1F44D":  # an alias drawn as its parent mirrored
                icons["icons"]["thumbs-down"] = {"body": body}
                icons["aliases"][slug] = {"parent": "thumbs-down", "hFlip": True}
            else:
                icons["icons"][slug] = {"body": body}
    (npm / "emoji-datasource/emoji.json").write_text(json.dumps(meta))
    (npm / "openmoji/data").mkdir(parents=True, exist_ok=True)
    (npm / "openmoji/data/openmoji.json").write_text(json.dumps(openmoji))
    flat = npm / "@iconify-json/fluent-emoji-flat"
    (flat / "icons.json").write_text(json.dumps(icons))
    (flat / "chars.json").write_text(json.dumps(chars))
    for style, (package, _) in es.ICON_STYLES.items():
        (npm / package / "icons.json").write_text(json.dumps(_iconset(style, far)))
        (npm / package / "chars.json").write_text("{}")  # as the real sets ship: no code-point table

    root = cache / "sources" / "apt" / "root"
    clip = root / "usr/share/openclipart"
    for rel, title, keywords in CLIPART:
        svg, png = clip / "svg" / f"{rel}.svg", clip / "png" / f"{rel}.png"
        svg.parent.mkdir(parents=True, exist_ok=True)
        svg.write_text(_clipart_svg(title, keywords))
        if rel == "maps/huge_map":  # only the header: a decoder touching it would fail the build
            png.parent.mkdir(parents=True, exist_ok=True)
            png.write_bytes(
                b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">II", 5000, 5000)
            )
        else:
            _png(png, _colour(rel.replace("hammer_02", "hammer_01")), 120)
    doc = root / "usr/share/doc/openclipart-svg"
    doc.mkdir(parents=True)
    (doc / "copyright").write_text("creative commons Public Domain Dedication (fake)\n")
    for package, version in es.APT_PACKAGES.items():
        es.apt_marker(root, package).write_text(version + "\n")
    if far:
        ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
        for package, faces in FONTS.items():
            folder = glyphs.font_dirs(root)[package]
            folder.mkdir(parents=True, exist_ok=True)
            for face in faces:
                shutil.copyfile(ttf / face, folder / face)
            (root / "usr/share/doc" / package).mkdir(parents=True, exist_ok=True)
            (root / "usr/share/doc" / package / "copyright").write_text(f"{package} (fake)\n")
            es.apt_marker(root, package).write_text(es.FONT_APT_PACKAGES[package] + "\n")
    return cache


SETTINGS = es.Settings(
    size=16,
    n_id=3,
    n_zs=2,
    n_zs_val=2,
    train_variants=3,
    free_scene_variants=1,
    icon_scene_variants=1,
    val_variants=1,
    eval_variants=2,
    ref_fraction=0.4,
    ref_val_fraction=0.2,
)
EVAL_SETS = (
    ["id_val", "id_test"] + [f"ood_{s}" for s in es.STYLES if s != "google"] + [f"zs_{s}" for s in es.STYLES]
)
EVAL_SETS += ["zs_val"]
ALL_SETS = EVAL_SETS + ["id_train", "ref_val", "reference", "alignment"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    cache = make_sources(tmp_path_factory.mktemp("emojishift"))
    summary = es.build(cache, SETTINGS, rasterise=RASTERISE)
    return cache, summary


def _hashes(folder: Path) -> list[str]:
    return [hashlib.sha256(r["image"]).hexdigest() for r in iter_rows(folder, columns=["image"])]


def test_every_split_is_written_with_the_expected_rows(built):
    cache, summary = built
    assert sorted(summary["rows"]) == sorted(ALL_SETS)
    for name in EVAL_SETS:
        n = 3 if name.startswith(("id_", "ood_")) else 2
        variants = SETTINGS.val_variants if name == "id_val" else SETTINGS.eval_variants
        if name == "zs_val":  # 2 classes × every style × the validation variants
            n, variants = 2 * len(es.STYLES), SETTINGS.val_variants
        assert read_manifest(cache / name).num_rows == n * variants == len(_hashes(cache / name))
    assert read_manifest(cache / "id_train").num_rows == 3 * SETTINGS.train_variants
    captioned = [read_manifest(cache / name) for name in ("ref_val", "reference", "alignment")]
    assert all(m.kind == CAPTIONED and m.num_rows > 0 for m in captioned)
    assert sum(m.skipped.get("duplicate", 0) for m in captioned) == 1  # the second hammer


def test_no_image_is_in_two_splits(built):
    cache, _ = built
    owner: dict[str, str] = {}
    for name in ALL_SETS:
        for digest in _hashes(cache / name):
            assert digest not in owner, f"{name} shares an image with {owner.get(digest)}"
            owner[digest] = name
    es.verify_disjoint(cache, ALL_SETS)  # the build's own check agrees


def test_verify_disjoint_fails_on_a_shared_image(tmp_path):
    img = encode_png(Image.new("RGB", (8, 8), "red"))
    for name in ("a", "b"):
        with ShardWriter(tmp_path / name, Manifest(name=name, kind=CAPTIONED)) as w:
            w.add({"image": img, "caption": "red", "key": name})
    with pytest.raises(AssertionError, match="also in a"):
        es.verify_disjoint(tmp_path, ["a", "b"])


def _captioned_keys(cache: Path, *names: str) -> list[str]:
    return [r["key"] for n in names for r in iter_rows(cache / n, columns=["key"])]


def test_eval_classes_reach_captioned_data_only_as_icons_in_alignment(built):
    cache, summary = built
    classes = json.loads((cache / "classes.json").read_text())
    eval_classes = classes["id"] + classes["zs"] + classes["zs_val"]
    eval_codes = {c["code"] for c in eval_classes}
    fine_tune_side = _captioned_keys(cache, "ref_val", "reference")
    assert not [k for k in fine_tune_side if k.split("/")[0] in eval_codes]
    captions = [r["caption"] for n in ("ref_val", "reference") for r in iter_rows(cache / n)]
    assert not [c for c in captions if c.split(",")[0] in {c["name"] for c in eval_classes}]
    in_alignment = [k for k in _captioned_keys(cache, "alignment") if k.split("/")[0] in eval_codes]
    assert in_alignment, "eval-class icons in icon styles are kept"
    assert {k.split("/")[1] for k in in_alignment} <= set(es.ICON_STYLES)  # never a benchmark style
    assert "1f34e/fxemoji/clean" in in_alignment and "1f34e/fxemoji/cap/0" in in_alignment  # clean + scene
    assert summary["eval_class_icon_rows"] == len(in_alignment)
    keys = _captioned_keys(cache, "ref_val", "reference", "alignment")
    assert not [k for k in keys if k.startswith(("1f1eb-1f1f7/openmoji_black", "1f1ee-1f1f9/openmoji_black"))]
    assert "1f1eb-1f1f7/google/clean" in keys  # the flag's unambiguous art is still used
    assert not [k for k in keys if k.startswith(("1f3fb/", "1f3c3/"))]  # component, obsoleted


def test_an_eval_class_outside_the_icon_styles_is_refused():
    row = lambda key: (key, lambda: None, {"caption": "x"})  # noqa: E731
    es.check_captioned({"alignment": [row("1f34e/noto_v1/clean"), row("1f40d/google/clean")]}, {"1f34e"})
    for split, key in (("alignment", "1f34e/google/clean"), ("alignment", "1f34e/openmoji_black/cap/0")):
        with pytest.raises(AssertionError, match="eval class"):
            es.check_captioned({split: [row(key)]}, {"1f34e"})
    with pytest.raises(AssertionError, match="only appear in `alignment`"):
        es.check_captioned({"reference": [row("1f34e/fxemoji/clean")]}, {"1f34e"})


def test_icons_are_matched_to_code_points_by_name(built):
    cache, _ = built
    lib = es.Library(cache, RASTERISE)
    art = {e.code: e.art for e in lib.emoji}
    pkg = es.ICON_STYLES["fxemoji"][0]
    assert art["1f34e"]["fxemoji"] == f"icon:{pkg}:redapple"  # hyphen-free slug → the CLDR name
    assert art["1f4a1"]["noto_v1"].endswith(":electric-light-bulb")
    assert art["1f44d"]["fxemoji"].endswith(":thumbsupsign")  # via the Unicode name
    assert art["1f95d"]["streamline"].endswith(":kiwifruit")
    assert art["1f600"]["emojione"].endswith(":grinning-face")  # a free class gets icons too
    for style, counts in lib.icon_matches.items():
        assert counts["ambiguous"] == 1 and counts["unmatched"] == 1, style  # "apple"; the skin tone
    assert lib.icon_matches["emojione"]["duplicate"] == 1  # "redapple" after "red-apple"
    assert art["1f34e"]["emojione"].endswith(":red-apple")
    assert art["26bd"]["emojione"].endswith(":soccer-ball")  # an alias is matched by its own name
    alias = lib.picture(art["26bd"]["emojione"], 16).tobytes()
    assert alias == lib.picture(art["1f40d"]["emojione"], 16).tobytes()


def test_zs_val_classes_are_new_and_drawn_in_every_style(built):
    cache, _ = built
    classes = json.loads((cache / "classes.json").read_text())
    zs_val = {c["code"] for c in classes["zs_val"]}
    assert len(zs_val) == 2 and not zs_val & {c["code"] for c in classes["id"] + classes["zs"]}
    keys = _captioned_keys(cache, "zs_val")
    assert {k.split("/")[1] for k in keys} == set(es.STYLES)
    assert {k.split("/")[2] for k in keys} == {"zsval"}  # its own scene seeds
    assert read_manifest(cache / "zs_val").classnames == [c["name"] for c in classes["zs_val"]]


def test_art_shared_with_an_eval_class_is_not_captioned(built):
    cache, _ = built
    lib = es.Library(cache, RASTERISE)
    apple = next(e for e in lib.emoji if e.code == "1f34e")
    rows, _ = es.captioned_rows(lib, SETTINGS, [apple])
    keys = [key for split in rows.values() for key, _, _ in split]
    assert not [k for k in keys if k.startswith("1f34f/")]  # green apple: shares the red apple's Google art
    assert {k.split("/")[1] for k in keys if k.startswith("1f34e/")} <= set(es.ICON_STYLES)
    assert "1f40d/google/clean" in keys  # the snake is not an eval class here


def test_captioned_splits_share_no_caption_group(built):
    cache, _ = built
    groups = {}
    for name in ("ref_val", "reference", "alignment"):
        for row in iter_rows(cache / name):
            key = row["key"]
            group = (
                row["caption"].split(":")[0].casefold()
                if key.startswith("openclipart/")
                else key.split("/")[0]
            )
            assert groups.setdefault(group, name) == name, f"{group} in {groups[group]} and {name}"


def test_classes_and_manifests_agree(built):
    cache, _ = built
    classes = json.loads((cache / "classes.json").read_text())
    id_names, zs_names = [c["name"] for c in classes["id"]], [c["name"] for c in classes["zs"]]
    assert len(id_names) == 3 and len(zs_names) == 2 and not set(id_names) & set(zs_names)
    assert all(c["category"] in es.OBJECT_CATEGORIES for c in classes["id"] + classes["zs"])
    assert "kiwifruit" not in id_names + zs_names  # not drawn in every style
    assert len(classes["universe"]) == 7 and "1f350" not in classes["universe"]  # pear: shared art
    assert "1f552" not in classes["universe"]  # the clock face
    assert [c["label"] for c in classes["id"]] == [0, 1, 2]
    for name in EVAL_SETS + ["id_train"]:
        manifest = read_manifest(cache / name)
        assert manifest.kind == LABELLED
        if name == "zs_val":
            continue  # test_zs_val_classes_are_new_and_drawn_in_every_style
        assert manifest.classnames == (zs_names if name.startswith("zs_") else id_names)
        assert manifest.templates and all("{}" in t for t in manifest.templates)
        labels = {r["label"] for r in iter_rows(cache / name, columns=["label"])}
        assert labels == set(range(len(manifest.classnames)))
    splits = json.loads((cache / "splits.json").read_text())["splits"]
    for name in ALL_SETS:
        assert [h for _, h in splits[name]["items"]] == [h[:16] for h in _hashes(cache / name)]


def test_same_seed_same_bytes_other_seed_other_split(built, tmp_path):
    cache, _ = built
    again = make_sources(tmp_path / "again")
    es.build(again, SETTINGS, rasterise=RASTERISE)
    for name in ("classes.json", "splits.json"):
        assert (again / name).read_bytes() == (cache / name).read_bytes()
    for name in ALL_SETS:
        for a, b in zip(
            sorted((cache / name).glob("*.parquet")), sorted((again / name).glob("*.parquet")), strict=True
        ):
            assert a.read_bytes() == b.read_bytes()
    other = make_sources(tmp_path / "other")
    es.build(other, es.replace(SETTINGS, seed=1), rasterise=RASTERISE)
    assert (other / "splits.json").read_bytes() != (cache / "splits.json").read_bytes()
    assert _hashes(other / "id_test") != _hashes(cache / "id_test")


def test_openclipart_title_and_size_rules(built):
    cache, summary = built
    entries, skipped = es.index_clipart(cache / "sources/apt/root/usr/share/openclipart")
    titles = [e.title for e in entries]
    assert "gramastar" not in {t.casefold() for t in titles} and skipped["repeated_title"] == 4
    assert titles.count("card") == 3
    assert "World map" not in titles and skipped["too_large"] == 1
    assert skipped["no_title"] == 1
    frog = next(e for e in entries if e.title == "2 dead frogs")
    assert frog.caption == "2 dead frogs: frog, marsh land"  # no empty, hash(…) or repeated keywords
    saw = next(e for e in entries if e.key == "tools/saw_01")
    assert saw.caption == "Saw: tool"  # no author credit, no web address
    captions = [r["caption"] for n in ("ref_val", "reference", "alignment") for r in iter_rows(cache / n)]
    assert not [c for c in captions if c.casefold().startswith(("gramastar", "world map"))]
    assert sum(c.startswith("card") for c in captions) == 3
    assert summary["openclipart"]["repeated_title"] == 4


def test_licence_files(built):
    cache, _ = built
    licences = cache / "LICENSES"
    attribution = (licences / "ATTRIBUTION.md").read_text()
    for spdx in ("Apache-2.0", "CC-BY-4.0", "CC-BY-SA-4.0", "MIT", "Public domain"):
        assert spdx in attribution
    for pin in es.NPM_PACKAGES.values():
        assert f"({pin})" in attribution
    assert "Apple and Facebook" in attribution
    npm = cache / "sources/npm/node_modules"
    assert (licences / "openmoji-LICENSE.txt").read_text() == (npm / "openmoji/LICENSE.txt").read_text()
    assert (licences / "emoji-datasource-LICENSE.txt").read_text().startswith("The MIT License")
    assert "Public Domain" in (licences / "openclipart-copyright.txt").read_text()
    assert "Microsoft Corporation" in (licences / "fluent-emoji-MIT.txt").read_text()


def test_images_have_the_configured_size(built):
    cache, _ = built
    for name in ("id_train", "ood_fluent_3d", "zs_openmoji_black", "alignment"):
        for row in iter_rows(cache / name, columns=["image"]):
            assert Image.open(io.BytesIO(row["image"])).size == (SETTINGS.size, SETTINGS.size)


def test_fluent_flat_alias_is_its_parent_mirrored(built):
    cache, _ = built
    lib = es.Library(cache, RASTERISE)
    thumbs = next(e for e in lib.emoji if e.code == "1f44d")
    flat = "icon:@iconify-json/fluent-emoji-flat:"
    assert thumbs.art["fluent_flat"] == flat + "thumbs-up-sign"
    mirrored = lib.picture(flat + "thumbs-up-sign", 32)
    parent = lib.picture(flat + "thumbs-down", 32)
    assert mirrored.tobytes() == parent.transpose(Image.Transpose.FLIP_LEFT_RIGHT).tobytes()
    assert mirrored.tobytes() != parent.tobytes()


def test_scenes_are_seeded_per_picture():
    art = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    ImageDraw.Draw(art).ellipse((4, 4, 27, 27), fill="#3366cc")
    a = encode_png(es.scene(art, es.rng_for(0, "test", "1f34e", "google", 0), 16))
    b = encode_png(es.scene(art, es.rng_for(0, "test", "1f34e", "google", 0), 16))
    c = encode_png(es.scene(art, es.rng_for(0, "test", "1f34e", "google", 1), 16))
    assert a == b and a != c


def test_installed_sources_are_reused(tmp_path, monkeypatch):
    cache = make_sources(tmp_path)
    calls = []
    monkeypatch.setattr(es.subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    info = es.install_sources(cache)
    assert calls == [] and info["actions"] == ["reused"]


def test_missing_sources_are_installed_with_pins(tmp_path, monkeypatch):
    calls = []

    def fake_run(cmd, cwd=None, check=True):  # pretend npm / apt-get / dpkg-deb did their job
        calls.append(cmd)
        if cmd[0] == "npm":
            prefix = Path(cmd[cmd.index("--prefix") + 1])
            for name, version in es.NPM_PACKAGES.items():
                (prefix / "node_modules" / name).mkdir(parents=True, exist_ok=True)
                (prefix / "node_modules" / name / "package.json").write_text(json.dumps({"version": version}))
        elif cmd[0] == "apt-get":
            name = cmd[2].split("=")[0]
            (Path(cwd) / f"{name}_0.18_all.deb").write_bytes(b"deb")

    monkeypatch.setattr(es.subprocess, "run", fake_run)
    es.install_sources(tmp_path)
    npm = calls[0]
    assert npm[:3] == ["npm", "install", "--ignore-scripts"]
    assert sorted(a for a in npm if "@" in a[1:]) == sorted(f"{n}@{v}" for n, v in es.NPM_PACKAGES.items())
    assert [c[:3] for c in calls if c[0] == "apt-get"] == [
        ["apt-get", "download", f"{n}={v}"] for n, v in es.APT_PACKAGES.items()
    ]
    assert [c[:2] for c in calls if c[0] == "dpkg-deb"] == [["dpkg-deb", "-x"]] * 2
    assert es.npm_ready(tmp_path / "sources/npm") and es.apt_ready(tmp_path / "sources/apt")
    calls.clear()
    es.install_sources(tmp_path)  # idempotent: a second run fetches nothing
    assert calls == []


def test_offline_without_sources_is_an_error(tmp_path):
    with pytest.raises(SystemExit, match="--offline"):
        es.install_sources(tmp_path, offline=True)


def test_resvg_renders_svg():
    pytest.importorskip("resvg_py", reason="the optional SVG rasteriser wheel (resvg-py) is not installed")
    img = es.resvg_rasterise(_svg("ff0000"), 24)
    assert img.size == (24, 24) and img.mode == "RGBA"
    assert img.getpixel((12, 18)) == (255, 0, 0, 255)  # inside the circle, below the rectangle
    assert img.getpixel((0, 0))[3] == 0


def test_command_line_quick_offline(tmp_path, capsys):
    pytest.importorskip("resvg_py", reason="the command renders SVG with resvg-py")
    cache = make_sources(tmp_path)
    argv = ["--cache", str(cache), "--quick", "--offline", "--size", "16", "--n-id", "3", "--n-zs", "2"]
    argv += ["--n-zs-val", "2"]
    assert es.main(argv) == 0
    summary = json.loads((cache / "emojishift.json").read_text())
    assert summary["classes"] == {"universe": 7, "id": 3, "zs": 2, "zs_val": 2}
    assert summary["sources"]["actions"] == ["reused"]
    out = capsys.readouterr().out
    assert "id_train" in out and "seconds:" in out
    shutil.rmtree(cache / "sources")
    with pytest.raises(SystemExit):
        es.main(argv)


def test_icon_slugs_are_keyed_like_names():
    assert es.icon_key("flag-for-flag-japan") == es.icon_key("flag-for-japan") == es.name_key("flag: Japan")
    assert es.icon_key("bird-1") == es.icon_key("bird-2") == es.name_key("bird")
    assert es.icon_key("1st-place-medal") == es.name_key("1st place medal")
    assert (
        es.name_key("admissiontickets")
        == es.name_key("Admission Tickets")
        == es.name_key("admission_tickets")
    )


def test_an_eval_image_is_never_kept_in_training_data(tmp_path):
    """Eval splits are written first; a training-side picture with the same bytes is skipped and counted."""
    picture = Image.new("RGB", (8, 8), "red")
    seen: dict[str, str] = {}
    manifest = lambda name: Manifest(name=name, kind=CAPTIONED)  # noqa: E731
    test = es.Writer(tmp_path / "zs_google", manifest("zs_google"), SETTINGS, seen)
    assert test.add(picture, "1f34e/google/test/0", caption="x")
    test.close()
    align = es.Writer(tmp_path / "alignment", manifest("alignment"), SETTINGS, seen)
    assert not align.add(picture, "1f34e/fxemoji/cap/0", caption="red apple, Firefox OS emoji style")
    assert align.add(Image.new("RGB", (8, 8), "blue"), "1f40d/fxemoji/clean", caption="snake")
    kept = align.close()
    assert kept.num_rows == 1 and kept.skipped["duplicate"] == 1


# ------------------------------------------------------------------------------------- far zero-shot (--far-zs)
FAR_SETTINGS = dataclasses.replace(SETTINGS, far_zs=True, n_far=2, n_far_val=2)
FAR_EMOJI_SETS = [f"zs_far_{n}" for n in es.FAR_EMOJI] + [f"zs_far_val_{n}" for n in es.FAR_EMOJI]
GLYPH_SETS = [f"zs_far{v}_{g}" for g in glyphs.GLYPH_SETS for v in ("", "_val")]


@pytest.fixture(scope="module")
def built_far(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    cache = make_sources(tmp_path_factory.mktemp("emojishift-far"), far=True)
    summary = es.build(cache, FAR_SETTINGS, rasterise=RASTERISE)
    return cache, summary


def test_far_zero_shot_splits_are_written_beside_every_v2_split(built_far):
    cache, summary = built_far
    assert sorted(summary["rows"]) == sorted(ALL_SETS + FAR_EMOJI_SETS + GLYPH_SETS)
    assert summary["version"] == es.VERSION_FAR
    assert summary["far_zs"] == {**{n: [2, 2] for n in es.FAR_EMOJI}, "alignment": 3, "val": 1, "test": 2}
    n_styles = len(es.FAR_STYLES)
    for name in es.FAR_EMOJI:
        assert summary["rows"][f"zs_far_{name}"] == 2 * n_styles * FAR_SETTINGS.eval_variants
        assert summary["rows"][f"zs_far_val_{name}"] == 2 * n_styles * FAR_SETTINGS.val_variants
    for gset, chars in glyphs.GLYPH_SETS.items():
        assert (
            summary["rows"][f"zs_far_{gset}"] == len(chars) * 2 * FAR_SETTINGS.eval_variants
        )  # 2 test faces
        assert summary["rows"][f"zs_far_val_{gset}"] == len(chars) * 1 * FAR_SETTINGS.val_variants
        manifest = read_manifest(cache / f"zs_far_{gset}")
        assert manifest.classnames == list(chars) and manifest.templates == list(glyphs.TEMPLATES[gset])
    assert (cache / "LICENSES" / "fonts-urw-base35-copyright.txt").is_file()
    assert "fonts-urw-base35" in (cache / "LICENSES" / "ATTRIBUTION.md").read_text()


def test_far_classes_are_of_their_category_new_and_apart(built_far):
    cache, _ = built_far
    classes = json.loads((cache / "classes.json").read_text())
    near = {c["code"] for key in ("id", "zs", "zs_val") for c in classes[key]}
    far = classes["far_zs"]
    codes = []
    for name, category in es.FAR_EMOJI.items():
        for part in ("test", "val"):
            assert {c["category"] for c in far[name][part]} == {category}
            codes += [c["code"] for c in far[name][part]]
    assert len(codes) == len(set(codes)) and not near & set(codes)
    assert "1f600" not in codes  # GRINNING FACE lacks an OpenMoji picture: not drawn in every far style
    assert far["fonts"]["test"] == [
        "DejaVuSans-Oblique (DejaVu Sans Oblique)",
        "DejaVuSerif-Bold (DejaVu Serif Bold)",
    ]


def test_far_classes_and_glyphs_reach_captioned_data_only_in_alignment_as_icons_or_alignment_fonts(built_far):
    cache, _ = built_far
    classes = json.loads((cache / "classes.json").read_text())
    far = {
        c["code"] for name in es.FAR_EMOJI for part in ("test", "val") for c in classes["far_zs"][name][part]
    }
    roles = {f.key: f.role for f in glyphs.find_fonts(cache / "sources/apt/root")}
    for split in ("ref_val", "reference", "alignment"):
        keys = _captioned_keys(cache, split)
        for key in keys:
            parts = key.split("/")
            if parts[0] == es.GLYPH:
                assert split == "alignment" and roles[parts[3]] == "alignment", key
            elif parts[0] in far:
                assert split == "alignment" and parts[1] in es.ICON_STYLES, key
    keys = _captioned_keys(cache, "alignment")
    assert any(k.split("/")[0] in far for k in keys)  # face-1 and flag-6 are in the icon sets
    glyph_keys = {tuple(k.split("/")[1:4]) for k in keys if k.startswith(es.GLYPH + "/")}
    aligned = [k for k, r in roles.items() if r == "alignment"]
    assert glyph_keys == {(g, c, f) for g, chars in glyphs.GLYPH_SETS.items() for c in chars for f in aligned}


def test_a_glyph_outside_an_alignment_font_or_outside_alignment_is_refused():
    row = lambda key: (key, None, {})  # noqa: E731
    roles = {"DejaVuSans": "alignment", "NimbusSans-Regular": "test"}
    es.check_captioned({"alignment": [row("glyph/digits/7/DejaVuSans/clean")]}, set(), roles)
    with pytest.raises(AssertionError, match="NimbusSans-Regular"):
        es.check_captioned({"alignment": [row("glyph/digits/7/NimbusSans-Regular/clean")]}, set(), roles)
    with pytest.raises(AssertionError, match="reference"):
        es.check_captioned({"reference": [row("glyph/letters/A/DejaVuSans/cap/0")]}, set(), roles)


def test_fonts_are_found_by_package_and_a_missing_package_is_named(tmp_path):
    cache = make_sources(tmp_path, far=True)
    root = cache / "sources/apt/root"
    fonts = glyphs.find_fonts(root)
    assert [(f.role, f.key) for f in fonts][:3] == [
        ("alignment", "DejaVuSans"),
        ("alignment", "DejaVuSans-Bold"),
        ("alignment", "DejaVuSerif"),
    ]
    assert fonts[0].name == "DejaVu Sans" and fonts[1].name == "DejaVu Sans Bold"
    shutil.rmtree(glyphs.font_dirs(root)["fonts-freefont-ttf"])
    with pytest.raises(SystemExit, match="fonts-freefont-ttf"):
        glyphs.find_fonts(root)


def test_a_glyph_is_drawn_centred_in_its_ink():
    font = glyphs.Font(
        "DejaVuSans",
        "DejaVu Sans",
        str(Path(matplotlib.get_data_path()) / "fonts/ttf/DejaVuSans.ttf"),
        "test",
    )
    img = glyphs.glyph_picture(font, "7", 64, (10, 20, 30))
    assert img.size == (64, 64) and img.mode == "RGBA"
    left, top, right, bottom = img.getchannel("A").getbbox()
    assert max(right - left, bottom - top) in range(49, 53)  # 80 % of the side
    assert abs((left + right) - 64) <= 2 and abs((top + bottom) - 64) <= 2
    assert img.getpixel(((left + right) // 2, top + 1))[:3] == (10, 20, 30)


def test_far_sources_add_the_font_packages_with_pins(tmp_path, monkeypatch):
    cache = make_sources(tmp_path)  # v2 sources only
    calls = []

    def fake_run(cmd, cwd=None, check=True):
        calls.append(cmd)
        if cmd[0] == "apt-get":
            (Path(cwd) / f"{cmd[2].split('=')[0]}_1_all.deb").write_bytes(b"deb")

    monkeypatch.setattr(es.subprocess, "run", fake_run)
    assert es.install_sources(cache)["actions"] == ["reused"] and calls == []  # a v2 build needs no fonts
    es.install_sources(cache, far_zs=True)
    assert [c[:3] for c in calls if c[0] == "apt-get"] == [
        ["apt-get", "download", f"{n}={v}"] for n, v in es.FONT_APT_PACKAGES.items()
    ]
    assert es.apt_ready(cache / "sources/apt", es.APT_PACKAGES | es.FONT_APT_PACKAGES)
