"""Geometry, vessel tree and ICDR lesion drawing for the synthetic fundus generator.

Everything here draws with cv2 primitives into shared canvases (a blood "density" map, bright
alpha layers and one uint8 mask per lesion type) so a 2416x1736 frame costs a few hundred ms.
Sizes are in units of the field radius R so the same seed looks alike at every resolution.
Grade logic lives here too: each grade's lesion set is built so the ICDR rules can be
re-derived from the masks alone (connected components per quadrant around the field centre).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

LESION_TYPES = (
    "microaneurysm",
    "haemorrhage",
    "hard_exudate",
    "cotton_wool",
    "venous_beading",
    "irma",
    "neovascularisation",
    "preretinal_haemorrhage",
)
BRIGHT_LAYERS = ("hard_exudate", "cotton_wool")

_SHIFT = 4  # cv2 sub-pixel bits: small lesions stay round at 224 px
_F = 1 << _SHIFT
DENSITY_SCALE = 100.0  # Canvas.density stores blood density x 100 (uint8, so cv2 anti-aliases)


@dataclass(frozen=True)
class Geometry:
    """Where the field, disc and fovea sit in the frame (pixels).

    Convention (photographs as taken, not mirrored): in a right eye the optic disc lies to the
    right of the fovea in the image, in a left eye to the left.
    """

    height: int
    width: int
    cx: float
    cy: float
    radius: float
    eye: str
    disc: tuple[float, float]
    disc_r: float
    fovea: tuple[float, float]

    @property
    def nasal(self) -> int:
        """Image x direction (+1 right, -1 left) of the nasal side."""
        return 1 if self.eye == "right" else -1

    def visible(self, x: np.ndarray, y: np.ndarray, margin: np.ndarray | float) -> np.ndarray:
        """True where a lesion of radius `margin` lies fully inside field and frame."""
        r = np.hypot(x - self.cx, y - self.cy)
        return (
            (r <= 0.93 * self.radius - margin)
            & (x >= margin + 2)
            & (y >= margin + 2)
            & (x <= self.width - 3 - margin)
            & (y <= self.height - 3 - margin)
        )

    def quadrant(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """0 upper-left, 1 upper-right, 2 lower-left, 3 lower-right of the field centre."""
        return (np.asarray(y) >= self.cy) * 2 + (np.asarray(x) >= self.cx)


@dataclass
class Canvas:
    """Mutable drawing targets of one image."""

    density: np.ndarray  # uint8 blood density x DENSITY_SCALE (vessels and red lesions)
    bright: dict[str, np.ndarray]  # float32 alpha of pale structures
    masks: dict[str, np.ndarray]  # uint8 per lesion type
    veins: list[tuple[np.ndarray, float]] = field(default_factory=list)  # (points, width px)

    @classmethod
    def empty(cls, h: int, w: int) -> Canvas:
        z = lambda dt: np.zeros((h, w), dt)  # noqa: E731
        return cls(z(np.uint8), {k: z(np.float32) for k in BRIGHT_LAYERS},
                   {k: z(np.uint8) for k in LESION_TYPES})


# ---------------------------------------------------------------- cv2 drawing with sub-pixels
def _p(x: float, y: float) -> tuple[int, int]:
    return int(round(x * _F)), int(round(y * _F))


def _style(val: float, aa: bool) -> tuple[float, int]:
    """Density canvases hold hundredths in uint8 and get anti-aliased edges; masks stay binary."""
    return (int(round(val * DENSITY_SCALE)), cv2.LINE_AA) if aa else (val, cv2.LINE_8)


def circle(img: np.ndarray, x: float, y: float, r: float, val: float, aa: bool = False) -> None:
    v, lt = _style(val, aa)
    cv2.circle(img, _p(x, y), max(1, int(round(r * _F))), v, -1, lt, _SHIFT)


def ellipse(img, x, y, ax, ay, angle, val, start=0, end=360, aa=False) -> None:  # noqa: ANN001
    v, lt = _style(val, aa)
    axes = (max(1, int(round(ax * _F))), max(1, int(round(ay * _F))))
    cv2.ellipse(img, _p(x, y), axes, angle, start, end, v, -1, lt, _SHIFT)


def polyline(img: np.ndarray, pts: np.ndarray, val: float, thick: float,
             aa: bool = False) -> None:
    v, lt = _style(val, aa)
    arr = np.round(np.asarray(pts) * _F).astype(np.int32).reshape(-1, 1, 2)
    cv2.polylines(img, [arr], False, v, max(1, int(round(thick))), lt, _SHIFT)


# ---------------------------------------------------------------- geometry and placement
def make_geometry(rng: np.random.Generator, h: int, w: int, eye: str, field_scale: float,
                  offset: tuple[float, float]) -> Geometry:
    """Field circle plus disc ~1/6.5 field diameter and fovea ~2.5 disc diameters temporal."""
    radius = field_scale * h / 2.0
    cx, cy = w / 2.0 + offset[0] * radius, h / 2.0 + offset[1] * radius
    nasal = 1 if eye == "right" else -1
    disc_r = radius / rng.uniform(6.2, 7.0)
    dx, dy = cx + nasal * rng.uniform(0.33, 0.42) * radius, cy - rng.uniform(0.0, 0.06) * radius
    sep = 5.0 * disc_r * rng.uniform(0.95, 1.05)
    fovea = (dx - nasal * sep, dy + rng.uniform(0.03, 0.09) * radius)
    return Geometry(h, w, cx, cy, radius, eye, (dx, dy), disc_r, fovea)


def place(rng: np.random.Generator, geo: Geometry, radii: Sequence[float], *,
          quadrant: int | None = None, centre: tuple[float, float] | None = None,
          spread: float = 0.0, gap: float = 2.0, avoid_disc: bool = True,
          taken: list[tuple[float, float, float]] | None = None,
          ) -> list[tuple[float, float, float]]:
    """Place non-touching discs of the given radii (random sequential adsorption).

    Returns (x, y, r) for those that fit: callers check the count when a rule depends on it.
    A quadrant keeps each disc clear of the axes, so its centroid stays in that quadrant.
    """
    out: list[tuple[float, float, float]] = []
    taken = list(taken or [])
    for r in radii:
        if centre is None:
            rr = geo.radius * np.sqrt(rng.uniform(0, 1, 128))
            th = rng.uniform(0, 2 * np.pi, 128)
            x, y = geo.cx + rr * np.cos(th), geo.cy + rr * np.sin(th)
        else:
            x = centre[0] + rng.normal(0, spread, 128)
            y = centre[1] + rng.normal(0, spread, 128)
        ok = geo.visible(x, y, r)
        if quadrant is not None:
            ok &= geo.quadrant(x, y) == quadrant
            ok &= (np.abs(x - geo.cx) > r + 2) & (np.abs(y - geo.cy) > r + 2)
        if avoid_disc:
            ok &= np.hypot(x - geo.disc[0], y - geo.disc[1]) > geo.disc_r * 1.2 + r
        if taken:
            t = np.asarray(taken)
            d = np.hypot(x[:, None] - t[None, :, 0], y[:, None] - t[None, :, 1])
            ok &= (d > t[None, :, 2] + r + gap).all(axis=1)
        idx = np.flatnonzero(ok)
        if idx.size:
            p = (float(x[idx[0]]), float(y[idx[0]]), float(r))
            out.append(p)
            taken.append(p)
    return out


# ---------------------------------------------------------------- vessels
# (angle deg from temporal towards superior, curvature rad/R decaying over 0.5 R, length R,
# width factor, depth): temporal arcades turn ~95 deg around the macula, nasal ones run straight.
_TRUNKS = ((82, -2.9, 1.5, 1.0, 3), (125, 0.3, 0.9, 0.75, 2), (175, 0.0, 0.6, 0.5, 2),
           (15, -0.6, 0.5, 0.4, 1))


def draw_vessels(rng: np.random.Generator, geo: Geometry, canvas: Canvas) -> None:
    """Arteries (thin, light) and veins (thick, dark) arcading from the disc."""
    segs: list[tuple[np.ndarray, float, str]] = []
    for sup in (1, -1):
        for ang, curv, length, wf, depth in _TRUNKS:
            for kind, w0, da in (("vein", 0.021, 0), ("artery", 0.015, -8)):
                a = math.radians(ang + da + rng.normal(0, 7))
                start = (geo.disc[0] + rng.normal(0, 0.2) * geo.disc_r,
                         geo.disc[1] - sup * rng.uniform(0.0, 0.3) * geo.disc_r)
                _grow(rng, geo, start, a, sup, w0 * wf * geo.radius,
                      length * rng.uniform(0.85, 1.1), curv + rng.normal(0, 0.25),
                      depth, kind, segs)
    for kind in ("vein", "artery"):  # arteries cross over veins
        val = 1.0 if kind == "vein" else 0.6
        for pts, w, k in segs:
            if k == kind:
                _taper(canvas.density, pts, w, val)
                if kind == "vein":
                    canvas.veins.append((pts, w))
                elif w > 3.0:  # central light reflex of larger arteries
                    polyline(canvas.density, pts[: len(pts) // 2], 0.3, max(1.0, w / 4), aa=True)
    _fade_on_disc(geo, canvas.density)


def _fade_on_disc(geo: Geometry, density: np.ndarray) -> None:
    """Vessels crossing the pale disc look thinner and lighter than on the fundus."""
    x, y, r = geo.disc[0], geo.disc[1], geo.disc_r
    x0, y0 = max(0, int(x - r)), max(0, int(y - r))
    x1, y1 = min(geo.width, int(x + r) + 1), min(geo.height, int(y + r) + 1)
    if x0 >= x1 or y0 >= y1:
        return
    yy, xx = np.ogrid[y0:y1, x0:x1]
    inside = np.hypot(xx - x, yy - y) < r
    roi = density[y0:y1, x0:x1]
    roi[inside] = (roi[inside] * 0.55).astype(np.uint8)


def _taper(img: np.ndarray, pts: np.ndarray, w: float, val: float) -> None:
    n = len(pts)
    chunks = max(1, min(4, n // 4))
    for i in range(chunks):
        a, b = i * n // chunks, min(n, (i + 1) * n // chunks + 1)
        polyline(img, pts[a:b], val, w * (1.0 - 0.45 * i / chunks), aa=True)


def _grow(rng, geo, start, ang, sup, width, length, curv, depth, kind, out) -> None:  # noqa: ANN001
    """Random-walk a vessel in (temporal, superior) angles, mirrored into the image."""
    step = 0.015 * geo.radius
    tx = -geo.nasal
    x, y = start
    pts = [(x, y)]
    angs = [ang]
    wiggle = 0.0
    for i in range(max(2, int(length / 0.015))):
        wiggle = 0.92 * wiggle + rng.normal(0, 0.035)  # bounded tortuosity around the course
        ang += curv * 0.015 * math.exp(-i * 0.015 / 0.5)
        x += step * tx * math.cos(ang + wiggle)
        y -= step * sup * math.sin(ang + wiggle)
        if math.hypot(x - geo.cx, y - geo.cy) > 0.99 * geo.radius:
            break
        if math.hypot(x - geo.fovea[0], y - geo.fovea[1]) < 0.1 * geo.radius:
            break
        pts.append((x, y))
        angs.append(ang)
    out.append((np.asarray(pts), width, kind))
    if depth == 0 or len(pts) < 6 or width < 1.0:
        return
    for _ in range(int(rng.integers(1, 3 if depth < 3 else 4))):
        k = int(rng.integers(len(pts) // 4, len(pts) - 2))
        ca = angs[k] + rng.choice((-1, 1)) * rng.uniform(0.35, 0.8)
        _grow(rng, geo, pts[k], ca, sup, width * rng.uniform(0.5, 0.7),
              length * rng.uniform(0.3, 0.55), rng.normal(0, 0.8), depth - 1, kind, out)


# ---------------------------------------------------------------- red lesions
def microaneurysms(rng: np.random.Generator, geo: Geometry, cv: Canvas, n: int) -> int:
    """Small sharp dark-red dots; returns how many were placed."""
    R = geo.radius
    pts = place(rng, geo, rng.uniform(0.008, 0.014, n) * R, gap=3)
    for x, y, r in pts:
        circle(cv.density, x, y, r, rng.uniform(1.8, 2.4), aa=True)
        circle(cv.masks["microaneurysm"], x, y, r, 1)
    return len(pts)


def haemorrhages(rng: np.random.Generator, geo: Geometry, cv: Canvas, n: int,
                 quadrant: int | None = None, rmax: float = 0.032,
                 taken: list | None = None) -> list:
    """Dot, blot and flame haemorrhages; extent-aware spacing keeps them separate blobs."""
    R = geo.radius
    radii = rng.uniform(0.012, rmax, n) * R
    pts = place(rng, geo, radii * 1.5, quadrant=quadrant, gap=3, taken=taken)
    m = cv.masks["haemorrhage"]
    for x, y, e in pts:
        r, dens, kind = e / 1.5, rng.uniform(0.9, 1.6), rng.uniform()
        if kind < 0.35:  # dot
            shapes = [(x, y, r, r, 0.0)]
        elif kind < 0.8:  # blot: a few overlapping lobes
            shapes = [(x, y, r * 0.8, r * 0.7, rng.uniform(0, 180))]
            for _ in range(int(rng.integers(2, 4))):
                a, d = rng.uniform(0, 2 * np.pi), rng.uniform(0.2, 0.5) * r
                shapes.append((x + d * np.cos(a), y + d * np.sin(a), r * rng.uniform(0.5, 0.9),
                               r * rng.uniform(0.4, 0.8), rng.uniform(0, 180)))
        else:  # flame: elongated along the nerve fibres (radial from the disc)
            ang = math.degrees(math.atan2(y - geo.disc[1], x - geo.disc[0]))
            shapes = [(x, y, r * 1.45, r * 0.5, ang)]
        for sx, sy, ax, ay, an in shapes:
            ellipse(cv.density, sx, sy, ax, ay, an, dens, aa=True)
            ellipse(m, sx, sy, ax, ay, an, 1)
    return pts


def preretinal(rng: np.random.Generator, geo: Geometry, cv: Canvas) -> int:
    """Boat-shaped pre-retinal haemorrhage: flat fluid level on top, rounded below."""
    R = geo.radius
    a = rng.uniform(0.07, 0.13) * R
    pts = place(rng, geo, [a], avoid_disc=False, gap=0)
    for x, y, _ in pts:
        b = a * rng.uniform(0.5, 0.75)
        ellipse(cv.density, x, y - b / 2, a, b, 0, rng.uniform(1.2, 1.6), 0, 180, aa=True)
        ellipse(cv.masks["preretinal_haemorrhage"], x, y - b / 2, a, b, 0, 1, 0, 180)
    return len(pts)


def _squiggles(rng, cv, key, x, y, n, length, turn, thick, dens, pad) -> None:  # noqa: ANN001
    """Fine tortuous vessels from one root; all start at (x, y) so the mask is one blob."""
    for _ in range(n):
        ang, px, py = rng.uniform(0, 2 * np.pi), x, y
        pts = [(px, py)]
        steps = max(4, int(length / max(thick, 1.0)))
        for _ in range(steps):
            ang += rng.normal(0, turn)
            px += math.cos(ang) * length / steps
            py += math.sin(ang) * length / steps
            pts.append((px, py))
        pts_a = np.asarray(pts)
        polyline(cv.density, pts_a, dens, thick, aa=True)
        polyline(cv.masks[key], pts_a, 1, thick + 2 * pad)


def tufts(rng: np.random.Generator, geo: Geometry, cv: Canvas, key: str,
          quadrant: int | None = None, at_disc: bool = False) -> int:
    """IRMA (few loose loops) or neovascularisation (dense fine fan); returns count placed."""
    R = geo.radius
    size = rng.uniform(0.06, 0.1) * R if key == "irma" else rng.uniform(0.06, 0.11) * R
    if at_disc:
        a = rng.uniform(0, 2 * np.pi)
        pts = [(geo.disc[0] + 0.7 * geo.disc_r * np.cos(a),
                geo.disc[1] + 0.7 * geo.disc_r * np.sin(a), size)]
        pts = [p for p in pts if geo.visible(np.array(p[0]), np.array(p[1]), size)]
    else:
        pts = place(rng, geo, [size], quadrant=quadrant, gap=0)
    thick = max(1.0, 0.004 * R)
    for x, y, s in pts:
        if key == "irma":
            _squiggles(rng, cv, key, x, y, int(rng.integers(3, 6)), s * 0.9, 0.5, thick, 1.0,
                       max(1.0, 0.006 * R))
        else:
            _squiggles(rng, cv, key, x, y, int(rng.integers(8, 16)), s * 0.9, 0.9, thick, 0.9,
                       max(1.0, 0.006 * R))
    return len(pts)


def venous_beading(rng: np.random.Generator, geo: Geometry, cv: Canvas, quadrant: int) -> int:
    """Sausage-like beads along a vein segment lying wholly in one quadrant."""
    R = geo.radius
    seg_len = int(rng.integers(7, 12))
    cands = []
    for pts, w in cv.veins:
        if w < 0.008 * R or len(pts) < seg_len + 2:
            continue
        for s in range(0, len(pts) - seg_len, 3):
            seg = pts[s:s + seg_len]
            far = np.hypot(seg[:, 0] - geo.disc[0], seg[:, 1] - geo.disc[1]).min() > 2 * geo.disc_r
            mw = 2.0 * w
            if far and (geo.quadrant(seg[:, 0], seg[:, 1]) == quadrant).all() \
                    and geo.visible(seg[:, 0], seg[:, 1], mw).all() \
                    and (np.abs(seg[:, 0] - geo.cx) > mw).all() \
                    and (np.abs(seg[:, 1] - geo.cy) > mw).all():
                cands.append((seg, w))
    if not cands:  # no vein there: lay a short beaded vein of its own
        p = place(rng, geo, [0.1 * R], quadrant=quadrant, gap=0)
        if not p:
            return 0
        x, y, _ = p[0]
        a = rng.uniform(0, 2 * np.pi)
        t = np.linspace(-0.07, 0.07, 9)[:, None] * R
        seg = np.column_stack([x + t[:, 0] * np.cos(a), y + t[:, 0] * np.sin(a)])
        cands = [(seg, 0.012 * R)]
    seg, w = cands[int(rng.integers(len(cands)))]
    polyline(cv.density, seg, 1.1, w * 1.1, aa=True)
    polyline(cv.masks["venous_beading"], seg, 1, w * 1.1)
    for i, (x, y) in enumerate(seg[1:-1:2]):
        r = w * (rng.uniform(1.1, 1.4) if i % 2 == 0 else rng.uniform(0.6, 0.8))
        circle(cv.density, x, y, r, 1.25, aa=True)
        circle(cv.masks["venous_beading"], x, y, r, 1)
    return 1


# ---------------------------------------------------------------- pale lesions
def hard_exudates(rng: np.random.Generator, geo: Geometry, cv: Canvas, clusters: int) -> int:
    """Waxy yellow dots in clusters or partial rings, mostly around the macula."""
    R, placed = geo.radius, 0
    for _ in range(clusters):
        a, d = rng.uniform(0, 2 * np.pi), rng.uniform(0.12, 0.45) * R
        cx, cy = geo.fovea[0] + d * np.cos(a), geo.fovea[1] + d * np.sin(a)
        n, spread = int(rng.integers(4, 22)), rng.uniform(0.03, 0.08) * R
        if rng.uniform() < 0.4:  # circinate arc
            th = rng.uniform(0, 2 * np.pi) + rng.uniform(0, 3.5) * rng.uniform(0, 1, n)
            xs, ys = cx + spread * 1.5 * np.cos(th), cy + spread * 1.5 * np.sin(th)
        else:
            xs, ys = cx + rng.normal(0, spread, n), cy + rng.normal(0, spread, n)
        rs = rng.uniform(0.006, 0.018, n) * R
        for x, y, r in zip(xs, ys, rs, strict=True):
            if geo.visible(np.array(x), np.array(y), r):
                ellipse(cv.bright["hard_exudate"], x, y, r, r * rng.uniform(0.6, 1.0),
                        rng.uniform(0, 180), rng.uniform(0.75, 0.95))
                ellipse(cv.masks["hard_exudate"], x, y, r, r * 0.8, 0, 1)
                placed += 1
    return placed


def cotton_wool(rng: np.random.Generator, geo: Geometry, cv: Canvas, n: int) -> int:
    """Fluffy pale patches near the disc and arcades (nerve-fibre infarcts)."""
    R = geo.radius
    rs = rng.uniform(0.035, 0.065, n) * R
    pts = place(rng, geo, rs * 1.3, centre=geo.disc, spread=0.4 * R, gap=2)
    for x, y, e in pts:
        r = e / 1.3
        ang = math.degrees(math.atan2(y - geo.disc[1], x - geo.disc[0])) + 90
        for _ in range(int(rng.integers(3, 6))):
            ox, oy = rng.normal(0, 0.25 * r, 2)
            ellipse(cv.bright["cotton_wool"], x + ox, y + oy, r * rng.uniform(0.6, 1.0),
                    r * rng.uniform(0.4, 0.7), ang + rng.normal(0, 20), rng.uniform(0.6, 0.85))
        ellipse(cv.masks["cotton_wool"], x, y, r, r * 0.7, ang, 1)
    return len(pts)


# ---------------------------------------------------------------- grades
def draw_lesions(grade: int, rng: np.random.Generator, geo: Geometry, cv: Canvas) -> None:
    """Draw an ICDR-consistent lesion set for `grade` (0-4)."""
    if grade == 1:
        microaneurysms(rng, geo, cv, int(rng.integers(1, 9)))
    elif grade == 2:
        _moderate(rng, geo, cv)
    elif grade == 3:
        _severe(rng, geo, cv)
    elif grade == 4:
        (_severe if rng.uniform() < 0.5 else _moderate)(rng, geo, cv)
        nv, prh = rng.uniform() < 0.75, rng.uniform() < 0.45
        placed = 0
        if nv:
            placed += tufts(rng, geo, cv, "neovascularisation", at_disc=rng.uniform() < 0.5)
        if prh or not nv:
            placed += preretinal(rng, geo, cv)
        for _ in range(20):  # tiny visible fields: keep trying elsewhere
            if placed:
                break
            placed = tufts(rng, geo, cv, "neovascularisation")


def _moderate(rng: np.random.Generator, geo: Geometry, cv: Canvas) -> None:
    """More than microaneurysms, fewer than 21 haemorrhages in all: never meets 4-2-1."""
    microaneurysms(rng, geo, cv, int(rng.integers(2, 16)))
    signs = 0
    if rng.uniform() < 0.8:
        signs += len(haemorrhages(rng, geo, cv, int(rng.integers(2, 19))))
    if rng.uniform() < 0.5:
        signs += hard_exudates(rng, geo, cv, int(rng.integers(1, 4)))
    if rng.uniform() < 0.4:
        signs += cotton_wool(rng, geo, cv, int(rng.integers(1, 5)))
    for _ in range(20):
        if signs:
            break
        signs = len(haemorrhages(rng, geo, cv, int(rng.integers(1, 6))))


def _severe(rng: np.random.Generator, geo: Geometry, cv: Canvas) -> None:
    """Any of the 4-2-1 rule, with the others absent or partial."""
    use = rng.uniform(0, 1, 3) < (0.6, 0.4, 0.5)
    if not use.any():
        use[int(rng.integers(3))] = True
    taken: list = []
    counts = []
    for q in range(4):
        n = int(rng.integers(21, 32)) if use[0] else int(rng.integers(1, 5))
        pts = haemorrhages(rng, geo, cv, n, quadrant=q, rmax=0.026, taken=taken)
        taken += pts
        counts.append(len(pts))
    met = bool(use[0]) and min(counts) > 20
    if use[1]:
        qs = rng.permutation(4)[: int(rng.integers(2, 5))]
        met |= sum(venous_beading(rng, geo, cv, int(q)) for q in qs) >= 2
    if use[2] or not met:
        for _ in range(20):  # a clipped field may leave a quadrant too small: try the others
            for q in rng.permutation(4)[: int(rng.integers(1, 4))]:
                met |= tufts(rng, geo, cv, "irma", quadrant=int(q)) > 0
            if met:
                break
    microaneurysms(rng, geo, cv, int(rng.integers(5, 30)))
    if rng.uniform() < 0.6:
        hard_exudates(rng, geo, cv, int(rng.integers(1, 5)))
    if rng.uniform() < 0.6:
        cotton_wool(rng, geo, cv, int(rng.integers(1, 7)))
