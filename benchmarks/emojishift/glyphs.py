"""Digits and capital letters drawn in fonts from Debian font packages: EmojiShift's far zero-shot glyph sets.

Reading a digit or a letter is another task than naming an object emoji, which the ID classes fine-tune on: the
kind of skill CLIP brings from pre-training (its MNIST and rendered-text zero-shot scores) that fine-tuning on
another task can forget. The rule is the emoji's rule with fonts in the place of styles: the teacher's
``alignment`` data draws every glyph in the *alignment* fonts only; the far zero-shot test sets use other fonts
(the *test* fonts), their validation sets others again (the *val* fonts), and no glyph is in ``reference`` or
``ref_val``, which the fine-tunes see. The role of a font is its package's (:data:`FONT_PACKAGES`), so the three
roles share no font file.

Pure Pillow: :func:`find_fonts` lists the faces of the unpacked packages, :func:`glyph_picture` draws one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROLES = ("alignment", "val", "test")
# Debian package → (version, folder of its faces under the unpacked root, role of every face in it)
FONT_PACKAGES = {
    "fonts-dejavu-core": ("2.37-6", "usr/share/fonts/truetype/dejavu", "alignment"),
    "fonts-liberation2": ("2.1.5-1", "usr/share/fonts/truetype/liberation2", "alignment"),
    "fonts-freefont-ttf": ("20120503-10", "usr/share/fonts/truetype/freefont", "val"),
    "fonts-urw-base35": ("20200910-7", "usr/share/fonts/opentype/urw-base35", "test"),
}
# Families whose letters are other signs (Symbol, Dingbats): not a way of writing a digit or a letter
SYMBOL_FAMILIES = frozenset({"D050000L", "Standard Symbols PS"})
GLYPH_SETS = {"digits": "0123456789", "letters": "ABCDEFGHIJKLMNOPQRSTUVWXYZ"}
# How a caption names a glyph ("the digit 7, DejaVu Sans Bold"), and the prompts of the glyph sets
NOUN = {"digits": "the digit", "letters": "the capital letter"}
TEMPLATES = {
    "digits": (
        "the digit {}.",
        "the number {}.",
        "a picture of the digit {}.",
        "a drawing of the number {}.",
    ),
    "letters": (
        "the letter {}.",
        "the capital letter {}.",
        "a picture of the letter {}.",
        "a drawing of the letter {}.",
    ),
}


@dataclass(frozen=True)
class Font:
    key: str  # the face's file stem: its identity in row keys
    name: str  # family and style as the face names itself ("DejaVu Sans Bold"): the captions' wording
    path: str
    role: str  # alignment | val | test


def font_dirs(apt_root: Path) -> dict[str, Path]:
    return {package: apt_root / folder for package, (_, folder, _) in FONT_PACKAGES.items()}


def find_fonts(apt_root: Path) -> list[Font]:
    """Every face of the unpacked font packages (``.ttf`` / ``.otf``), symbol families left out, in (role, key)
    order. A package whose folder holds no face is an error naming it: the glyph sets would silently shrink."""
    fonts = []
    for package, folder in font_dirs(apt_root).items():
        role = FONT_PACKAGES[package][2]
        faces = (
            sorted(p for p in folder.glob("*") if p.suffix.lower() in (".ttf", ".otf"))
            if folder.is_dir()
            else []
        )
        if not faces:
            raise SystemExit(f"{folder}: no font faces of {package} (expected .ttf / .otf files)")
        for path in faces:
            family, style = ImageFont.truetype(str(path), 16).getname()
            if family in SYMBOL_FAMILIES:
                continue
            name = family if style in ("Regular", "Book", "Roman", None) else f"{family} {style}"
            fonts.append(Font(path.stem, name, str(path), role))
    return sorted(fonts, key=lambda f: (ROLES.index(f.role), f.key))


def glyph_picture(font: Font, char: str, side: int, ink: tuple[int, int, int]) -> Image.Image:
    """RGBA ``side`` × ``side``: ``char`` in ``font`` and colour ``ink`` on a transparent ground, its ink box
    centred and scaled to 80 % of the side (so every face fills the picture alike, whatever its metrics)."""
    big = ImageFont.truetype(font.path, 4 * side)
    left, top, right, bottom = big.getbbox(char)
    canvas = Image.new("L", (right - left + 8, bottom - top + 8), 0)
    ImageDraw.Draw(canvas).text((4 - left, 4 - top), char, font=big, fill=255)
    alpha = canvas.crop(canvas.getbbox() or (0, 0, canvas.width, canvas.height))
    scale = 0.8 * side / max(alpha.size)
    alpha = alpha.resize(
        (max(1, round(alpha.width * scale)), max(1, round(alpha.height * scale))), Image.Resampling.LANCZOS
    )
    out = Image.new("RGBA", (side, side), (*ink, 0))
    glyph = Image.new("RGBA", alpha.size, (*ink, 255))
    glyph.putalpha(alpha)
    out.alpha_composite(glyph, ((side - alpha.width) // 2, (side - alpha.height) // 2))
    return out
