"""The embedded dataset: synthetic coloured shapes on textured backgrounds.

SYNTHETIC DATA. Nothing here is a photograph; every image is drawn by `generate` from a
fixed seed, so the project trains and tests on a laptop with no download.

Each image holds one object whose SHAPE is its class (disk, square, triangle, plus, ring,
horizontal bar, vertical bar, diamond, L, X). Position, size, a small rotation, the object's
colour and the whole background are drawn independently of the class, so a model can only
score by looking at the object -- which is what makes class activation maps (Eq. 6-7 of the
paper) meaningful here, and why each image's object mask is kept to score them.

Why each ingredient:
- clutter -- a textured background (low-frequency colour noise plus stripes or a checker of
  random colour and period), one small distractor blob as contrasted as the object, and
  per-pixel noise: a small CNN should need a few epochs, not one, to reach ~0.9 accuracy;
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

_SUPERSAMPLE = 3        # sub-pixels per pixel side for anti-aliasing
_CHUNK = 512            # images rendered at once; bounds memory to ~_CHUNK*(H*S)^2*4 B per temp
_CONTRAST = (0.35, 0.6) # object-minus-background brightness, [0, 1] units
_LEVEL_RANGE = (0.05, 0.95)  # allowed object brightness, [0, 1] units
_DISTRACTORS = 1        # small clutter blobs per image
_NOISE_STD = 0.03       # per-pixel Gaussian noise, [0, 1] units (~8/255)


# ----------------------------------------------------------------------------- shapes
def _inside(shape: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Whether object-frame points (u, v) lie inside `shape`; the frame's unit is the
    object's half-size, so every shape fits in [-1, 1]^2 and the caller sets scale."""
    if shape == 0:   # disk
        return u * u + v * v <= 1.0
    if shape == 4:   # ring: a disk with a hole of half its radius
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.25)
    if shape == 2:   # triangle: apex at v = -1, base at v = 0.75 of half-width 0.95
        return (v <= 0.75) & (u.abs() <= 0.95 * (v + 1.0) / 1.75)
    if shape == 8:   # L: a vertical stroke on the left joined to a bottom stroke
        stem = (u >= -0.9) & (u <= -0.3) & (v.abs() <= 0.9)
        foot = (v >= 0.3) & (v <= 0.9) & (u.abs() <= 0.9)
        return stem | foot
    au, av = u.abs(), v.abs()
    if shape == 1:   # square
        return torch.maximum(au, av) <= 0.8
    if shape == 3:   # plus
        return (torch.minimum(au, av) <= 0.3) & (torch.maximum(au, av) <= 1.0)
    if shape == 5:   # horizontal bar
        return (au <= 1.0) & (av <= 0.35)
    if shape == 6:   # vertical bar
        return (au <= 0.35) & (av <= 1.0)
    if shape == 7:   # diamond
        return au + av <= 1.0
    if shape == 9:   # X: both diagonals
        return ((au - av).abs() <= 0.35) & (torch.maximum(au, av) <= 0.85)
    raise ValueError(f'unknown shape index {shape}')


def _coverage(labels, size: int, **placement) -> torch.Tensor:
    """Fraction of each pixel covered by its object, (n, size, size) float in [0, 1].

    Rendered class by class so each shape's test runs only on its own images; sub-pixel
    hits are averaged back to pixels, which anti-aliases the edges."""
    out = torch.empty(labels.numel(), size, size)
    shape = labels % len(SHAPES)
    for k in shape.unique().tolist():
        idx = (shape == k).nonzero().squeeze(1)
        u, v = _object_frame(size, **{name: t[idx] for name, t in placement.items()})
        hits = _inside(k, u, v).float().unsqueeze(1)
        out[idx] = F.avg_pool2d(hits, _SUPERSAMPLE).squeeze(1)
    return out


def _object_frame(size: int, *, cx, cy, radius, angle, sx, sy):
    """Sub-pixel centres mapped into each object's frame (translate, rotate, scale):
    u, v of shape (n, size*S, size*S). Per-image factors are folded first, so the only
    full-size op is one broadcast add per coordinate."""
    grid = (torch.arange(size * _SUPERSAMPLE, dtype=torch.float32) + 0.5) / _SUPERSAMPLE
    dx = grid.view(1, 1, -1) - cx.view(-1, 1, 1)  # pixels, (n, 1, W*S)
    dy = grid.view(1, -1, 1) - cy.view(-1, 1, 1)  # pixels, (n, H*S, 1)
    cos, sin = angle.cos().view(-1, 1, 1), angle.sin().view(-1, 1, 1)
    ku, kv = 1 / (radius * sx).view(-1, 1, 1), 1 / (radius * sy).view(-1, 1, 1)
    return (cos * ku) * dx + (sin * ku) * dy, (cos * kv) * dy - (sin * kv) * dx


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
    kind = torch.randint(0, 4, (n,), generator=g)
    period = 3.0 + 3.0 * torch.rand(n, generator=g).view(-1, 1, 1)  # pixels
    phase = 2 * math.pi * torch.rand(n, generator=g).view(-1, 1, 1)
    px = torch.arange(size, dtype=torch.float32).view(1, 1, -1)
    py = torch.arange(size, dtype=torch.float32).view(1, -1, 1)

    def wave(t: torch.Tensor) -> torch.Tensor:  # t in pixels along the stripe normal
        return torch.sin(2 * math.pi * t / period + phase).expand(n, size, size)

    waves = torch.stack([wave(py), wave(px), wave((px + py) / math.sqrt(2)),
                         wave(px) * wave(py)], dim=1)  # (n, 4 kinds, H, W)
    pattern = waves[torch.arange(n), kind]
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
    on the same torch build (all randomness comes from one CPU torch.Generator).

    Runs on one intra-op thread: these small elementwise ops gain little from a second
    thread and, on a 2-core machine shared with a training job, slow down ~5x with it
    (measured for 6000 images at 16x16 beside a training job: 0.6 s vs 1.7-6 s)."""
    if not 2 <= num_classes <= MAX_CLASSES:
        raise ValueError(f'embedded num_classes must be in [2, {MAX_CLASSES}], got {num_classes}')
    if size < 8:
        raise ValueError(f'embedded image_size must be >= 8 pixels, got {size}')
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _generate(n, num_classes, size, torch.Generator().manual_seed(seed))
    finally:
        torch.set_num_threads(threads)


def _generate(n: int, num_classes: int, size: int, g: torch.Generator):
    """Scene parameters for all images first, then rendering in chunks (bounded memory)."""
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]
    obj = _draw_objects(n, size, g)
    squash = SQUASH ** (labels // len(SHAPES)).float()
    obj['sy'] = obj['sy'] / squash
    bg_level = 0.15 + 0.7 * torch.rand(n, generator=g)  # background brightness, [0, 1] units
    obj_colour = _object_level(bg_level, g).view(-1, 1) + _chroma(n, g)

    # distractors: small elongated blobs anywhere in the image (under the object), as contrasted as it
    # is, so that "the blob that stands out" is not enough to find the object
    nd = _DISTRACTORS
    dis = _draw_objects(n * nd, size, g, half_size=(0.05, 0.09), max_angle=math.pi)
    dis['sx'] = 1.0 + torch.rand(n * nd, generator=g)  # length/width ratio in [1, 2]
    dis['sy'] = torch.ones(n * nd)
    dis_colour = _object_level(bg_level.repeat_interleave(nd), g).view(-1, 1) + _chroma(n * nd, g)
    dis_shape = torch.zeros(n * nd, dtype=torch.long)  # disks, stretched into blobs

    images = torch.empty(n, 3, size, size, dtype=torch.uint8)
    masks = torch.empty(n, size, size, dtype=torch.bool)
    for start in range(0, n, _CHUNK):
        m = min(_CHUNK, n - start)
        sl, dsl = slice(start, start + m), slice(start * nd, (start + m) * nd)
        img = _backgrounds(m, size, bg_level[sl], g)
        d_alpha = _coverage(dis_shape[dsl], size, **{k: t[dsl] for k, t in dis.items()})
        for j in range(nd):
            img = _paint(img, d_alpha[j::nd], dis_colour[dsl][j::nd])
        alpha = _coverage(labels[sl], size, **{k: t[sl] for k, t in obj.items()})
        img = _paint(img, alpha, obj_colour[sl])
        img = img + torch.randn(m, 3, size, size, generator=g) * _NOISE_STD
        images[sl] = (img.clamp(0, 1) * 255).round().to(torch.uint8)
        masks[sl] = alpha >= 0.5
    return images, labels, masks


def _draw_objects(n: int, size: int, g: torch.Generator, half_size=(0.24, 0.40),
                  max_angle=math.radians(15)) -> dict[str, torch.Tensor]:
    """Random placement for n objects: centre and half-size in pixels (half-size as a
    fraction of `size`, centre keeping the object inside), rotation in radians, and an
    aspect-ratio jitter of +-10% per axis."""
    radius = size * (half_size[0] + (half_size[1] - half_size[0]) * torch.rand(n, generator=g))
    cx = radius + (size - 2 * radius) * torch.rand(n, generator=g)
    cy = radius + (size - 2 * radius) * torch.rand(n, generator=g)
    angle = (torch.rand(n, generator=g) * 2 - 1) * max_angle
    jitter = torch.exp((torch.rand(n, 2, generator=g) * 2 - 1) * 0.1)
    return {'cx': cx, 'cy': cy, 'radius': radius, 'angle': angle,
            'sx': jitter[:, 0], 'sy': jitter[:, 1]}


def _paint(img: torch.Tensor, alpha: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """Alpha-blend a flat `colour` (m, 3) over `img` (m, 3, H, W) with coverage (m, H, W)."""
    a = alpha.unsqueeze(1)
    return img * (1 - a) + colour.view(-1, 3, 1, 1) * a
