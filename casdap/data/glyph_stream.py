"""``embedded_shift``: a rendered class-incremental stream that the glyph-pretrained backbone never saw.

The embedded digits are too easy within a task to show what DAP's instance-level prompts add.
This stream is built, like the backbone's pretraining images, from nothing but the fonts that
ship with matplotlib, but differs from them in two ways:

* **Disjoint classes.** 100 characters in 10 themed tasks of 10 (Armenian capitals, Georgian,
  Hebrew, chess pieces, planet and gender signs, zodiac signs, patterned squares, split circles
  and triangles, emblems, pointing hands). None is in any pretraining glyph set
  (``casdap.data.glyphs.GLYPH_SETS``), none is digit-like, and characters that share a shape
  with a pretraining class or a digit were left out, by eye (Georgian ვ like 3, the trigram ☰
  like ≡, the sun ☀ like ☼, ...) and by a raster check (``shape_similarity``): every character
  kept correlates at most 0.81 with any pretraining class or digit under the 8 rotations/mirrors
  of the square, where clear look-alikes score 0.84-1.00 (Armenian Օ/Ս/Լ like O/U/L 1.00, Փ like
  Φ 0.98, Hebrew ן/ו like l/I 1.00/0.95, ☓ like X 0.94, ◎ like @ 0.84).
* **A different look.** The pretraining images are grey, binarised and counted down to 8x8
  blocks (the digits' look). Stream images are anti-aliased 32x32 colour renders: random
  foreground and background colours, a textured background (smooth colour noise and stripes),
  thin clutter strokes, elastic and affine distortion, random pen width, blur and pixel noise.

The glyphs come from the same font files as the pretraining glyphs (the only ones that ship:
DejaVu Sans/Mono/Serif and STIX, each in every face that draws the character, 4-13 per class),
and keep its polarity (a lighter glyph on a darker ground). The images are a pure function of
``(seed, images per class, image size)``; training and test images come from separate random
streams of the seed, so no test image is a training image.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

from casdap.data.glyphs import (
    GLYPH_SETS,
    UNICODE_FONTS,
    fit_glyph,
    font_dir,
    glyph_characters,
    is_digit_like,
    random_affine,
    raster_glyph,
)
from casdap.errors import CasdapError

__all__ = [
    "CANVAS",
    "RENDER",
    "SHIFT_TASKS",
    "TRAIN_PER_CLASS",
    "TEST_PER_CLASS",
    "shift_characters",
    "shift_class_names",
    "render_shift_stream",
    "describe_shift_stream",
    "draw_glyphs",
    "gaussian_blur",
    "glyph_bank",
    "paint_colour_on_texture",
    "shape_similarity",
    "smooth_field",
]

# (theme, 10 characters) per task, in stream order.
SHIFT_TASKS: tuple[tuple[str, str], ...] = (
    ("armenian", "ՀՎՊԹԿԺՖԽՔՁ"),
    ("georgian", "ლრფდჭჯღტჟე"),
    ("hebrew", "לשאצקתעבץג"),
    ("chess", "♔♕♖♗♘♚♛♜♝♞"),
    ("planets", "☿♀♁♂♅⚢⚣⚥⚦⚧"),
    ("zodiac", "♈♉♋♌♎♑♓♍♏♐"),
    ("squares", "▤▥▦▧▨▩◧◨◩◪"),
    ("shapes", "◉◐◑◒◓◔◕◭◮◰"),
    ("emblems", "☂☎☠☯⚓⚖⚗☕⚐☣"),
    ("hands", "☚☛☜☝☞☟☥⚘⚜☍"),
)
TRAIN_PER_CLASS = 80  # default training renders per class
TEST_PER_CLASS = 20  # default held-out renders per class
CANVAS = 64  # glyphs are warped at this resolution, then area-downsampled to the output size
MIN_FONTS = 2  # every character must render in at least this many bundled fonts

# Rendering difficulty (chosen by measurement, docs/embedded_shift.md).
RENDER = {
    "box": (46, 56),  # glyph's longer side on the 64 px canvas (the pretraining glyphs fill 56 of 64)
    "rot_deg": 10.0,
    "scale": (0.9, 1.1),
    "shear": 0.15,
    "shift": 0.08,
    "elastic": 0.03,  # displacement amplitude of the smooth warp, in units of the canvas half-width
    "min_contrast": 0.6,  # |luminance(fg) - luminance(bg)| at least this
    "dark_on_light": 0.0,  # share of images whose foreground is darker than the background
    "texture": 0.08,  # amplitude of the background's colour noise and stripes
    "clutter": (0, 1),  # thin random strokes per image (inclusive range)
    "blur": (0.0, 0.6),  # Gaussian blur sigma in output pixels
    "noise": (0.0, 0.04),  # Gaussian pixel noise sigma
}

_FONTS = UNICODE_FONTS + ("DejaVuSansDisplay.ttf", "DejaVuSerifDisplay.ttf")
DIGITS = "0123456789"
_SPLIT_STREAMS = {"train": 1, "test": 2}


def shift_characters() -> list[str]:
    """The stream's 100 classes, in label order."""
    return [c for _, chars in SHIFT_TASKS for c in chars]


def shift_class_names() -> list[str]:
    """Readable class names: ``<theme>:<character> (U+XXXX)``."""
    return [f"{theme}:{c} (U+{ord(c):04X})" for theme, chars in SHIFT_TASKS for c in chars]


def _check_character_set() -> None:
    chars = shift_characters()
    pretraining = set("".join(GLYPH_SETS.values()))
    bad = [c for c in chars if c in pretraining or is_digit_like(c)]
    if bad or len(set(chars)) != len(chars):
        raise CasdapError(f"embedded_shift characters overlap the pretraining glyphs or repeat: {bad}")


@lru_cache(maxsize=4)
def glyph_bank(chars: tuple[str, ...], stream: str) -> tuple[torch.Tensor, torch.Tensor, tuple[tuple[str, ...], ...]]:
    """Every (character, font) pair the bundled fonts draw, cropped and fitted to the 64 px canvas
    (longer side 56 px). Returns ``bank`` [M, 64, 64], ``label`` [M] (index into ``chars``) and the
    fonts of each class; a character drawn by fewer than ``MIN_FONTS`` fonts is an error naming ``stream``."""
    from matplotlib.ft2font import FT2Font

    fonts = [(f, FT2Font(str(font_dir() / f))) for f in _FONTS]
    images, labels, used = [], [], []
    for label, ch in enumerate(chars):
        names = []
        for name, font in fonts:
            img = raster_glyph(font, ch)
            if img is None:
                continue
            images.append(fit_glyph(torch.from_numpy(img), 56, CANVAS))
            labels.append(label)
            names.append(name)
        used.append(tuple(names))
    thin = [f"{chars[i]} (U+{ord(chars[i]):04X}): {len(u)}" for i, u in enumerate(used) if len(u) < MIN_FONTS]
    if thin:
        raise CasdapError(f"{stream}: these characters render in fewer than {MIN_FONTS} bundled fonts: {thin}")
    return torch.stack(images), torch.tensor(labels), tuple(used)


def _bank() -> tuple[torch.Tensor, torch.Tensor, tuple[tuple[str, ...], ...]]:
    """The stream's glyph bank (:func:`glyph_bank` of its 100 characters)."""
    _check_character_set()
    return glyph_bank(tuple(shift_characters()), "embedded_shift")


def _uniform(n: int, g: torch.Generator, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _luminance(rgb: torch.Tensor) -> torch.Tensor:
    return rgb @ torch.tensor([0.299, 0.587, 0.114])


def _colours(n: int, g: torch.Generator, min_contrast: float, dark_on_light: float
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random foreground/background colours [n, 3] whose luminances differ by at least ``min_contrast``;
    the foreground is the darker one on a ``dark_on_light`` share of the images."""
    fg, bg = torch.rand(n, 3, generator=g), torch.rand(n, 3, generator=g)
    for _ in range(20):
        low = (_luminance(fg) - _luminance(bg)).abs() < min_contrast
        if not low.any():
            break
        k = int(low.sum())
        fg[low], bg[low] = torch.rand(k, 3, generator=g), torch.rand(k, 3, generator=g)
    # any pair still too close: push the foreground away from the background
    low = (_luminance(fg) - _luminance(bg)).abs() < min_contrast
    fg[low] = torch.where(_luminance(bg[low])[:, None] > 0.5, fg[low] * 0.3, 0.7 + 0.3 * fg[low])
    dark = torch.rand(n, generator=g) < dark_on_light
    swap = dark != (_luminance(fg) < _luminance(bg))
    fg[swap], bg[swap] = bg[swap].clone(), fg[swap].clone()
    return fg, bg


def smooth_field(n: int, channels: int, size: int, cells: int, g: torch.Generator) -> torch.Tensor:
    """Smooth random field [n, channels, size, size] in about [-1, 1]: ``cells`` x ``cells`` noise, bicubic up."""
    coarse = torch.rand(n, channels, cells, cells, generator=g) * 2 - 1
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp_(-1, 1)


def _background(n: int, bg: torch.Tensor, size: int, g: torch.Generator, amount: float) -> torch.Tensor:
    """Background colour with smooth colour noise and, on half the images, stripes."""
    img = bg[:, :, None, None] + amount * smooth_field(n, 3, size, 4, g)
    angle = _uniform(n, g, 0, math.pi)
    freq = _uniform(n, g, 0.15, 0.6)  # radians per pixel
    phase = _uniform(n, g, 0, 2 * math.pi)
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    proj = torch.cos(angle)[:, None, None] * xs + torch.sin(angle)[:, None, None] * ys
    stripes = torch.sin(freq[:, None, None] * proj + phase[:, None, None])
    on = (torch.rand(n, generator=g) < 0.5).float() * _uniform(n, g, 0.3, 1.0) * amount
    tint = torch.rand(n, 3, generator=g) * 2 - 1
    img = img + on[:, None, None, None] * tint[:, :, None, None] * stripes[:, None]
    return img


def _clutter(n: int, size: int, g: torch.Generator, counts: tuple[int, int]) -> torch.Tensor:
    """Alpha masks [n, 1, size, size] of 0-``counts[1]`` thin straight strokes across the image."""
    lo, hi = counts
    k = torch.randint(lo, hi + 1, (n,), generator=g)
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    mask = torch.zeros(n, size, size)
    for j in range(hi):
        p0 = torch.rand(n, 2, generator=g) * size
        p1 = torch.rand(n, 2, generator=g) * size
        d = p1 - p0
        length2 = (d * d).sum(1).clamp(min=1.0)
        t = (((xs[None] - p0[:, 0, None, None]) * d[:, 0, None, None]
              + (ys[None] - p0[:, 1, None, None]) * d[:, 1, None, None]) / length2[:, None, None]).clamp(0, 1)
        px = p0[:, 0, None, None] + t * d[:, 0, None, None]
        py = p0[:, 1, None, None] + t * d[:, 1, None, None]
        dist = ((xs[None] - px) ** 2 + (ys[None] - py) ** 2).sqrt()
        width = _uniform(n, g, 0.4, 1.0)[:, None, None]
        stroke = (1.0 - (dist - width).clamp(min=0)).clamp(0, 1) * _uniform(n, g, 0.4, 0.9)[:, None, None]
        mask = torch.maximum(mask, stroke * (j < k).float()[:, None, None])
    return mask[:, None]


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image Gaussian blur (5x5 kernel, ``sigma`` [n] in pixels; 0 leaves the image as it is)."""
    r = torch.arange(-2, 3, dtype=torch.float32)
    s = sigma.clamp(min=1e-3)[:, None]
    k1 = torch.exp(-(r[None] ** 2) / (2 * s * s))
    k1 = k1 / k1.sum(1, keepdim=True)  # [n, 5]
    n, c, h, w = x.shape
    y = F.pad(x, (2, 2, 2, 2), mode="replicate")
    y = y.reshape(1, n * c, h + 4, w + 4)
    kx = k1.repeat_interleave(c, 0)[:, None, None, :]
    ky = k1.repeat_interleave(c, 0)[:, None, :, None]
    y = F.conv2d(y, kx, groups=n * c)
    y = F.conv2d(y, ky, groups=n * c)
    return y.reshape(n, c, h, w)


def draw_glyphs(labels: torch.Tensor, g: torch.Generator, bank: torch.Tensor, bank_label: torch.Tensor,
                render: dict = RENDER) -> torch.Tensor:
    """One glyph per label on the 64 px canvas, [n, 1, 64, 64] in [0, 1]: a random font's rendering
    of the class (``bank``, ``bank_label`` from :func:`glyph_bank`), a random box size, affine jitter,
    a smooth elastic displacement and a thinner, unchanged or bolder pen (``render``'s geometry)."""
    r = render
    n = len(labels)
    picks = torch.empty_like(labels)
    for c in torch.unique(labels).tolist():
        rows = torch.nonzero(bank_label == c)[:, 0]
        sel = labels == c
        picks[sel] = rows[torch.randint(len(rows), (int(sel.sum()),), generator=g)]
    glyph = bank[picks][:, None]  # [n, 1, 64, 64], longer side 56 px
    box = _uniform(n, g, *r["box"]) / 56.0
    theta = random_affine(n, g, rot_deg=r["rot_deg"], scale=r["scale"], shear=r["shear"], shift=r["shift"])
    theta = theta / box[:, None, None]  # the glyph's longer side becomes box * 56 px
    grid = F.affine_grid(theta, [n, 1, CANVAS, CANVAS], align_corners=False)
    warp = smooth_field(n, 2, CANVAS, 3, g).permute(0, 2, 3, 1) * r["elastic"]
    glyph = F.grid_sample(glyph, grid + warp, mode="bilinear", padding_mode="zeros", align_corners=False)
    pen = torch.rand(n, generator=g)
    thin = -F.max_pool2d(-glyph, 3, 1, 1)
    bold = F.max_pool2d(glyph, 3, 1, 1)
    return torch.where((pen < 0.25)[:, None, None, None], thin,
                       torch.where((pen > 0.7)[:, None, None, None], bold, glyph))


def paint_colour_on_texture(alpha: torch.Tensor, g: torch.Generator, render: dict = RENDER) -> torch.Tensor:
    """The stream's look for glyph masks ``alpha`` [n, 1, S, S]: a foreground colour with a smooth
    shading over a textured background of another colour, clutter strokes, blur and pixel noise.
    Returns [n, 3, S, S] in [0, 1]."""
    r = render
    n, size = alpha.shape[0], alpha.shape[-1]
    fg, bg = _colours(n, g, r["min_contrast"], r["dark_on_light"])
    img = _background(n, bg, size, g, r["texture"])
    fg_img = fg[:, :, None, None] + 0.15 * smooth_field(n, 3, size, 2, g)
    clutter = _clutter(n, size, g, r["clutter"])
    clutter_colour = torch.where(torch.rand(n, 1, generator=g) < 0.5, fg, torch.rand(n, 3, generator=g))
    img = img * (1 - clutter) + clutter_colour[:, :, None, None] * clutter
    img = img * (1 - alpha) + fg_img * alpha
    img = gaussian_blur(img, _uniform(n, g, *r["blur"]) * size / 32)
    img = img + torch.randn(img.shape, generator=g) * _uniform(n, g, *r["noise"])[:, None, None, None]
    return img.clamp_(0, 1)


def _render(labels: torch.Tensor, g: torch.Generator, size: int) -> torch.Tensor:
    """One image per label: [n, 3, size, size] in [0, 1]."""
    bank, bank_label, _ = _bank()
    glyph = draw_glyphs(labels, g, bank, bank_label)
    alpha = F.interpolate(glyph, size=(size, size), mode="area").clamp_(0, 1)
    return paint_colour_on_texture(alpha, g)


@lru_cache(maxsize=4)
def render_shift_stream(seed: int = 0, train_per_class: int = TRAIN_PER_CLASS, test_per_class: int = TEST_PER_CLASS,
                        image_size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The stream's images: ``(x_train, y_train, x_test, y_test)``, images ``[N, 3, S, S]`` in [0, 1],
    labels 0-99 in class order, each class's images together.

    A pure function of its arguments (cached per process: treat the tensors as read-only). The
    training and test renders come from separate random streams of ``seed``.
    """
    for name, value in (("training images per class", train_per_class), ("test images per class", test_per_class)):
        if not isinstance(value, int) or value < 1:
            raise CasdapError(f"embedded_shift: {name} must be a positive integer (got {value!r})")
    if not isinstance(image_size, int) or not 16 <= image_size <= CANVAS:
        raise CasdapError(f"embedded_shift renders images of 16 to {CANVAS} pixels, not DATA.CROPSIZE {image_size!r} "
                          "(its glyphs are drawn on a 64 px canvas; the embedded backbone was pretrained at 32)")
    n_classes = len(shift_characters())
    out = []
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + _SPLIT_STREAMS[split])
        labels = torch.arange(n_classes).repeat_interleave(per_class)
        chunks = [_render(labels[i : i + 2000], g, image_size) for i in range(0, len(labels), 2000)]
        out += [torch.cat(chunks), labels]
    return tuple(out)


def describe_shift_stream(train_per_class: int = TRAIN_PER_CLASS, test_per_class: int = TEST_PER_CLASS) -> dict:
    """What the stream is made of (for sidecars and docs)."""
    _, _, fonts = _bank()
    return {
        "name": "embedded_shift",
        "tasks": [{"theme": t, "characters": chars} for t, chars in SHIFT_TASKS],
        "num_classes": len(shift_characters()),
        "train_per_class": train_per_class,
        "test_per_class": test_per_class,
        "fonts_per_class": {c: list(f) for c, f in zip(shift_characters(), fonts)},
        "render": {k: list(v) if isinstance(v, tuple) else v for k, v in RENDER.items()},
    }


def shape_similarity(chars: list[str] | None = None, reference: list[str] | None = None
                     ) -> list[tuple[float, str, str]]:
    """For each of ``chars`` (default: the stream's), its most similar ``reference`` character
    (default: every pretraining glyph of ``GLYPH_SETS`` and the digits 0-9) as
    ``(correlation, char, reference char)``, most similar first.

    Correlation of mean-centred DejaVu Sans rasters (fitted to a 28 px box on 32 px, 3x3 box
    blur), maximised over the 8 rotations/mirrors of the square: 1.0 is the same shape.
    """
    from matplotlib.ft2font import FT2Font


    font = FT2Font(str(font_dir() / "DejaVuSans.ttf"))

    def rasters(cs: list[str]) -> tuple[torch.Tensor, list[str]]:
        out, kept = [], []
        for ch in cs:
            r = raster_glyph(font, ch)
            if r is not None:
                out.append(F.avg_pool2d(fit_glyph(torch.from_numpy(r), 28, 32)[None, None], 3, 1, 1)[0, 0])
                kept.append(ch)
        return torch.stack(out), kept

    def unit(x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return F.normalize(x - x.mean(1, keepdim=True), dim=1)

    ref, ref_chars = rasters(reference if reference is not None
                             else glyph_characters(tuple(GLYPH_SETS)) + list(DIGITS))
    img, img_chars = rasters(chars if chars is not None else shift_characters())
    ref_u = unit(ref)
    best = torch.full((len(img),), -2.0)
    arg = torch.zeros(len(img), dtype=torch.long)
    for k in range(4):
        for flip in (False, True):
            t = torch.rot90(img, k, (1, 2))
            v, i = (unit(torch.flip(t, (2,)) if flip else t) @ ref_u.T).max(1)
            better = v > best
            best[better], arg[better] = v[better], i[better]
    order = best.argsort(descending=True).tolist()
    return [(round(best[i].item(), 3), img_chars[i], ref_chars[arg[i]]) for i in order]
