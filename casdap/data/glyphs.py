"""Glyphs rendered from the fonts that ship with matplotlib: the character sets of the pretraining
source (:mod:`casdap.pretrain.sources`) and of the ``embedded_shift`` stream
(:mod:`casdap.data.glyph_stream`), the check that keeps digits out, rasterising, fitting and the
random affine warps both use. Both build on this module and neither imports the other.
"""

from __future__ import annotations

import string
import unicodedata
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from casdap.errors import CasdapError

__all__ = [
    "ASCII_FONTS",
    "GLYPH_SETS",
    "UNICODE_FONTS",
    "fit_glyph",
    "font_dir",
    "glyph_characters",
    "is_digit_like",
    "random_affine",
    "raster_glyph",
]

_GREEK_LOWER = "αβγδεζηθικλμνξπρστυφχψω"
# Greek capitals that do not share a shape with a Latin capital.
_GREEK_UPPER = "ΓΔΘΛΞΠΣΦΨΩ"
_SYMBOLS = "@#&%?!$§¶*+=<>/\\{}[]()~^¿¡£€¥ß∂∑∫√∞≈≠±×÷∇∏"
# Cyrillic capitals that share a shape with no Latin or Greek letter (and not З, which is a 3).
_CYRILLIC_UPPER = "БДЖИЙЛЦШЩЪЫЬЭЮЯ"
_MARKS = "∀∃∈∋⊂⊃∪∩∧∨¬⊕⊗⊥∠∴≡≤≥←→↑↓↔⇒⇔♠♣♥♦★☺♪♫☼⌂"
GLYPH_SETS: dict[str, str] = {
    "latin": string.ascii_uppercase + string.ascii_lowercase,
    "greek": _GREEK_LOWER + _GREEK_UPPER,
    "symbols": _SYMBOLS,
    "cyrillic": _CYRILLIC_UPPER,
    "marks": _MARKS,
}
# Fonts bundled with matplotlib. The Computer Modern files use TeX encodings, so only their
# ASCII letters are trusted.
UNICODE_FONTS = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf", "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
)
ASCII_FONTS = ("cmr10.ttf", "cmss10.ttf", "cmtt10.ttf", "cmti10.ttf", "cmb10.ttf")


def is_digit_like(ch: str) -> bool:
    """True for 0-9 and for any character Unicode treats as a number (², ½, Ⅻ, ٣, ...)."""
    return ch.isdigit() or ch.isnumeric() or unicodedata.numeric(ch, None) is not None


def glyph_characters(sets: tuple[str, ...] = ("latin",)) -> list[str]:
    """The class list of the glyph source: the characters of ``sets`` in order, no duplicates,
    nothing digit-like."""
    unknown = [s for s in sets if s not in GLYPH_SETS]
    if unknown:
        raise CasdapError(f"unknown glyph set(s) {unknown}; choose from {sorted(GLYPH_SETS)}")
    chars: list[str] = []
    for s in sets:
        chars += [c for c in GLYPH_SETS[s] if c not in chars and not is_digit_like(c)]
    return chars


def font_dir() -> Path:
    """The folder of the TrueType fonts bundled with matplotlib."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def _no_hinting_flag():
    from matplotlib import ft2font

    if hasattr(ft2font, "LoadFlags"):  # matplotlib >= 3.10
        return ft2font.LoadFlags.NO_HINTING
    return ft2font.LOAD_NO_HINTING


def raster_glyph(font, ch: str) -> np.ndarray | None:
    """``ch`` drawn by ``font`` (a matplotlib ``FT2Font``) at 64 px, cropped to its ink, in [0, 1];
    None when the font has no such glyph or draws it (almost) empty."""
    if font.get_char_index(ord(ch)) == 0:
        return None
    font.set_size(64, 72)
    font.set_text(ch, 0.0, flags=_no_hinting_flag())
    font.draw_glyphs_to_bitmap(antialiased=True)
    img = np.asarray(font.get_image(), dtype=np.float32) / 255.0
    if img.size == 0 or img.max() < 0.5:
        return None
    ys, xs = np.nonzero(img > 0.25)
    return img[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


def fit_glyph(img: torch.Tensor, box: int, size: int) -> torch.Tensor:
    """Scale ``img`` [h, w] so its longer side is ``box`` pixels and centre it on ``size`` x ``size``."""
    h, w = img.shape
    s = box / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    small = F.interpolate(img[None, None], size=(nh, nw), mode="area")[0, 0]
    out = torch.zeros(size, size)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = small
    return out


def random_affine(n: int, g: torch.Generator, rot_deg: float, scale: tuple[float, float],
                  shear: float, shift: float) -> torch.Tensor:
    """``n`` random 2x3 sampling matrices for ``F.affine_grid`` (output -> input coordinates)."""
    def u(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=g)

    a = torch.deg2rad(u(-rot_deg, rot_deg))
    sx, sy = u(*scale), u(*scale)
    sh = u(-shear, shear)
    cos, sin = torch.cos(a), torch.sin(a)
    # forward map: rotate @ shear @ scale; affine_grid needs its inverse
    fwd = torch.zeros(n, 2, 2)
    fwd[:, 0, 0], fwd[:, 0, 1] = cos * sx, (cos * sh - sin) * sy
    fwd[:, 1, 0], fwd[:, 1, 1] = sin * sx, (sin * sh + cos) * sy
    inv = torch.linalg.inv(fwd)
    t = torch.stack([u(-shift, shift), u(-shift, shift)], 1)
    theta = torch.cat([inv, -(inv @ t[:, :, None])], 2)
    return theta
