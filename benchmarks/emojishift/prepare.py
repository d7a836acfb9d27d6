"""EmojiShift: build the offline robust-fine-tuning benchmark from packaged emoji and clip art (issue #6).

    python benchmarks/emojishift/prepare.py --cache ~/.cache/emojishift            # full build
    python benchmarks/emojishift/prepare.py --cache /tmp/emojishift-quick --quick  # small sets, same rules

One command installs the sources into ``CACHE/sources`` (reused when present), then writes every split as a
dataset folder (:mod:`pipeline.data.format`) directly under ``CACHE``:

* ``id_train`` / ``id_val`` / ``id_test``: N_ID object-like emoji classes in the Google (Noto) style. One style
  has one picture per class, so the splits are *deterministic scene variants* of it (the emoji recoloured,
  rotated, scaled and placed on a random background); id_train also holds the clean picture on white. Every
  variant is drawn from its own seed, so the three splits share no image (checked by content hash).
* ``ood_<style>``: the same classes in Twemoji, OpenMoji colour, OpenMoji black line-art, Fluent 3D and
  Fluent flat, drawn with the same scene generator as id_test, so that only the art style shifts.
* ``zs_<style>``: N_ZS other object-like classes, never used for ID, in all six styles (same generator).
* ``zs_val``: N_ZS_VAL further classes, disjoint from ID and ZS, in all six styles from their own seeds: the
  zero-shot validation set (``val.zs``) that model selection reads, so no test set chooses anything.
* ``reference`` / ``ref_val`` / ``alignment``: captioned images, split three ways by caption group (OpenClipart
  title, emoji code point) so that no caption and no emoji class is in two of them:

  * OpenClipart pictures, captioned "title: keywords";
  * free emoji (no eval class, no art shared with one), captioned "name, style": the clean picture on white and
    ``--free-scene-variants`` scenes in each of the six benchmark styles, and ``--icon-scene-variants`` scenes in
    each of the six icon styles (``ICON_STYLES``: icon sets that are never an eval style), wherever the emoji has
    a picture;
  * the eval classes (ID, ZS, zs_val), clean + scenes, **in the icon styles only and in ``alignment`` only**.

  ``alignment`` is for the teacher's LiT alignment, ``reference`` for DiVE's AVL/PVL terms, ``ref_val`` for
  ``val.ref``.

Rules, all checked here: every image in every split is unique across all splits (SHA-256 of the encoded
bytes, re-read from the written shards and asserted); an eval class appears in captioned data only as an
icon-style picture in ``alignment`` (:func:`check_captioned` asserts it over every captioned row), so
``reference`` and ``ref_val``, which the fine-tunes see, hold no eval class by code point or by art; eval
classes exclude shared art and clock faces (a rotation changes their meaning); a picture drawn for several code
points is left out of captioned data; OpenClipart titles used more than 3 times and PNGs over 16 MP are skipped;
class lists and split membership are written to ``classes.json`` / ``splits.json`` (same seed ⇒ same bytes);
licences and attribution go to ``CACHE/LICENSES/``. See ``benchmarks/emojishift/README.md``.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import math
import re
import shutil
import struct
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance, ImageOps
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run by path: the repository root is importable

from benchmarks.emojishift import glyphs  # noqa: E402
from pipeline.data.format import CAPTIONED, LABELLED, Manifest, ShardWriter, encode_png, iter_rows  # noqa: E402

# Bump when the rules change, so old caches are recognisable (v2: icon sets, eval classes as icons, zs_val).
VERSION = "emojishift-v2"
# A build with the far zero-shot candidate sets (--far-zs): v2 plus them, for the pilot that decides which to keep.
VERSION_FAR = "emojishift-v2+far-pilot"


# ---------------------------------------------------------------------------------------------------- sources
# Exact versions: the benchmark is only comparable across machines if every byte of its sources is the same.
NPM_PACKAGES = {
    "emoji-datasource": "16.0.0",  # emoji.json: names, categories; image file names
    "emoji-datasource-google": "16.0.0",  # Noto emoji PNG 64 px (Apache-2.0)
    "emoji-datasource-twitter": "16.0.0",  # Twemoji PNG 64 px (CC-BY-4.0)
    "openmoji": "17.0.0",  # colour + black line-art SVG, data/openmoji.json (CC-BY-SA-4.0)
    "@lobehub/fluent-emoji-3d": "1.1.0",  # Fluent 3D WebP 256 px (MIT)
    "@iconify-json/fluent-emoji-flat": "1.2.6",  # Fluent flat SVG bodies in JSON (MIT)
    # Icon sets used only as captioned alignment / reference data, never as an eval style. Their art is their
    # own (no eval style derives from them), so these alone may also draw the eval classes (see ICON_STYLES).
    "@iconify-json/emojione": "1.2.3",  # EmojiOne 2 (CC-BY-4.0)
    "@iconify-json/emojione-v1": "1.2.3",  # EmojiOne 1 (CC-BY-SA-4.0)
    "@iconify-json/emojione-monotone": "1.2.1",  # EmojiOne monotone line art (CC-BY-4.0)
    "@iconify-json/fxemoji": "1.2.2",  # Mozilla Firefox OS emoji (Apache-2.0)
    "@iconify-json/noto-v1": "1.2.5",  # Noto emoji, 2016 design (Apache-2.0)
    "@iconify-json/streamline-emojis": "1.2.4",  # Streamline emoji (CC-BY-4.0)
}
APT_PACKAGES = {"openclipart-svg": "1:0.18+dfsg-19", "openclipart-png": "1:0.18+dfsg-19"}  # public domain
# --far-zs also fetches the font packages of the glyph sets
FONT_APT_PACKAGES = {package: version for package, (version, _, _) in glyphs.FONT_PACKAGES.items()}

# ---------------------------------------------------------------------------------------------------- the task
STYLES = ("google", "twemoji", "openmoji", "openmoji_black", "fluent_3d", "fluent_flat")
ID_STYLE = "google"
OBJECT_CATEGORIES = ("Animals & Nature", "Food & Drink", "Travel & Places", "Objects", "Activities")
STYLE_CAPTION = {  # how a caption names the style of an emoji picture
    "google": "Noto emoji style",
    "twemoji": "Twemoji style",
    "openmoji": "OpenMoji colour style",
    "openmoji_black": "black line art",
    "fluent_3d": "3D render",
    "fluent_flat": "Fluent flat style",
}
# Icon styles: style → (iconify package, caption). They appear in captioned data only. The eval classes (ID, ZS,
# zs_val) may be drawn in these styles — as CLIP's pre-training saw apples but never ImageNet's test images — and
# in no other: the build refuses an eval-class picture in any style outside this table.
ICON_STYLES = {
    "emojione": ("@iconify-json/emojione", "EmojiOne style"),
    "emojione_v1": ("@iconify-json/emojione-v1", "EmojiOne v1 style"),
    "emojione_monotone": ("@iconify-json/emojione-monotone", "EmojiOne monotone line art"),
    "fxemoji": ("@iconify-json/fxemoji", "Firefox OS emoji style"),
    "noto_v1": ("@iconify-json/noto-v1", "old Noto emoji style"),
    "streamline": ("@iconify-json/streamline-emojis", "Streamline emoji style"),
}
FLAT_ICONS = "@iconify-json/fluent-emoji-flat"
TEMPLATES = (
    "a {} emoji.",
    "an emoji of the {}.",
    "an icon of the {}.",
    "a drawing of the {}.",
    "a picture of the {}.",
    "clip art of the {}.",
)
# Clock faces ("three o’clock", "four-thirty", …) are 24 classes that differ only by the angle of their hands:
# any rotation (ours, or a reader's augmentation) turns one into another, so they are never eval classes.
ROTATION_NAMED = re.compile(r"o’clock$|o'clock$|-thirty$")
# Far zero-shot candidates (--far-zs): tasks of another kind than "which object emoji". Emoji of the categories
# outside OBJECT_CATEGORIES (name the expression, the gesture or role, the country, the sign) in the styles that
# draw all of them (Fluent has no country flags; OpenMoji's black flags are one outline), and digits and letters
# in fonts (glyphs.py). Their classes follow the eval classes' rule: in captioned data only as icons (emoji) or
# in alignment fonts (glyphs), and only in `alignment`.
FAR_EMOJI = {
    "smileys": "Smileys & Emotion",
    "people": "People & Body",
    "flags": "Flags",
    "symbols": "Symbols",
}
FAR_STYLES = ("google", "twemoji", "openmoji")
MAX_CLIPART_PIXELS = 16_000_000  # larger OpenClipart PNGs are skipped (decode cost, mostly huge maps)
MAX_TITLE_USES = 3  # an OpenClipart title used more often names a collection, not the picture
MAX_KEYWORDS = 6  # keywords kept per OpenClipart caption (short captions fit small text contexts)
CREDIT_PREFIX = re.compile(r"^clipart by [^-]+ - ", re.IGNORECASE)  # an author credit, not a description


@dataclass
class Settings:
    # Stored image side (px); pictures are drawn at 2× and downsampled. 96: the teacher's resolution, chosen on
    # validation (README, "Teacher alignment"): at 64 px the frozen towers cannot reach the zero-shot targets.
    size: int = 96
    seed: int = 0
    n_id: int = 100  # ID classes (also the OOD classes)
    n_zs: int = 100  # zero-shot classes, disjoint from ID
    n_zs_val: int = 100  # zero-shot *validation* classes (zs_val), disjoint from ID and ZS: model selection
    train_variants: int = 16  # id_train pictures per class: the clean one + (n − 1) scene variants
    val_variants: int = 2  # id_val scene variants per class
    eval_variants: int = 2  # id_test / ood_* / zs_* scene variants per class
    free_scene_variants: int = 2  # scenes per free emoji picture (benchmark styles), besides the clean one
    icon_scene_variants: int = 2  # scenes per icon-set picture (free and eval classes), besides the clean one
    # Far zero-shot candidate sets (FAR_EMOJI, glyphs.GLYPH_SETS): off by default, so the v2 table's data stays
    # the same bytes until the pilot has chosen the sets to keep.
    far_zs: bool = False
    n_far: int = 40  # test classes per far emoji set (zs_far_<set>)
    n_far_val: int = 20  # further classes per far emoji set for selection (zs_far_val_<set>)
    ref_fraction: float = 0.3  # caption groups going to `reference` (the rest: ref_val, alignment)
    ref_val_fraction: float = 0.05  # caption groups going to `ref_val`
    max_free_classes: int = 0  # >0: cap on emoji classes in captioned sets (quick builds)
    max_clipart: int = 0  # >0: cap on OpenClipart pictures (quick builds)
    rows_per_shard: int = 2048


QUICK = dict(
    n_id=10,
    n_zs=10,
    n_zs_val=10,
    train_variants=4,
    val_variants=1,
    eval_variants=1,
    free_scene_variants=1,
    icon_scene_variants=1,
    max_free_classes=120,
    max_clipart=300,
    n_far=5,
    n_far_val=3,
)


def version(settings: Settings) -> str:
    """The version a build with ``settings`` writes: v2, or v2 plus the far zero-shot candidates."""
    return VERSION_FAR if settings.far_zs else VERSION


def log(msg: str) -> None:
    print(f"[emojishift] {msg}", flush=True)


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def npm_ready(npm_prefix: Path) -> bool:
    for name, version in NPM_PACKAGES.items():
        meta = npm_prefix / "node_modules" / name / "package.json"
        if not meta.is_file() or json.loads(meta.read_text()).get("version") != version:
            return False
    return True


def apt_marker(root: Path, package: str) -> Path:
    return root / f".extracted-{package}"


def apt_ready(apt_dir: Path, packages: dict[str, str] = APT_PACKAGES) -> bool:
    root = apt_dir / "root"
    return all(
        apt_marker(root, p).is_file() and apt_marker(root, p).read_text().strip() == v
        for p, v in packages.items()
    )


def _run(cmd: list[str], cwd: Path | None = None) -> None:
    log("$ " + " ".join(cmd))
    try:
        subprocess.run(cmd, cwd=cwd, check=True)
    except FileNotFoundError:
        raise SystemExit(f"{cmd[0]}: not found; it is needed to fetch the EmojiShift sources") from None
    except subprocess.CalledProcessError as err:
        hint = " (run `apt-get update` first?)" if cmd[0] == "apt-get" else ""
        raise SystemExit(f"`{' '.join(cmd)}` failed with exit code {err.returncode}{hint}") from None


def install_sources(cache: Path, offline: bool = False, far_zs: bool = False) -> dict[str, Any]:
    """npm packages into ``sources/npm``, Debian packages downloaded and unpacked into ``sources/apt/root``
    (no root install); ``far_zs`` adds the font packages. Anything already there at the pinned version is reused."""
    npm_prefix, apt_dir = cache / "sources" / "npm", cache / "sources" / "apt"
    apt_packages = APT_PACKAGES | (FONT_APT_PACKAGES if far_zs else {})
    actions = []
    if not npm_ready(npm_prefix):
        if offline:
            raise SystemExit(f"{npm_prefix}: npm sources missing and --offline given")
        npm_prefix.mkdir(parents=True, exist_ok=True)
        pins = [f"{n}@{v}" for n, v in NPM_PACKAGES.items()]
        cmd = ["npm", "install", "--ignore-scripts", "--no-audit", "--no-fund", "--prefix", str(npm_prefix)]
        _run(cmd + pins)
        if not npm_ready(npm_prefix):
            raise SystemExit(f"{npm_prefix}: npm install finished but the pinned versions are not there")
        actions.append("npm install")
    if not apt_ready(apt_dir, apt_packages):
        if offline:
            raise SystemExit(f"{apt_dir}: Debian sources missing and --offline given")
        apt_dir.mkdir(parents=True, exist_ok=True)
        root = apt_dir / "root"
        for package, version in apt_packages.items():
            if apt_marker(root, package).is_file():
                continue
            debs = sorted(apt_dir.glob(f"{package}_*.deb"))
            if not debs:
                _run(["apt-get", "download", f"{package}={version}"], cwd=apt_dir)
                debs = sorted(apt_dir.glob(f"{package}_*.deb"))
                actions.append(f"apt-get download {package}")
            root.mkdir(exist_ok=True)
            _run(["dpkg-deb", "-x", str(debs[-1]), str(root)])
            apt_marker(root, package).write_text(version + "\n")
            actions.append(f"dpkg-deb -x {package}")
    sizes = {
        "npm_bytes": _dir_size(npm_prefix / "node_modules"),
        "apt_deb_bytes": sum(f.stat().st_size for f in apt_dir.glob("*.deb")),
        "apt_unpacked_bytes": _dir_size(apt_dir / "root"),
    }
    return {"actions": actions or ["reused"], **sizes}


# ---------------------------------------------------------------------------------------------------- index
def norm_code(code: str) -> str:
    """'1F3CB-FE0F' → '1f3cb': the packages disagree on upper/lower case and on variation selector 16."""
    return "-".join(p for p in code.lower().split("-") if p and p != "fe0f")


@dataclass(frozen=True)
class Emoji:
    code: str  # normalised code point sequence: the class key
    name: str  # CLDR short name (OpenMoji annotation), else the Unicode name: the class name in prompts
    category: str
    subcategory: str
    art: dict[str, str]  # style → source locator (a file path, or "icon:<slug>" for Fluent flat)


def name_key(name: str) -> str:
    """'Admission Tickets' / 'admission-tickets' / 'admissiontickets' → 'admissiontickets': the one spelling
    that CLDR names, Unicode names, short names and every icon set's slugs (fxemoji drops the hyphens) share."""
    return re.sub(r"[^a-z0-9]", "", name.lower().replace("&", "and").replace("’", "").replace("'", ""))


def icon_key(slug: str) -> str:
    """:func:`name_key` of an icon slug after the sets' own spellings: EmojiOne's 'flag-for-flag-japan' is CLDR's
    'flag: Japan'; Streamline numbers its variants ('bird-1', 'bird-2')."""
    slug = re.sub(r"^flag-for-(flag-)?", "flag-", slug)
    return name_key(re.sub(r"-\d+$", "", slug))


class Library:
    """The installed sources: emoji metadata, where each style's picture of each code point is, and the
    renderer. Pictures come back as RGBA at a requested side (SVGs rasterised at that side).

    Icon-set pictures are located as ``icon:<package>:<slug>``; the icon sets have no code-point table, so their
    slugs are matched to code points by name (:meth:`_match_icons`, counted in ``icon_matches``)."""

    def __init__(self, cache: Path, rasterise: Callable[[str, int], Image.Image] | None = None) -> None:
        self.npm = cache / "sources" / "npm" / "node_modules"
        self.apt_root = cache / "sources" / "apt" / "root"
        self.clipart = self.apt_root / "usr" / "share" / "openclipart"
        self.rasterise = rasterise or resvg_rasterise
        self.iconsets: dict[str, dict[str, Any]] = {}
        for package in [FLAT_ICONS] + [pkg for pkg, _ in ICON_STYLES.values()]:
            self.iconsets[package] = json.loads((self.npm / package / "icons.json").read_text())
        self._art_hash: dict[str, str] = {}
        self.icon_matches: dict[str, dict[str, int]] = {}
        self.emoji = self._index()

    def _index(self) -> list[Emoji]:
        meta = json.loads((self.npm / "emoji-datasource/emoji.json").read_text())
        openmoji = {
            norm_code(e["hexcode"]): e
            for e in json.loads((self.npm / "openmoji/data/openmoji.json").read_text())
        }
        chars = json.loads((self.npm / FLAT_ICONS / "chars.json").read_text())
        flat_icons = self.iconsets[FLAT_ICONS]
        flat = {
            norm_code(k): v
            for k, v in chars.items()
            if v in flat_icons["icons"] or v in flat_icons.get("aliases", {})
        }
        fluent3d = {
            norm_code(f.stem): f
            for f in sorted((self.npm / "@lobehub/fluent-emoji-3d/assets").glob("*.webp"))
        }
        google = self.npm / "emoji-datasource-google/img/google/64"
        twitter = self.npm / "emoji-datasource-twitter/img/twitter/64"
        found = []
        # name_key → code points, per tier: CLDR names first, then Unicode names, then short names / slugs (a
        # short name such as "pig" is PIG FACE's while the CLDR "pig" is PIG: the first tier that knows a key wins)
        names: list[dict[str, set[str]]] = [{}, {}, {}]
        for e in sorted(meta, key=lambda e: norm_code(e["unified"])):
            # An obsoleted code point has its successor's art; Component = skin-tone swatches and hair parts.
            if e.get("obsoleted_by") or e["category"] == "Component":
                continue
            code = norm_code(e["unified"])
            om = openmoji.get(code)
            art: dict[str, str] = {}
            if e.get("has_img_google") and (google / e["image"]).is_file():
                art["google"] = str(google / e["image"])
            if e.get("has_img_twitter") and (twitter / e["image"]).is_file():
                art["twemoji"] = str(twitter / e["image"])
            if om is not None:
                for style, folder in (("openmoji", "color"), ("openmoji_black", "black")):
                    svg = self.npm / "openmoji" / folder / "svg" / f"{om['hexcode']}.svg"
                    if svg.is_file():
                        art[style] = str(svg)
            if code in fluent3d:
                art["fluent_3d"] = str(fluent3d[code])
            if code in flat:
                art["fluent_flat"] = f"icon:{FLAT_ICONS}:{flat[code]}"
            name = om["annotation"] if om is not None and om.get("annotation") else e["name"].lower()
            tiers = [[name], [e.get("name") or ""], [*(e.get("short_names") or []), flat.get(code, "")]]
            for tier, aliases in zip(names, tiers, strict=True):
                for alias in aliases:
                    if name_key(alias):
                        tier.setdefault(name_key(alias), set()).add(code)
            found.append(Emoji(code, " ".join(name.split()), e["category"], e["subcategory"], art))
        self._match_icons(found, names)
        return [e for e in found if e.art]

    def _match_icons(self, emoji: list[Emoji], names: list[dict[str, set[str]]]) -> None:
        """Give each emoji its picture in every icon set, matching slugs to code points by :func:`icon_key`
        against the name tiers (CLDR, Unicode, short names), the first tier that knows the key deciding.

        A slug whose key names no code point (skin tones, set-specific names) is *unmatched*; one whose key
        names several in its tier is *ambiguous* and left out; a second slug for an already matched code point
        (an alias, a numbered variant) is a *duplicate* and left out. All three are counted per set."""
        by_code = {e.code: e for e in emoji}
        for style, (package, _) in ICON_STYLES.items():
            icons = self.iconsets[package]
            counts = Counter()
            for slug in sorted([*icons["icons"], *icons.get("aliases", {})]):
                key = icon_key(slug)
                codes = next((tier[key] for tier in names if key in tier), set())
                if not codes:
                    counts["unmatched"] += 1
                elif len(codes) > 1:
                    counts["ambiguous"] += 1
                elif style in by_code[next(iter(codes))].art:
                    counts["duplicate"] += 1
                else:
                    by_code[next(iter(codes))].art[style] = f"icon:{package}:{slug}"
                    counts["matched"] += 1
            self.icon_matches[style] = dict(sorted(counts.items()))

    def source_bytes(self, locator: str) -> bytes:
        if locator.startswith("icon:"):
            return json.dumps(self._icon(locator), sort_keys=True).encode()
        return Path(locator).read_bytes()

    def art_hash(self, locator: str) -> str:
        """SHA-256 of a source picture's bytes (cached): the identity of a piece of art."""
        if locator not in self._art_hash:
            self._art_hash[locator] = sha(self.source_bytes(locator))
        return self._art_hash[locator]

    @functools.cached_property
    def art_uses(self) -> Counter[str]:
        """How many pictures (code point × style) each piece of art is: 1 means it names one code point."""
        return Counter(self.art_hash(a) for e in self.emoji for a in e.art.values())

    def own_art(self, e: Emoji, style: str) -> bool:
        """``e`` is drawn in ``style`` with art that no other picture shares."""
        return style in e.art and self.art_uses[self.art_hash(e.art[style])] == 1

    def _icon(self, locator: str) -> dict[str, Any]:
        """An iconify icon (``icon:<package>:<slug>``) with its alias chain resolved (flips and quarter turns
        composed) and its set's default size filled in."""
        _, package, slug = locator.split(":", 2)
        iconset = self.iconsets[package]
        aliases = iconset.get("aliases", {})
        transform = {"hFlip": False, "vFlip": False, "rotate": 0}
        while slug in aliases:
            alias = aliases[slug]
            transform["hFlip"] ^= bool(alias.get("hFlip", False))
            transform["vFlip"] ^= bool(alias.get("vFlip", False))
            transform["rotate"] += int(alias.get("rotate", 0))
            slug = alias["parent"]
        size = {"width": iconset.get("width", 16), "height": iconset.get("height", 16)}
        return {**size, **iconset["icons"][slug], **transform}

    def picture(self, locator: str, side: int) -> Image.Image:
        """RGBA picture of one source at ``side`` × ``side``."""
        if locator.startswith("icon:"):
            icon = self._icon(locator)
            w, h = icon["width"], icon["height"]
            box = f"{icon.get('left', 0)} {icon.get('top', 0)} {w} {h}"
            svg = f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="{box}" width="{w}" height="{h}">'
            svg += icon["body"] + "</svg>"
            img = self.rasterise(svg, side)
            if icon["hFlip"]:
                img = ImageOps.mirror(img)
            if icon["vFlip"]:
                img = ImageOps.flip(img)
            return img.rotate(-90 * (icon["rotate"] % 4)) if icon["rotate"] % 4 else img
        path = Path(locator)
        if path.suffix == ".svg":
            return self.rasterise(path.read_text(encoding="utf-8"), side)
        with Image.open(path) as img:
            img = img.convert("RGBA")
        return img if img.size == (side, side) else img.resize((side, side), Image.Resampling.LANCZOS)


def resvg_rasterise(svg: str, side: int) -> Image.Image:
    """SVG text → RGBA with resvg (the ``resvg-py`` wheel: Rust, no system libraries, no fonts needed)."""
    try:
        import resvg_py
    except ImportError:
        raise SystemExit("SVG rasterisation needs the resvg-py wheel: pip install resvg-py==0.5.0") from None
    png = resvg_py.svg_to_bytes(svg_string=svg, width=side, height=side, skip_system_fonts=True)
    with Image.open(io.BytesIO(bytes(png))) as img:
        return img.convert("RGBA")


# ---------------------------------------------------------------------------------------------------- clip art
_NS = {
    "dc": "http://purl.org/dc/elements/1.1/",
    "cc": "http://web.resource.org/cc/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
}


@dataclass(frozen=True)
class Clipart:
    key: str  # path relative to the openclipart folder, without extension
    png: str
    title: str  # dc:title as written (the > 3 uses rule counts these)
    caption: str
    group: str  # the caption's name part, case-folded: pictures sharing it go to the same captioned split


def png_size(path: Path) -> tuple[int, int] | None:
    """Width and height from the PNG header (IHDR), without decoding anything."""
    with open(path, "rb") as fh:
        head = fh.read(24)
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", head[16:24])


def svg_metadata(path: Path) -> tuple[str, list[str]]:
    """(dc:title, keywords) of an OpenClipart SVG's RDF block; ('', []) when unreadable or untitled."""
    try:
        work = ET.parse(path).getroot().find(".//cc:Work", _NS)
    except (ET.ParseError, OSError):
        return "", []
    if work is None:
        return "", []
    title = work.find("dc:title", _NS)
    words = [(li.text or "") for li in work.findall("dc:subject/rdf:Bag/rdf:li", _NS)]
    return " ".join((title.text or "").split()) if title is not None else "", words


def clean_keywords(words: Iterable[str], title: str) -> list[str]:
    """Keywords as caption words: no empties, no Perl 'hash(0x…)' debris, no repeats of the title."""
    kept: list[str] = []
    for word in words:
        w = " ".join(word.replace("_", " ").split()).lower()
        if not w or w.startswith("hash") or w in ("unsorted", title.lower()) or w in kept:
            continue
        if "://" in w or w.startswith("www."):  # authors' web addresses
            continue
        kept.append(w)
    return kept[:MAX_KEYWORDS]


def index_clipart(root: Path) -> tuple[list[Clipart], Counter[str]]:
    """Every OpenClipart SVG with a usable title and a PNG twin ≤ 16 MP; titles used > 3 times are skipped."""
    skipped: Counter[str] = Counter()
    entries = []
    svgs = sorted((root / "svg").rglob("*.svg"))
    for svg in tqdm(svgs, desc="openclipart metadata", unit="svg", leave=False, disable=None):
        rel = svg.relative_to(root / "svg")
        title, words = svg_metadata(svg)
        title = " ".join(title.replace("_", " ").split())
        if not title:
            skipped["no_title"] += 1
            continue
        entries.append((rel, title, words))
    uses = Counter(t.casefold() for _, t, _ in entries)
    found = []
    for rel, title, words in entries:
        if uses[title.casefold()] > MAX_TITLE_USES:
            skipped["repeated_title"] += 1
            continue
        png = root / "png" / rel.with_suffix(".png")
        size = png_size(png) if png.is_file() else None
        if size is None:
            skipped["no_png"] += 1
            continue
        if size[0] * size[1] > MAX_CLIPART_PIXELS:
            skipped["too_large"] += 1
            continue
        name = CREDIT_PREFIX.sub("", title) or title  # "Clipart by Nicu Buculei - fc23" → "fc23"
        keywords = clean_keywords(words, name)
        caption = f"{name}: {', '.join(keywords)}" if keywords else name
        found.append(Clipart(rel.with_suffix("").as_posix(), str(png), title, caption, name.casefold()))
    return found, skipped


def clipart_picture(path: str, side: int) -> Image.Image:
    """An OpenClipart PNG fitted into a white square (aspect kept), RGB."""
    with Image.open(path) as img:
        img = img.convert("RGBA")  # first: palette images would otherwise be downsampled without filtering
    img.thumbnail((side, side), Image.Resampling.LANCZOS)
    canvas = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    canvas.alpha_composite(img, ((side - img.width) // 2, (side - img.height) // 2))
    return canvas.convert("RGB")


# ---------------------------------------------------------------------------------------------------- pictures
def rng_for(*parts: object) -> np.random.Generator:
    """An independent RNG per picture, from its identity: no dependence on processing order."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def unit_hash(*parts: object) -> float:
    """A stable number in [0, 1) for hash-based assignment (adding an item never moves another)."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64


def on_white(picture: Image.Image, size: int) -> Image.Image:
    canvas = Image.new("RGBA", picture.size, (255, 255, 255, 255))
    canvas.alpha_composite(picture)
    return canvas.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)


def _colours(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """Background colours with every channel ≥ 80, so black line art stays visible on any background."""
    return rng.integers(80, 256, (*shape, 3))


def _background(rng: np.random.Generator, side: int) -> Image.Image:
    kind = rng.choice(["white", "solid", "gradient", "blobs"], p=[0.15, 0.25, 0.3, 0.3])
    if kind == "white":
        return Image.new("RGBA", (side, side), (255, 255, 255, 255))
    if kind == "solid":
        return Image.new("RGBA", (side, side), (*map(int, _colours(rng)), 255))
    if kind == "gradient":
        a, b = _colours(rng), _colours(rng)
        angle = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:side, 0:side] / max(side - 1, 1)
        t = (xx * math.cos(angle) + yy * math.sin(angle)) / (abs(math.cos(angle)) + abs(math.sin(angle)))
        t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
        rgb = a[None, None] * (1 - t[..., None]) + b[None, None] * t[..., None]
        return Image.fromarray(rgb.astype(np.uint8), "RGB").convert("RGBA")
    cells = int(rng.integers(2, 6))
    blobs = Image.fromarray(_colours(rng, cells, cells).astype(np.uint8), "RGB")
    return blobs.resize((side, side), Image.Resampling.BICUBIC).convert("RGBA")


def scene(picture: Image.Image, rng: np.random.Generator, size: int) -> Image.Image:
    """One deterministic variant of an emoji: colour jitter, rotation ±30°, scale 50–95 %, random position,
    random background (white, solid, gradient or smooth colour blobs). No flips (some emoji have a side)."""
    side = picture.width
    rgb, alpha = picture.convert("RGB"), picture.getchannel("A")
    rgb = ImageEnhance.Brightness(rgb).enhance(rng.uniform(0.8, 1.2))
    rgb = ImageEnhance.Contrast(rgb).enhance(rng.uniform(0.8, 1.2))
    rgb = ImageEnhance.Color(rgb).enhance(rng.uniform(0.7, 1.3))
    art = rgb.convert("RGBA")
    art.putalpha(alpha)
    art = art.rotate(rng.uniform(-30, 30), resample=Image.Resampling.BICUBIC, expand=True)
    bbox = art.getbbox() or (0, 0, art.width, art.height)
    art = art.crop(bbox)
    scale = rng.uniform(0.5, 0.95) * side / max(art.size)
    art = art.resize(
        (max(1, round(art.width * scale)), max(1, round(art.height * scale))), Image.Resampling.LANCZOS
    )
    canvas = _background(rng, side)
    x = int(rng.integers(0, side - art.width + 1))
    y = int(rng.integers(0, side - art.height + 1))
    canvas.alpha_composite(art, (x, y))
    return canvas.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------------- splits
def choose_classes(
    lib: Library, settings: Settings
) -> tuple[list[Emoji], list[Emoji], list[Emoji], list[Emoji]]:
    """(ID, ZS, zs_val, universe): the universe is every object-like emoji drawn in all six styles whose art is
    not shared with another code point in any style, clock faces excepted; ID, ZS and zs_val are disjoint,
    seeded draws from it (one permutation: adding zs_val moves no ID or ZS class)."""
    seen: dict[tuple[str, str], str] = {}
    universe = []
    for e in lib.emoji:
        if e.category not in OBJECT_CATEGORIES or any(s not in e.art for s in STYLES):
            continue
        if ROTATION_NAMED.search(e.name):
            continue
        keys = [(s, lib.art_hash(e.art[s])) for s in STYLES]
        if any(k in seen for k in keys):
            continue
        seen.update((k, e.code) for k in keys)
        universe.append(e)
    need = settings.n_id + settings.n_zs + settings.n_zs_val
    if need > len(universe):
        raise SystemExit(
            f"--n-id + --n-zs + --n-zs-val = {need}, but only {len(universe)} classes exist in all styles"
        )
    order = np.random.default_rng(settings.seed).permutation(len(universe))
    picked = [universe[i] for i in order[:need]]
    n_id, n_zs = settings.n_id, settings.n_zs
    return picked[:n_id], picked[n_id : n_id + n_zs], picked[n_id + n_zs :], universe


def far_classes(lib: Library, settings: Settings) -> dict[str, tuple[list[Emoji], list[Emoji]]]:
    """Far zero-shot emoji sets: set → (test classes, validation classes), disjoint seeded draws from the emoji
    of the set's category drawn in every FAR_STYLES style with art of their own (a picture shared with another
    code point names neither), clock faces excepted. The categories are outside OBJECT_CATEGORIES, so no far class
    is an ID, ZS or zs_val class."""
    need = settings.n_far + settings.n_far_val
    out = {}
    for name, category in FAR_EMOJI.items():
        pool = [
            e
            for e in lib.emoji
            if e.category == category
            and all(lib.own_art(e, s) for s in FAR_STYLES)
            and not ROTATION_NAMED.search(e.name)
        ]
        if need > len(pool):
            raise SystemExit(
                f"far zero-shot set {name!r} ({category}): --n-far + --n-far-val = {need}, but only {len(pool)} "
                f"classes are drawn in {', '.join(FAR_STYLES)} with art of their own"
            )
        picked = [pool[i] for i in rng_for(settings.seed, "far", name).permutation(len(pool))[:need]]
        out[name] = (picked[: settings.n_far], picked[settings.n_far :])
    return out


Row = tuple[str, Callable[[], Image.Image], dict[str, Any]]  # (key, render function, extra columns)


class Writer:
    """Wraps :class:`ShardWriter`: enforces that no image is written twice anywhere in the benchmark."""

    def __init__(self, out: Path, manifest: Manifest, settings: Settings, seen: dict[str, str]) -> None:
        self.name = out.name
        self.writer = ShardWriter(out, manifest, settings.rows_per_shard, overwrite=True)
        self.seen = seen
        self.items: list[tuple[str, str]] = []

    def add(self, picture: Image.Image, key: str, **row: Any) -> bool:
        data = encode_png(picture)
        digest = sha(data)
        if digest in self.seen:
            self.writer.skip("duplicate")
            return False
        self.seen[digest] = self.name
        self.writer.add({"image": data, "key": key, **row})
        self.items.append((key, digest[:16]))
        return True

    def close(self) -> Manifest:
        return self.writer.close()


def _write(
    cache: Path,
    name: str,
    manifest: Manifest,
    rows: list[Row],
    settings: Settings,
    seen: dict[str, str],
    splits: dict[str, Any],
) -> Manifest:
    """Render and write one split; ``rows`` are (key, render function, extra columns)."""
    t0 = time.time()
    for stale in cache.glob(f".{name}.*"):  # the temporary folder of an interrupted run
        shutil.rmtree(stale, ignore_errors=True)
    writer = Writer(cache / name, manifest, settings, seen)
    try:
        for key, render, extra in tqdm(rows, desc=name, unit="img", leave=False, disable=None):
            writer.add(render(), key, **extra)
    except BaseException:
        writer.writer.abort()
        raise
    manifest = writer.close()
    splits[name] = {
        "kind": manifest.kind,
        "rows": manifest.num_rows,
        "classes": manifest.num_classes,
        "fingerprint": manifest.fingerprint,
        "skipped": manifest.skipped,
        "items": writer.items,
    }
    log(f"{name}: {manifest.num_rows} rows ({time.time() - t0:.1f} s)")
    return manifest


def _shuffled(rows: list[Any], seed: int, name: str) -> list[Any]:
    return [rows[i] for i in rng_for(seed, "order", name).permutation(len(rows))]


def scene_rows(
    lib: Library, classes: Sequence[Emoji], style: str, purpose: str, first: int, last: int, s: Settings
) -> list[Row]:
    """Scene variants ``first … last − 1`` of every class in one style, each from its own seed."""
    return [
        scene_row(lib, e, style, purpose, i, s, label=y)
        for y, e in enumerate(classes)
        for i in range(first, last)
    ]


def scene_row(lib: Library, e: Emoji, style: str, purpose: str, i: int, s: Settings, **extra: Any) -> Row:
    """Scene variant ``i`` of one emoji picture, from the seed of (seed, purpose, code point, style, i)."""
    render = lambda: scene(  # noqa: E731
        lib.picture(e.art[style], 2 * s.size), rng_for(s.seed, purpose, e.code, style, i), s.size
    )
    return f"{e.code}/{style}/{purpose}/{i}", render, extra


def clean_row(lib: Library, e: Emoji, style: str, s: Settings, **extra: Any) -> Row:
    render = lambda: on_white(lib.picture(e.art[style], 2 * s.size), s.size)  # noqa: E731
    return f"{e.code}/{style}/clean", render, extra


def caption_rows(lib: Library, e: Emoji, styles: Iterable[str], variants: int, s: Settings) -> list[Row]:
    """Captioned rows of one emoji in ``styles``: the clean picture on white and ``variants`` scenes of each,
    captioned "name, style" (scenes from their own seeds, purpose "cap")."""
    rows: list[Row] = []
    for style in styles:
        caption = f"{e.name}, {STYLE_CAPTION.get(style) or ICON_STYLES[style][1]}"
        rows.append(clean_row(lib, e, style, s, caption=caption))
        rows += [scene_row(lib, e, style, "cap", i, s, caption=caption) for i in range(variants)]
    return rows


GLYPH = "glyph"  # the first part of a glyph row's key: glyph/<set>/<char>/<font>/<purpose>[/<i>]


def glyph_row(
    font: glyphs.Font, gset: str, char: str, purpose: str, i: int | None, s: Settings, **extra: Any
) -> Row:
    """``char`` in ``font``: clean on white (``i`` None) or scene variant ``i``, the ink colour and the scene from
    the seed of (seed, purpose, set, char, font, i)."""
    rng = rng_for(s.seed, purpose, gset, char, font.key, i)
    # Dark ink: legible on every scene background (their channels are all ≥ 80)
    ink = tuple(int(c) for c in rng.integers(0, 90, 3))

    def render() -> Image.Image:
        picture = glyphs.glyph_picture(font, char, 2 * s.size, ink)
        return on_white(picture, s.size) if i is None else scene(picture, rng, s.size)

    tail = "clean" if i is None else f"{purpose}/{i}"
    return f"{GLYPH}/{gset}/{char}/{font.key}/{tail}", render, extra


def glyph_eval_rows(
    fonts: Sequence[glyphs.Font], gset: str, purpose: str, variants: int, s: Settings
) -> list[Row]:
    """Scene variants ``0 … variants − 1`` of every character of ``gset`` in every one of ``fonts``, labelled."""
    chars = glyphs.GLYPH_SETS[gset]
    return [
        glyph_row(f, gset, c, purpose, i, s, label=y)
        for y, c in enumerate(chars)
        for f in fonts
        for i in range(variants)
    ]


def glyph_caption_rows(fonts: Sequence[glyphs.Font], s: Settings) -> list[Row]:
    """Every glyph in every alignment font: the clean picture and ``icon_scene_variants`` scenes, captioned
    "the digit 7, DejaVu Sans Bold"."""
    rows = []
    for gset, chars in glyphs.GLYPH_SETS.items():
        for font in fonts:
            for c in chars:
                caption = f"{glyphs.NOUN[gset]} {c}, {font.name}"
                rows.append(glyph_row(font, gset, c, "cap", None, s, caption=caption))
                rows += [
                    glyph_row(font, gset, c, "cap", i, s, caption=caption)
                    for i in range(s.icon_scene_variants)
                ]
    return rows


def check_captioned(
    rows: dict[str, list[Row]], eval_codes: set[str], font_roles: dict[str, str] | None = None
) -> None:
    """The rule change of v2, enforced: an eval class (ID, ZS, zs_val, far zero-shot) may appear in captioned
    data only in an icon style, and only in ``alignment`` (the teacher's pre-training data); never in a benchmark
    style, and never in ``reference`` / ``ref_val``, which the fine-tunes and their validation see. A glyph (far
    zero-shot digits and letters) likewise: only in ``alignment``, only in an alignment font (``font_roles``:
    font key → role)."""
    for split, split_rows in rows.items():
        for key, _, _ in split_rows:
            parts = key.split("/")
            if parts[0] == GLYPH:
                role = (font_roles or {}).get(parts[3])
                if role != "alignment" or split != "alignment":
                    raise AssertionError(
                        f"{split}: {key} draws a glyph in font {parts[3]!r} (role {role}); glyphs may only appear "
                        "in `alignment`, in an alignment font"
                    )
                continue
            code, style = parts[:2]
            if code in eval_codes and (style not in ICON_STYLES or split != "alignment"):
                raise AssertionError(
                    f"{split}: {key} draws an eval class in style {style!r}; eval classes may only appear in "
                    f"`alignment`, in an icon style ({', '.join(ICON_STYLES)})"
                )


def captioned_rows(
    lib: Library, s: Settings, eval_classes: Sequence[Emoji], fonts: Sequence[glyphs.Font] = ()
) -> tuple[dict[str, list[Row]], dict[str, Any]]:
    """``ref_val`` / ``reference`` / ``alignment`` rows, split by caption group so that no caption is in two:

    * free emoji (no eval class, no art shared with one): clean + scenes in every style they have — the six
      benchmark styles and the icon sets — captioned "name, style";
    * eval classes: clean + scenes in the **icon styles only**, all in ``alignment`` (see :func:`check_captioned`);
    * OpenClipart (title + keywords);
    * with ``fonts`` (far zero-shot builds): the glyphs in the alignment fonts among them, all in ``alignment``.

    A picture drawn for several code points (OpenMoji has one black outline for every country flag) names none
    of them, so it is left out."""
    eval_codes = {e.code for e in eval_classes}
    eval_art = {lib.art_hash(a) for e in eval_classes for a in e.art.values()}
    free = [e for e in lib.emoji if e.code not in eval_codes]
    free = [e for e in free if not any(lib.art_hash(a) in eval_art for a in e.art.values())]
    free = sorted(free, key=lambda e: unit_hash(s.seed, "cap", e.code))[: s.max_free_classes or None]
    clipart, skipped = index_clipart(lib.clipart)
    usable = len(clipart)
    clipart = sorted(clipart, key=lambda c: unit_hash(s.seed, "clip", c.key))[: s.max_clipart or None]

    def bucket(group: str) -> str:
        u = unit_hash(s.seed, "bucket", group)
        if u < s.ref_val_fraction:
            return "ref_val"
        return "reference" if u < s.ref_val_fraction + s.ref_fraction else "alignment"

    def unambiguous(e: Emoji, styles: Iterable[str]) -> list[str]:
        return [st for st in styles if lib.own_art(e, st)]

    rows: dict[str, list[Row]] = {"ref_val": [], "reference": [], "alignment": []}
    ambiguous = 0
    for e in free:
        ok = unambiguous(e, STYLES)
        ambiguous += sum(st in e.art for st in STYLES) - len(ok)
        rows[bucket("emoji/" + e.code)] += caption_rows(lib, e, ok, s.free_scene_variants, s)
        rows[bucket("emoji/" + e.code)] += caption_rows(
            lib, e, unambiguous(e, ICON_STYLES), s.icon_scene_variants, s
        )
    eval_icons = 0
    for e in sorted(eval_classes, key=lambda e: e.code):
        found = caption_rows(lib, e, unambiguous(e, ICON_STYLES), s.icon_scene_variants, s)
        rows["alignment"] += found
        eval_icons += len(found)
    for c in clipart:
        render = lambda c=c: clipart_picture(c.png, s.size)  # noqa: E731
        rows[bucket("clipart/" + c.group)].append((f"openclipart/{c.key}", render, {"caption": c.caption}))
    rows["alignment"] += glyph_caption_rows([f for f in fonts if f.role == "alignment"], s)
    check_captioned(rows, eval_codes, {f.key: f.role for f in fonts})
    stats = {
        "free_emoji_classes": len(free),
        "free_emoji_ambiguous_art": ambiguous,
        "eval_class_icon_rows": eval_icons,
        "eval_classes_with_icons": sum(bool(unambiguous(e, ICON_STYLES)) for e in eval_classes),
        "icon_matches": lib.icon_matches,
        "openclipart": {"usable": usable, "used": len(clipart), **dict(sorted(skipped.items()))},
    }
    return {name: _shuffled(r, s.seed, name) for name, r in rows.items()}, stats


def build(
    cache: Path, settings: Settings, rasterise: Callable[[str, int], Image.Image] | None = None
) -> dict[str, Any]:
    """Write every split into ``cache`` from the sources in ``cache/sources``; return the summary."""
    t0 = time.time()
    s = settings
    lib = Library(cache, rasterise)
    id_classes, zs_classes, zs_val_classes, universe = choose_classes(lib, s)

    plan: list[tuple[str, Manifest, list[Row]]] = []

    def labelled(
        name: str,
        classes: Sequence[Emoji | str],
        what: str,
        rows: list[Row],
        templates: Sequence[str] = TEMPLATES,
    ) -> None:
        names = [c if isinstance(c, str) else c.name for c in classes]
        manifest = Manifest(
            name=name, kind=LABELLED, classnames=names, templates=list(templates), source=what
        )
        plan.append((name, manifest, rows))

    # Eval splits first, then the training side, which is written against their hashes.
    labelled(
        "id_val",
        id_classes,
        "ID (Google) validation scenes",
        scene_rows(lib, id_classes, ID_STYLE, "val", 0, s.val_variants, s),
    )
    labelled(
        "id_test",
        id_classes,
        "ID (Google) test scenes",
        scene_rows(lib, id_classes, ID_STYLE, "test", 0, s.eval_variants, s),
    )
    # zs_val: other classes than ID and ZS, in all six styles, from their own seeds: what model selection reads
    # for "zero-shot kept", so that no test set is ever used to choose anything.
    zs_val = [
        r for style in STYLES for r in scene_rows(lib, zs_val_classes, style, "zsval", 0, s.val_variants, s)
    ]
    labelled("zs_val", zs_val_classes, "ZS validation classes, all six styles", zs_val)
    for group, classes in (("ood", id_classes), ("zs", zs_classes)):
        for style in STYLES:
            if group == "zs" or style != ID_STYLE:
                rows = scene_rows(lib, classes, style, "test", 0, s.eval_variants, s)
                labelled(f"{group}_{style}", classes, f"{group.upper()} ({style}) test scenes", rows)
    far, fonts = {}, []
    if s.far_zs:  # far zero-shot candidates: each a test split and a validation split (other classes / fonts)
        far = far_classes(lib, s)
        for name, (test, val) in far.items():
            rows = [r for st in FAR_STYLES for r in scene_rows(lib, test, st, "test", 0, s.eval_variants, s)]
            labelled(
                f"zs_far_{name}", test, f"far ZS: {FAR_EMOJI[name]} emoji, {', '.join(FAR_STYLES)}", rows
            )
            rows = [r for st in FAR_STYLES for r in scene_rows(lib, val, st, "farval", 0, s.val_variants, s)]
            labelled(
                f"zs_far_val_{name}", val, f"far ZS validation: {FAR_EMOJI[name]} emoji, other classes", rows
            )
        fonts = glyphs.find_fonts(lib.apt_root)
        for gset, chars in glyphs.GLYPH_SETS.items():
            for split, role, purpose, variants in (
                (f"zs_far_{gset}", "test", "test", s.eval_variants),
                (f"zs_far_val_{gset}", "val", "farval", s.val_variants),
            ):
                faces = [f for f in fonts if f.role == role]
                rows = glyph_eval_rows(faces, gset, purpose, variants, s)
                what = f"far ZS: {gset} in the {role} fonts ({len(faces)} faces)"
                labelled(split, list(chars), what, rows, glyphs.TEMPLATES[gset])
    # ID train: the clean Google picture of each class + (train_variants − 1) scenes drawn from their own seeds.
    rows = [clean_row(lib, e, ID_STYLE, s, label=y) for y, e in enumerate(id_classes)]
    rows += scene_rows(lib, id_classes, ID_STYLE, "train", 1, s.train_variants, s)
    labelled("id_train", id_classes, "ID (Google) clean + train scenes", _shuffled(rows, s.seed, "id_train"))
    far_eval = [e for test, val in far.values() for e in test + val]
    captioned, stats = captioned_rows(lib, s, id_classes + zs_classes + zs_val_classes + far_eval, fonts)
    for name, rows in captioned.items():
        what = "eval classes in icon styles only" if name == "alignment" else "emoji of no eval class"
        manifest = Manifest(name=name, kind=CAPTIONED, source=f"{name}: OpenClipart + emoji ({what})")
        plan.append((name, manifest, rows))

    seen: dict[str, str] = {}  # content hash → split, over the whole benchmark
    splits: dict[str, Any] = {}
    for name, manifest, rows in plan:
        manifest.source = f"EmojiShift {version(s)} {manifest.source}"
        _write(cache, name, manifest, rows, s, seen, splits)
    verify_disjoint(cache, list(splits))
    write_metadata(cache, s, id_classes, zs_classes, zs_val_classes, universe, splits, far, fonts)
    copy_licences(cache, far_zs=s.far_zs)
    far_summary = {name: [len(test), len(val)] for name, (test, val) in far.items()}
    far_summary |= {role: sum(f.role == role for f in fonts) for role in glyphs.ROLES if fonts}
    return {
        "version": version(s),
        "settings": asdict(s),
        "classes": {
            "universe": len(universe),
            "id": len(id_classes),
            "zs": len(zs_classes),
            "zs_val": len(zs_val_classes),
        },
        **({"far_zs": far_summary} if s.far_zs else {}),
        **stats,
        "rows": {name: split["rows"] for name, split in splits.items()},
        "build_seconds": round(time.time() - t0, 1),
    }


def verify_disjoint(cache: Path, names: Sequence[str]) -> None:
    """Re-read every written split and assert that no image (SHA-256 of its bytes) is in two places."""
    owner: dict[str, str] = {}
    for name in names:
        for row in iter_rows(cache / name, columns=["image", "key"]):
            digest = sha(row["image"])
            if digest in owner:
                raise AssertionError(
                    f"image {row['key']} in {name} is also in {owner[digest]} (same bytes): splits must be disjoint"
                )
            owner[digest] = name


def write_metadata(
    cache: Path,
    settings: Settings,
    id_classes: list[Emoji],
    zs_classes: list[Emoji],
    zs_val_classes: list[Emoji],
    universe: list[Emoji],
    splits: dict[str, Any],
    far: dict[str, tuple[list[Emoji], list[Emoji]]] | None = None,
    fonts: Sequence[glyphs.Font] = (),
) -> None:
    def describe(classes: list[Emoji]) -> list[dict[str, Any]]:
        return [
            {"label": y, "name": e.name, "code": e.code, "category": e.category, "subcategory": e.subcategory}
            for y, e in enumerate(classes)
        ]

    classes = {
        "version": version(settings),
        "seed": settings.seed,
        "id_style": ID_STYLE,
        "styles": list(STYLES),
        "templates": list(TEMPLATES),
        "universe": [e.code for e in universe],
        "id": describe(id_classes),
        "zs": describe(zs_classes),
        "zs_val": describe(zs_val_classes),
        "icon_styles": {style: pkg for style, (pkg, _) in ICON_STYLES.items()},
    }
    if settings.far_zs:
        classes["far_zs"] = {
            "styles": list(FAR_STYLES),
            **{
                name: {"test": describe(test), "val": describe(val)}
                for name, (test, val) in (far or {}).items()
            },
            **{gset: list(chars) for gset, chars in glyphs.GLYPH_SETS.items()},
            "fonts": {
                role: [f"{f.key} ({f.name})" for f in fonts if f.role == role] for role in glyphs.ROLES
            },
        }
    (cache / "classes.json").write_text(json.dumps(classes, indent=1, ensure_ascii=False) + "\n")
    body = {"version": version(settings), "settings": asdict(settings), "splits": splits}
    (cache / "splits.json").write_text(
        json.dumps(body, indent=None, separators=(",", ":"), ensure_ascii=False) + "\n"
    )


# ---------------------------------------------------------------------------------------------------- licences
ATTRIBUTION = """# EmojiShift — sources, licences and attribution

The images in this folder's datasets are derived (rasterised, resized, recoloured, rotated, placed on
backgrounds) from the following works. The derived images keep each source's licence.

| style / source | package (version) | licence | attribution |
|---|---|---|---|
| Google / Noto emoji | npm emoji-datasource-google ({google}) | Apache-2.0 (https://www.apache.org/licenses/LICENSE-2.0) | Noto Emoji © Google Inc., https://github.com/googlefonts/noto-emoji |
| Twemoji | npm emoji-datasource-twitter ({twitter}) | CC-BY-4.0 (https://creativecommons.org/licenses/by/4.0/) | Twemoji graphics © Twitter, Inc. and other contributors, https://github.com/jdecked/twemoji |
| OpenMoji colour + black | npm openmoji ({openmoji}) | CC-BY-SA-4.0 (https://creativecommons.org/licenses/by-sa/4.0/; full text: openmoji-LICENSE.txt) | OpenMoji – the open-source emoji and icon project, https://openmoji.org; derived images are shared alike under CC-BY-SA-4.0 |
| Fluent 3D | npm @lobehub/fluent-emoji-3d ({fluent3d}) | MIT (fluent-emoji-MIT.txt) | Fluent Emoji © Microsoft Corporation, https://github.com/microsoft/fluentui-emoji; packaged by LobeHub |
| Fluent flat | npm @iconify-json/fluent-emoji-flat ({flat}) | MIT (fluent-emoji-MIT.txt) | Fluent Emoji © Microsoft Corporation, https://github.com/microsoft/fluentui-emoji; packaged by Iconify |
| emoji metadata (names, categories) | npm emoji-datasource ({datasource}) | MIT (emoji-datasource-LICENSE.txt) | © Cal Henderson (iamcal/emoji-data); CLDR names via OpenMoji's data |
| OpenClipart | Debian openclipart-svg / openclipart-png ({openclipart}) | Public domain (openclipart-copyright.txt) | Open Clip Art Library, https://openclipart.org; authors per image in the SVG metadata |
| EmojiOne 2 (captioned data only) | npm @iconify-json/emojione ({emojione}) | CC-BY-4.0 (https://creativecommons.org/licenses/by/4.0/) | Emoji One, https://github.com/EmojiTwo/emojitwo; packaged by Iconify |
| EmojiOne 1 (captioned data only) | npm @iconify-json/emojione-v1 ({emojione_v1}) | CC-BY-SA-4.0 (https://creativecommons.org/licenses/by-sa/4.0/) | Emoji One, https://github.com/joypixels/emojione-legacy; packaged by Iconify; derived images are shared alike under CC-BY-SA-4.0 |
| EmojiOne monotone (captioned data only) | npm @iconify-json/emojione-monotone ({emojione_monotone}) | CC-BY-4.0 (https://creativecommons.org/licenses/by/4.0/) | Emoji One, https://github.com/EmojiTwo/emojitwo; packaged by Iconify |
| Firefox OS emoji (captioned data only) | npm @iconify-json/fxemoji ({fxemoji}) | Apache-2.0 (https://mozilla.github.io/fxemoji/LICENSE.md) | © Mozilla, https://github.com/mozilla/fxemoji; packaged by Iconify |
| Noto emoji 2016 (captioned data only) | npm @iconify-json/noto-v1 ({noto_v1}) | Apache-2.0 | Noto Emoji © Google Inc., https://github.com/googlefonts/noto-emoji; packaged by Iconify |
| Streamline emoji (captioned data only) | npm @iconify-json/streamline-emojis ({streamline}) | CC-BY-4.0 (https://creativecommons.org/licenses/by/4.0/) | Streamline, https://github.com/webalys-hq/streamline-vectors; packaged by Iconify |

Not used: the Apple and Facebook emoji sets that emoji-datasource also ships (not openly licensed).
"""

FONT_ATTRIBUTION = """
## Fonts (far zero-shot glyph sets)

Digits and letters rendered with the fonts of these Debian packages; each package's copyright file is copied
here as `<package>-copyright.txt`. The fonts themselves are not redistributed.

| package (version) | licence | role |
|---|---|---|
| fonts-dejavu-core ({dejavu}) | Bitstream Vera / DejaVu changes: public domain | alignment |
| fonts-liberation2 ({liberation}) | SIL Open Font License 1.1 | alignment |
| fonts-freefont-ttf ({freefont}) | GPL-3+ with the font exception | validation |
| fonts-urw-base35 ({urw}) | AGPL-3 with the font exception | test |
"""

FLUENT_MIT = """MIT License

Copyright (c) Microsoft Corporation.

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


def copy_licences(cache: Path, far_zs: bool = False) -> Path:
    """``LICENSES/``: the attribution table, the licence texts the packages ship, and the Fluent MIT text (and
    with ``far_zs`` the font packages' copyright files)."""
    out = cache / "LICENSES"
    out.mkdir(exist_ok=True)
    npm = cache / "sources" / "npm" / "node_modules"
    shipped = {
        "emoji-datasource-LICENSE.txt": npm / "emoji-datasource" / "LICENSE",
        "openmoji-LICENSE.txt": npm / "openmoji" / "LICENSE.txt",
        "openclipart-copyright.txt": cache / "sources/apt/root/usr/share/doc/openclipart-svg/copyright",
        "Apache-2.0.txt": Path(
            "/usr/share/common-licenses/Apache-2.0"
        ),  # Debian ships it; else the URL above
    }
    if far_zs:
        shipped |= {
            f"{p}-copyright.txt": cache / f"sources/apt/root/usr/share/doc/{p}/copyright"
            for p in FONT_APT_PACKAGES
        }
    for name, src in shipped.items():
        if src.is_file():
            shutil.copyfile(src, out / name)
    (out / "fluent-emoji-MIT.txt").write_text(FLUENT_MIT)
    fonts = FONT_ATTRIBUTION.format(
        dejavu=FONT_APT_PACKAGES["fonts-dejavu-core"],
        liberation=FONT_APT_PACKAGES["fonts-liberation2"],
        freefont=FONT_APT_PACKAGES["fonts-freefont-ttf"],
        urw=FONT_APT_PACKAGES["fonts-urw-base35"],
    )
    (out / "ATTRIBUTION.md").write_text(
        ATTRIBUTION.format(
            google=NPM_PACKAGES["emoji-datasource-google"],
            twitter=NPM_PACKAGES["emoji-datasource-twitter"],
            openmoji=NPM_PACKAGES["openmoji"],
            fluent3d=NPM_PACKAGES["@lobehub/fluent-emoji-3d"],
            flat=NPM_PACKAGES["@iconify-json/fluent-emoji-flat"],
            datasource=NPM_PACKAGES["emoji-datasource"],
            openclipart=APT_PACKAGES["openclipart-svg"],
            **{style: NPM_PACKAGES[pkg] for style, (pkg, _) in ICON_STYLES.items()},
        )
        + (fonts if far_zs else "")
    )
    return out


# ---------------------------------------------------------------------------------------------------- main
INT_OPTIONS = (
    "size",
    "seed",
    "n_id",
    "n_zs",
    "n_zs_val",
    "train_variants",
    "val_variants",
    "eval_variants",
    "free_scene_variants",
    "icon_scene_variants",
    "n_far",
    "n_far_val",
)


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, Settings]:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--cache", required=True, type=Path, help="folder for sources, datasets and metadata")
    p.add_argument("--quick", action="store_true", help=f"small sets for smoke tests: {QUICK}")
    p.add_argument("--offline", action="store_true", help="never download; fail if a source is missing")
    p.add_argument(
        "--far-zs",
        action="store_true",
        help="also build the far zero-shot candidate sets (zs_far_*, zs_far_val_*; the font packages are fetched)",
    )
    defaults = Settings()
    for f in INT_OPTIONS:
        p.add_argument(
            "--" + f.replace("_", "-"),
            type=int,
            help=f"default {getattr(defaults, f)} (quick: {QUICK.get(f, getattr(defaults, f))})",
        )
    args = p.parse_args(argv)
    settings = replace(defaults, **(QUICK if args.quick else {}), far_zs=args.far_zs)
    for f in INT_OPTIONS:
        if getattr(args, f) is not None:
            settings = replace(settings, **{f: getattr(args, f)})
    if (
        settings.size < 8
        or min(settings.n_id, settings.n_zs, settings.n_zs_val) < 2
        or settings.train_variants < 1
    ):
        p.error("need --size >= 8, --n-id / --n-zs / --n-zs-val >= 2, --train-variants >= 1")
    if min(settings.free_scene_variants, settings.icon_scene_variants) < 0:
        p.error("need --free-scene-variants >= 0 and --icon-scene-variants >= 0")
    if min(settings.val_variants, settings.eval_variants) < 1:
        p.error("need --val-variants >= 1 and --eval-variants >= 1")
    if settings.far_zs and min(settings.n_far, settings.n_far_val) < 2:
        p.error("need --n-far >= 2 and --n-far-val >= 2 with --far-zs")
    return args, settings


def main(argv: Sequence[str] | None = None) -> int:
    args, settings = parse_args(argv)
    t0 = time.time()
    cache = args.cache.expanduser().resolve()
    cache.mkdir(parents=True, exist_ok=True)
    sources = install_sources(cache, offline=args.offline, far_zs=settings.far_zs)
    t_sources = time.time() - t0
    summary = build(cache, settings)
    summary["sources"] = sources
    summary["sources_seconds"] = round(t_sources, 1)
    summary["total_seconds"] = round(time.time() - t0, 1)
    (cache / "emojishift.json").write_text(json.dumps(summary, indent=2) + "\n")
    mb = 1 / 2**20
    print(f"\nEmojiShift {summary['version']} in {cache}")
    print(
        f"  sources: {', '.join(sources['actions'])}; npm {sources['npm_bytes'] * mb:.0f} MB, "
        f".deb {sources['apt_deb_bytes'] * mb:.0f} MB (unpacked {sources['apt_unpacked_bytes'] * mb:.0f} MB)"
    )
    c = summary["classes"]
    print(
        f"  classes: {c['universe']} object-like in all styles → ID {c['id']}, ZS {c['zs']}, zs_val {c['zs_val']}"
    )
    if "far_zs" in summary:
        print(f"  far zero-shot (emoji sets: [test, val] classes; fonts per role): {summary['far_zs']}")
    print(f"  free emoji classes (captioned): {summary['free_emoji_classes']}")
    print(
        f"  eval classes in icon styles (alignment only): {summary['eval_classes_with_icons']} classes, "
        f"{summary['eval_class_icon_rows']} rows"
    )
    for style, counts in summary["icon_matches"].items():
        print(f"  icons {style}: {counts}")
    oc = summary["openclipart"]
    print(f"  openclipart: {oc}")
    width = max(map(len, summary["rows"]))
    for name, rows in summary["rows"].items():
        print(f"  {name:<{width}}  {rows:>6} rows")
    print(
        f"  seconds: sources {summary['sources_seconds']}, build {summary['build_seconds']}, total {summary['total_seconds']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
