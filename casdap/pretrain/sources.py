"""Offline pretraining sources that look like the embedded digits but contain no digit.

The embedded benchmark (scikit-learn's handwritten digits) is made of 8x8 images whose pixels count
the "on" pixels of 4x4 blocks of a 32x32 binary bitmap (values 0-16), shown here upsampled to
32x32 RGB. Both sources below produce images through that same path, so the frozen backbone is
pretrained on the digits' *look* without ever seeing a digit:

* ``glyphs``: letters, Greek letters and symbols rendered from the fonts that ship with
  matplotlib (DejaVu, STIX, Computer Modern), under random affine jitter and stroke width.
  Digits 0-9 and every other character Unicode gives a numeric value (superscripts, fractions,
  Roman numerals, ...) are excluded.
* ``fractals``: formula-driven images of random iterated function systems (FractalDB-style),
  one class per system, instances by parameter perturbation and affine jitter.

Every image is generated from a seed: a source is a pure function of ``(seed, epoch)``.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from casdap.data.glyphs import (
    ASCII_FONTS,
    UNICODE_FONTS,
    fit_glyph,
    font_dir,
    glyph_characters,
    random_affine,
    raster_glyph,
)
from casdap.errors import CasdapError

__all__ = [
    "BITMAP_SIZE",
    "INPUT_MEAN",
    "INPUT_STD",
    "normalize_input",
    "SOURCES",
    "SyntheticSource",
    "build_source",
    "to_digits_look",
]

# Input normalisation of every CAS-DAP backbone trained here: images in [0, 1], per channel
# (x - mean) / std. A model pretrained on these sources must be fed the stream the same way.
INPUT_MEAN = 0.5
INPUT_STD = 0.25
BITMAP_SIZE = 32  # the binary bitmap that the 8x8 digits were counted from
_BLOCK = 4  # 4x4 blocks -> 8x8 counts in 0..16


def normalize_input(x: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] -> the backbone's input scale, ``(x - INPUT_MEAN) / INPUT_STD``."""
    return (x - INPUT_MEAN) / INPUT_STD


@lru_cache(maxsize=8)
def _glyph_bank(chars: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (character, font) pair that the fonts can draw, fitted to a 32x32 canvas.

    Returns ``bank`` [M, 32, 32] in [0, 1] and ``label`` [M] (index into ``chars``).
    """
    from matplotlib.ft2font import FT2Font

    fonts = [(FT2Font(str(font_dir() / f)), False) for f in UNICODE_FONTS]
    fonts += [(FT2Font(str(font_dir() / f)), True) for f in ASCII_FONTS]
    images, labels = [], []
    for label, ch in enumerate(chars):
        for font, ascii_only in fonts:
            if ascii_only and ch not in string.ascii_letters:
                continue
            img = raster_glyph(font, ch)
            if img is not None:
                images.append(fit_glyph(torch.from_numpy(img), 28, BITMAP_SIZE))
                labels.append(label)
    missing = sorted(set(range(len(chars))) - set(labels))
    if missing:
        raise CasdapError(f"no bundled font draws {[chars[i] for i in missing]}")
    return torch.stack(images), torch.tensor(labels)


def to_digits_look(bitmaps: torch.Tensor, image_size: int = 32) -> torch.Tensor:
    """Binary 32x32 bitmaps [N, 32, 32] -> the digits pipeline: 4x4 on-pixel counts (8x8, 0..16),
    divided by 16, bilinear up to ``image_size``, grey to RGB. Matches ``load_digits_tensors``."""
    counts = F.avg_pool2d(bitmaps[:, None].float(), _BLOCK)  # = count / 16
    x = counts
    if image_size != counts.shape[-1]:
        x = F.interpolate(counts, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return x.clamp_(0, 1).expand(-1, 3, -1, -1).contiguous()


def _stroke_and_binarise(img: torch.Tensor, g: torch.Generator, thicken: tuple[float, float] = (0.25, 0.75)
                         ) -> torch.Tensor:
    """Random stroke width, then a binary bitmap: each image is thickened by a 3x3 max-pool with
    probability ``thicken[0]`` and a second time with ``thicken[1]`` of those (pen widths of
    handwriting are wider than font strokes), and thresholded at a random level."""
    n = img.shape[0]
    x = img[:, None]
    u = torch.rand(n, 1, 1, 1, generator=g)
    once = F.max_pool2d(x, 3, 1, 1)
    twice = F.max_pool2d(once, 3, 1, 1)
    x = torch.where(u < thicken[0] * thicken[1], twice, torch.where(u < thicken[0], once, x))
    thr = 0.3 + 0.3 * torch.rand(n, 1, 1, 1, generator=g)
    return (x > thr).float()[:, 0]


@dataclass
class SyntheticSource:
    """A labelled, seeded image generator with the digits' look.

    ``sample(epoch)`` returns ``images_per_class`` fresh images per class, ``[N, 3, S, S]`` in
    [0, 1] and labels ``[N]``, a pure function of ``(seed, epoch)``.
    """

    name: str
    class_names: list[str]
    images_per_class: int
    seed: int
    image_size: int = 32

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def sample(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def describe(self) -> dict:
        return {
            "source": self.name,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "images_per_class_per_epoch": self.images_per_class,
            "image_size": self.image_size,
            "seed": self.seed,
        }


class GlyphSource(SyntheticSource):
    """Characters rendered from matplotlib's bundled fonts, jittered, counted to 8x8."""

    def __init__(self, sets: tuple[str, ...], images_per_class: int, seed: int, image_size: int = 32) -> None:
        chars = glyph_characters(sets)
        super().__init__("glyphs:" + "+".join(sets), chars, images_per_class, seed, image_size)
        self.sets = sets
        self.bank, self.bank_label = _glyph_bank(tuple(chars))

    def sample(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        labels = torch.arange(self.num_classes).repeat_interleave(self.images_per_class)
        # pick a random font rendering of each image's character
        picks = torch.empty_like(labels)
        for c in range(self.num_classes):
            rows = torch.nonzero(self.bank_label == c)[:, 0]
            sel = labels == c
            picks[sel] = rows[torch.randint(len(rows), (int(sel.sum()),), generator=g)]
        base = self.bank[picks]
        theta = random_affine(len(labels), g, rot_deg=15, scale=(0.8, 1.15), shear=0.3, shift=0.12)
        grid = F.affine_grid(theta, [len(labels), 1, BITMAP_SIZE, BITMAP_SIZE], align_corners=False)
        warped = F.grid_sample(base[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        bitmaps = _stroke_and_binarise(warped[:, 0], g, thicken=(0.6, 0.2))
        return to_digits_look(bitmaps, self.image_size), labels

    def describe(self) -> dict:
        d = super().describe()
        d["fonts"] = list(UNICODE_FONTS) + [f + " (ASCII letters only)" for f in ASCII_FONTS]
        d["renderings"] = int(len(self.bank_label))
        return d


def _ifs_systems(n_classes: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Random IFS with 2-4 contractive affine maps each, kept when they fill the plane moderately
    (the FractalDB "sigma-factor" filter: sum of the maps' singular values in [sigma_lo, sigma_hi])."""
    systems = []
    while len(systems) < n_classes:
        k = int(rng.integers(2, 5))
        maps = rng.uniform(-1, 1, size=(k, 6))
        sv = np.concatenate([np.linalg.svd(m[:4].reshape(2, 2), compute_uv=False) for m in maps])
        sigma = sv.sum()
        if np.all(sv < 1.0) and 0.5 * (5 + k) - 1.0 <= sigma <= 0.5 * (5 + k):
            systems.append(maps)
    return systems


def _chaos_game(maps: np.ndarray, n_maps: np.ndarray, n_points: int, rng: np.random.Generator) -> np.ndarray:
    """Points of many IFS attractors at once. ``maps`` [B, K, 6] (a b c d e f: x' = ax+by+e,
    y' = cx+dy+f), of which the first ``n_maps[b]`` are used; map i is drawn with probability
    proportional to |det| (plus a floor, so thin maps still show)."""
    b, k, _ = maps.shape
    used = np.arange(k)[None] < n_maps[:, None]
    det = (np.abs(maps[:, :, 0] * maps[:, :, 3] - maps[:, :, 1] * maps[:, :, 2]) + 0.02) * used
    cum = np.cumsum(det / det.sum(1, keepdims=True), 1)
    p = np.zeros((b, 2))
    burn_in = 20
    out = np.empty((n_points, b, 2), dtype=np.float32)
    rows = np.arange(b)
    for t in range(n_points + burn_in):
        i = (rng.random((b, 1)) > cum).sum(1).clip(max=n_maps - 1)
        m = maps[rows, i]
        x, y = p[:, 0], p[:, 1]
        p = np.stack([m[:, 0] * x + m[:, 1] * y + m[:, 4], m[:, 2] * x + m[:, 3] * y + m[:, 5]], 1)
        if t >= burn_in:
            out[t - burn_in] = p
    return out.transpose(1, 0, 2)


def _points_to_bitmaps(points: np.ndarray, size: int, box: int) -> torch.Tensor:
    """Scale each point cloud [B, P, 2] to a ``box`` square centred on ``size`` x ``size`` and mark pixels."""
    lo = np.percentile(points, 1, axis=1, keepdims=True)
    hi = np.percentile(points, 99, axis=1, keepdims=True)
    scale = (box - 1) / np.maximum((hi - lo).max(-1, keepdims=True), 1e-6)
    centred = (points - (lo + hi) / 2) * scale + (size - 1) / 2
    ij = np.rint(centred).astype(np.int64)
    ok = (ij >= 0).all(-1) & (ij < size).all(-1)
    b_idx = np.broadcast_to(np.arange(points.shape[0])[:, None], ok.shape)[ok]
    flat = torch.zeros(points.shape[0] * size * size)
    flat[torch.from_numpy(b_idx * size * size + ij[ok][:, 1] * size + ij[ok][:, 0])] = 1.0
    return flat.view(points.shape[0], size, size)


class FractalSource(SyntheticSource):
    """Formula-driven images: one random IFS per class (FractalDB-style), counted to 8x8."""

    def __init__(self, num_classes: int, images_per_class: int, seed: int, image_size: int = 32,
                 points: int = 800) -> None:
        super().__init__("fractals", [f"ifs{i:03d}" for i in range(num_classes)], images_per_class, seed,
                         image_size)
        self.points = points
        systems = _ifs_systems(num_classes, np.random.default_rng([seed, 7919]))
        self.n_maps = np.array([len(s) for s in systems])
        self.systems = np.stack([np.pad(s, ((0, 4 - len(s)), (0, 0))) for s in systems])

    def sample(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, epoch])
        labels = np.repeat(np.arange(self.num_classes), self.images_per_class)
        maps = self.systems[labels].copy()  # [N, 4, 6], padded maps are all-zero
        # instance variation: scale one coefficient of each map by a factor in [0.8, 1.2]
        which = rng.integers(0, 6, size=maps.shape[:2])
        factor = rng.uniform(0.8, 1.2, size=maps.shape[:2])
        np.put_along_axis(maps, which[..., None], np.take_along_axis(maps, which[..., None], 2) * factor[..., None], 2)
        pts = _chaos_game(maps, self.n_maps[labels], self.points, rng)
        bitmaps = _points_to_bitmaps(pts, BITMAP_SIZE, box=28)
        g = torch.Generator().manual_seed(int(rng.integers(2**62)))
        theta = random_affine(len(labels), g, rot_deg=180, scale=(0.9, 1.1), shear=0.2, shift=0.1)
        grid = F.affine_grid(theta, [len(labels), 1, BITMAP_SIZE, BITMAP_SIZE], align_corners=False)
        warped = F.grid_sample(bitmaps[:, None], grid, mode="bilinear", align_corners=False)[:, 0]
        bitmaps = _stroke_and_binarise(warped, g, thicken=(0.6, 0.0))
        return to_digits_look(bitmaps, self.image_size), torch.from_numpy(labels)

    def describe(self) -> dict:
        d = super().describe()
        d["points_per_image"] = self.points
        return d


class MixedSource(SyntheticSource):
    """Union of sources with disjoint label ranges (e.g. glyphs and fractals)."""

    def __init__(self, parts: list[SyntheticSource]) -> None:
        names = [f"{p.name}/{c}" for p in parts for c in p.class_names]
        super().__init__("+".join(p.name for p in parts), names, parts[0].images_per_class, parts[0].seed,
                         parts[0].image_size)
        self.parts = parts

    def sample(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys, offset = [], [], 0
        for p in self.parts:
            x, y = p.sample(epoch)
            xs.append(x)
            ys.append(y + offset)
            offset += p.num_classes
        return torch.cat(xs), torch.cat(ys)

    def describe(self) -> dict:
        d = super().describe()
        d["parts"] = [p.describe() for p in self.parts]
        return d


# name -> builder(images_per_class, seed)
SOURCES = {
    "letters": lambda n, seed: GlyphSource(("latin",), n, seed),
    "glyphs": lambda n, seed: GlyphSource(("latin", "greek", "symbols"), n, seed),
    "glyphs-xl": lambda n, seed: GlyphSource(("latin", "greek", "symbols", "cyrillic", "marks"), n, seed),
    "fractals": lambda n, seed: FractalSource(100, n, seed),
    "glyphs+fractals": lambda n, seed: MixedSource([
        GlyphSource(("latin", "greek", "symbols"), n, seed), FractalSource(100, n, seed)]),
}


def build_source(name: str, images_per_class: int, seed: int) -> SyntheticSource:
    """A pretraining source by name (see ``SOURCES``)."""
    if name not in SOURCES:
        raise CasdapError(f"unknown pretraining source '{name}'; choose from {', '.join(SOURCES)}")
    if images_per_class < 1:
        raise CasdapError(f"images per class must be at least 1 (got {images_per_class})")
    return SOURCES[name](images_per_class, seed)
