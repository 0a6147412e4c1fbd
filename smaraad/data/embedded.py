"""The embedded dataset: synthetic coloured shapes on textured backgrounds.

SYNTHETIC DATA. Nothing here is a photograph; every image is drawn by `generate` from a
fixed seed, so the project trains and tests on a laptop with no download.

Each image holds one object whose SHAPE is its class (disk, square, triangle, plus, ring,
horizontal bar, vertical bar, diamond, L, X). Position, size, a small rotation, the object's
colour and the whole background are drawn independently of the class, so a model can only
score by looking at the object -- which is what makes class activation maps (Eq. 6-7 of the
paper) meaningful here, and why each image's object mask is kept to score them.

Why each ingredient:
- textured background (low-frequency colour noise plus stripes or a checker of random colour
  and period) and per-pixel noise: without clutter a small CNN reaches 100% in one epoch;
- object brightness differs from the background's by >= 0.35 (in [0, 1] units), so an
  L_inf attack of eps = 8/255 ~= 0.031 cannot erase the object and robust accuracy is not ~0;
- edges anti-aliased by supersampling, so small shapes keep their outline at 16x16 pixels.

More than 10 classes reuse the shapes squashed vertically (aspect 1.6): class k is shape
k % 10 with squash (k // 10); at most 20 classes.
"""
import math

import torch
import torch.nn.functional as F

SHAPES = ('disk', 'square', 'triangle', 'plus', 'ring',
          'hbar', 'vbar', 'diamond', 'ell', 'x')
MAX_CLASSES = 2 * len(SHAPES)
SQUASH = 1.6            # vertical squash of the second variant of each shape (ratio)

_SUPERSAMPLE = 4        # sub-pixels per pixel side for anti-aliasing
_CHUNK = 512            # images rendered at once; bounds memory to ~_CHUNK*(H*S)^2*4 B per temp
_CONTRAST = (0.35, 0.6) # object-minus-background brightness, [0, 1] units
_LEVEL_RANGE = (0.05, 0.95)  # allowed object brightness, [0, 1] units
_DISTRACTORS = 2        # small clutter blobs per image
_NOISE_STD = 0.03       # per-pixel Gaussian noise, [0, 1] units (~8/255)


# ----------------------------------------------------------------------------- shapes
def _inside(shape: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Whether object-frame points (u, v) lie inside `shape`; the frame's unit is the
    object's half-size, so every shape fits in [-1, 1]^2 and the caller sets scale."""
    au, av = u.abs(), v.abs()
    big = torch.maximum(au, av)
    if shape == 0:   # disk
        return u * u + v * v <= 1.0
    if shape == 1:   # square
        return big <= 0.8
    if shape == 2:   # triangle: apex at v = -1, base at v = 0.75 of half-width 0.95
        return (v <= 0.75) & (au <= 0.95 * (v + 1.0) / 1.75)
    if shape == 3:   # plus
        return (torch.minimum(au, av) <= 0.3) & (big <= 1.0)
    if shape == 4:   # ring: a disk with a hole of half its radius
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.25)
    if shape == 5:   # horizontal bar
        return (au <= 1.0) & (av <= 0.35)
    if shape == 6:   # vertical bar
        return (au <= 0.35) & (av <= 1.0)
    if shape == 7:   # diamond
        return au + av <= 1.0
    if shape == 8:   # L: a vertical stroke on the left joined to a bottom stroke
        stem = (u >= -0.9) & (u <= -0.3) & (av <= 0.9)
        foot = (v >= 0.3) & (v <= 0.9) & (au <= 0.9)
        return stem | foot
    if shape == 9:   # X: both diagonals
        return ((au - av).abs() <= 0.35) & (big <= 0.85)
    raise ValueError(f'unknown shape index {shape}')


def _coverage(labels, cx, cy, radius, angle, sx, sy, size: int) -> torch.Tensor:
    """Fraction of each pixel covered by its object, (n, size, size) float in [0, 1].

    Every sub-pixel centre is mapped into its object's frame (translate, rotate, scale);
    sub-pixel hits are averaged back to pixels, which anti-aliases the edges."""
    s = _SUPERSAMPLE
    grid = (torch.arange(size * s, dtype=torch.float32) + 0.5) / s  # pixel units
    dx = grid.view(1, 1, -1) - cx.view(-1, 1, 1)
    dy = grid.view(1, -1, 1) - cy.view(-1, 1, 1)
    cos, sin = angle.cos().view(-1, 1, 1), angle.sin().view(-1, 1, 1)
    u = (cos * dx + sin * dy) / (radius * sx).view(-1, 1, 1)
    v = (cos * dy - sin * dx) / (radius * sy).view(-1, 1, 1)
    hits = torch.zeros(u.shape, dtype=torch.float32)
    shape = labels % len(SHAPES)
    for k in shape.unique().tolist():
        sel = shape == k
        hits[sel] = _inside(k, u[sel], v[sel]).float()
    return F.avg_pool2d(hits.unsqueeze(1), s).squeeze(1)


# ----------------------------------------------------------------------------- colours
def _chroma(n: int, g: torch.Generator, scale: float = 0.12) -> torch.Tensor:
    """Zero-mean colour offsets (n, 3): they tint without changing brightness."""
    c = torch.randn(n, 3, generator=g) * scale
    return c - c.mean(dim=1, keepdim=True)


def _backgrounds(n: int, size: int, level: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Textured backgrounds (n, 3, size, size) around brightness `level` (n,)."""
    base = (level.view(-1, 1) + _chroma(n, g)).view(n, 3, 1, 1)
    blobs = torch.randn(n, 3, 4, 4, generator=g) * 0.08  # low-frequency colour noise
    low = F.interpolate(blobs, size=(size, size), mode='bilinear', align_corners=False)

    # stripes (horizontal, vertical, diagonal) or a checker of random period and colour
    kind = torch.randint(0, 4, (n,), generator=g).view(-1, 1, 1)
    period = 3.0 + 3.0 * torch.rand(n, generator=g).view(-1, 1, 1)  # pixels
    phase = 2 * math.pi * torch.rand(n, generator=g).view(-1, 1, 1)
    px = torch.arange(size, dtype=torch.float32).view(1, 1, -1)
    py = torch.arange(size, dtype=torch.float32).view(1, -1, 1)
    wave = lambda t: torch.sin(2 * math.pi * t / period + phase)  # noqa: E731
    pattern = torch.where(kind == 0, wave(py + 0 * px),
              torch.where(kind == 1, wave(px + 0 * py),
              torch.where(kind == 2, wave((px + py) / math.sqrt(2)),
                          wave(px) * wave(py))))
    tint = torch.rand(n, 3, generator=g) * 2 - 1
    tint = tint / tint.abs().amax(dim=1, keepdim=True)
    amp = 0.12 * torch.rand(n, 1, generator=g)  # [0, 1] units
    stripes = (amp * tint).view(n, 3, 1, 1) * pattern.unsqueeze(1)
    return base + low + stripes


def _object_level(bg_level: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Object brightness at least _CONTRAST[0] away from the background's, on a side
    (brighter or darker) that is drawn at random among those with room for it."""
    n = bg_level.numel()
    lo, hi = _LEVEL_RANGE
    room_up, room_down = hi - bg_level, bg_level - lo
    want_up = torch.rand(n, generator=g) < 0.5
    up = (room_down < _CONTRAST[0]) | ((room_up >= _CONTRAST[0]) & want_up)
    delta = _CONTRAST[0] + (_CONTRAST[1] - _CONTRAST[0]) * torch.rand(n, generator=g)
    return torch.where(up, bg_level + torch.minimum(delta, room_up),
                       bg_level - torch.minimum(delta, room_down))


# ----------------------------------------------------------------------------- generate
def generate(n: int, num_classes: int = 10, size: int = 16, seed: int = 0
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw `n` images deterministically from `seed`.

    Returns (images uint8 (n, 3, size, size), labels int64 (n,), masks bool (n, size, size)).
    Classes are balanced to within one image. The same arguments give bit-identical tensors
    on the same torch build (all randomness comes from one CPU torch.Generator)."""
    if not 2 <= num_classes <= MAX_CLASSES:
        raise ValueError(f'embedded num_classes must be in [2, {MAX_CLASSES}], got {num_classes}')
    if size < 8:
        raise ValueError(f'embedded image_size must be >= 8 pixels, got {size}')
    g = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]

    # geometry, in pixels and radians, independent of the class
    radius = size * (0.24 + 0.16 * torch.rand(n, generator=g))  # object half-size
    cx = radius + (size - 2 * radius) * torch.rand(n, generator=g)
    cy = radius + (size - 2 * radius) * torch.rand(n, generator=g)
    angle = (torch.rand(n, generator=g) * 2 - 1) * math.radians(15)
    jitter = torch.exp((torch.rand(n, 2, generator=g) * 2 - 1) * 0.1)  # aspect ratio +-10%
    squash = SQUASH ** (labels // len(SHAPES)).float()
    sx, sy = jitter[:, 0], jitter[:, 1] / squash

    bg_level = 0.15 + 0.7 * torch.rand(n, generator=g)
    obj_colour = _object_level(bg_level, g).view(-1, 1) + _chroma(n, g)

    # distractors: small elongated blobs anywhere (under the object), as contrasted as it is
    nd = _DISTRACTORS
    d_radius = size * (0.06 + 0.06 * torch.rand(n, nd, generator=g))
    d_cx, d_cy = size * torch.rand(n, nd, generator=g), size * torch.rand(n, nd, generator=g)
    d_angle = math.pi * torch.rand(n, nd, generator=g)
    d_stretch = 1.0 + torch.rand(n, nd, generator=g)  # length/width ratio in [1, 2]
    d_colour = (_object_level(bg_level.repeat_interleave(nd), g).view(-1, 1)
                + _chroma(n * nd, g)).view(n, nd, 3)
    images = torch.empty(n, 3, size, size, dtype=torch.uint8)
    masks = torch.empty(n, size, size, dtype=torch.bool)
    for start in range(0, n, _CHUNK):
        m = min(_CHUNK, n - start)
        sl = slice(start, start + m)
        alpha = _coverage(labels[sl], cx[sl], cy[sl], radius[sl], angle[sl],
                          sx[sl], sy[sl], size).unsqueeze(1)
        bg = _backgrounds(m, size, bg_level[sl], g)
        for j in range(nd):
            d_alpha = _coverage(torch.zeros(m, dtype=torch.long), d_cx[sl, j], d_cy[sl, j],
                                d_radius[sl, j], d_angle[sl, j], d_stretch[sl, j],
                                torch.ones(m), size).unsqueeze(1)
            bg = bg * (1 - d_alpha) + d_colour[sl, j].view(-1, 3, 1, 1) * d_alpha
        noise = torch.randn(m, 3, size, size, generator=g) * _NOISE_STD
        img = bg * (1 - alpha) + obj_colour[sl].view(-1, 3, 1, 1) * alpha + noise
        images[sl] = (img.clamp(0, 1) * 255).round().to(torch.uint8)
        masks[sl] = alpha.squeeze(1) >= 0.5
    return images, labels, masks
