"""Synthetic images of a small world, drawn with numpy, each with English and Chinese captions and
questions, so vision models can be trained and scored on CPU without downloading anything.

Four kinds of picture:

- ``shape``: one coloured shape at one of five positions ("a red circle at the top left");
- ``count``: one to four copies of the same shape ("three blue squares");
- ``digit``: a digit drawn from a 3x5 bitmap font ("the digit 7 in green");
- ``scene``: two shapes side by side ("a red circle to the left of a blue square").

Everything is a pure function of the seed (``numpy.random.default_rng``), so a dataset is rebuilt
identically on every machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

COLOURS = {  # name: (RGB, Chinese)
    "red": ((220, 40, 40), "红色"),
    "green": ((40, 190, 60), "绿色"),
    "blue": ((60, 100, 240), "蓝色"),
    "yellow": ((240, 215, 40), "黄色"),
    "white": ((245, 245, 245), "白色"),
    "purple": ((170, 70, 210), "紫色"),
}
SHAPES = {"circle": "圆形", "square": "正方形", "triangle": "三角形", "cross": "十字"}
SHAPE_PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
POSITIONS = {  # name: ((x, y) centre as a fraction of the side, Chinese)
    "top left": ((0.27, 0.27), "左上角"),
    "top right": ((0.73, 0.27), "右上角"),
    "bottom left": ((0.27, 0.73), "左下角"),
    "bottom right": ((0.73, 0.73), "右下角"),
    "center": ((0.5, 0.5), "中间"),
}
COUNT_WORDS = {1: ("one", "一"), 2: ("two", "两"), 3: ("three", "三"), 4: ("four", "四")}
KINDS = ("shape", "count", "digit", "scene")

# 3x5 bitmap digits, one string per row ('#' = ink).
DIGIT_FONT = {
    0: ("###", "#.#", "#.#", "#.#", "###"), 1: (".#.", "##.", ".#.", ".#.", "###"),
    2: ("###", "..#", "###", "#..", "###"), 3: ("###", "..#", ".##", "..#", "###"),
    4: ("#.#", "#.#", "###", "..#", "..#"), 5: ("###", "#..", "###", "..#", "###"),
    6: ("###", "#..", "###", "#.#", "###"), 7: ("###", "..#", ".#.", ".#.", ".#."),
    8: ("###", "#.#", "###", "#.#", "###"), 9: ("###", "#.#", "###", "..#", "###"),
}


@dataclass
class ImageExample:
    """One picture with its captions (``{"en": ..., "zh": ...}``), a short caption naming the main
    object (the zero-shot class text) and visual questions ``{"lang", "question", "answer"}``."""

    image: np.ndarray  # uint8 [H, W, 3]
    kind: str
    labels: dict
    captions: dict
    short_captions: dict
    questions: list = field(default_factory=list)


def shape_mask(kind: str, size: int, cx: float, cy: float, radius: float) -> np.ndarray:
    """Boolean [size, size] mask of one shape centred at pixel (cx, cy)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    dx, dy = xx - cx, yy - cy
    if kind == "circle":
        return dx * dx + dy * dy <= radius * radius
    if kind == "square":
        half = 0.85 * radius
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if kind == "triangle":  # apex up: width grows linearly from the top edge to the base
        return (dy >= -radius) & (dy <= radius) & (np.abs(dx) <= (dy + radius) / 2)
    if kind == "cross":
        bar = radius / 3
        return ((np.abs(dx) <= bar) & (np.abs(dy) <= radius)) | ((np.abs(dy) <= bar) & (np.abs(dx) <= radius))
    raise ValueError(f"unknown shape {kind!r}; choose one of {sorted(SHAPES)}")


def digit_mask(digit: int, size: int, left: int, top: int, scale: int) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    for r, row in enumerate(DIGIT_FONT[digit]):
        for c, ch in enumerate(row):
            if ch == "#":
                mask[top + r * scale: top + (r + 1) * scale, left + c * scale: left + (c + 1) * scale] = True
    return mask


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    base = rng.integers(10, 60, size=3)
    noise = rng.normal(0, 6, size=(size, size, 3))
    return np.clip(base[None, None, :] + noise, 0, 255)


def _paint(canvas: np.ndarray, mask: np.ndarray, colour: str, rng: np.random.Generator) -> None:
    rgb = np.array(COLOURS[colour][0], dtype=np.float64) + rng.normal(0, 8, size=3)
    canvas[mask] = np.clip(rgb, 0, 255)


def _radius(rng: np.random.Generator, size: int) -> float:
    return size * rng.uniform(0.13, 0.18)


def _make_shape(rng, size):
    colour = str(rng.choice(list(COLOURS)))
    shape = str(rng.choice(list(SHAPES)))
    position = str(rng.choice(list(POSITIONS)))
    (fx, fy), pos_zh = POSITIONS[position]
    canvas = _background(rng, size)
    jitter = rng.uniform(-0.04, 0.04, size=2) * size
    _paint(canvas, shape_mask(shape, size, fx * size + jitter[0], fy * size + jitter[1], _radius(rng, size)), colour, rng)
    col_zh, shape_zh = COLOURS[colour][1], SHAPES[shape]
    where_en = "in the center" if position == "center" else f"at the {position}"
    captions = {"en": f"a {colour} {shape} {where_en}", "zh": f"{pos_zh}有一个{col_zh}的{shape_zh}"}
    short = {"en": f"a {colour} {shape}", "zh": f"{col_zh}的{shape_zh}"}
    questions = [
        ("en", "what colour is the shape?", colour), ("zh", "图形是什么颜色？", col_zh),
        ("en", "what shape is it?", shape), ("zh", "这是什么图形？", shape_zh),
        ("en", "where is the shape?", position), ("zh", "图形在哪里？", pos_zh),
    ]
    return canvas, dict(colour=colour, shape=shape, position=position), captions, short, questions


def _free_spots(rng, size, n, radius):
    """n centres at least 2.2 radii apart (rejection sampling on a jittered grid)."""
    for _ in range(200):
        pts = rng.uniform(radius + 1, size - radius - 1, size=(n, 2))
        d = np.sqrt(((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1)) + np.eye(n) * 1e9
        if d.min() >= 2.2 * radius:
            return pts
    raise RuntimeError(f"could not place {n} shapes of radius {radius:.1f} in a {size}px image; use a larger image")


def _make_count(rng, size):
    colour = str(rng.choice(list(COLOURS)))
    shape = str(rng.choice(list(SHAPES)))
    count = int(rng.integers(1, 5))
    canvas = _background(rng, size)
    radius = size * 0.11
    for cx, cy in _free_spots(rng, size, count, radius):
        _paint(canvas, shape_mask(shape, size, cx, cy, radius), colour, rng)
    n_en, n_zh = COUNT_WORDS[count]
    col_zh, shape_zh = COLOURS[colour][1], SHAPES[shape]
    noun = shape if count == 1 else SHAPE_PLURALS[shape]
    captions = {"en": f"{n_en} {colour} {noun}", "zh": f"{n_zh}个{col_zh}的{shape_zh}"}
    short = {"en": f"{n_en} {noun}", "zh": f"{n_zh}个{shape_zh}"}
    questions = [
        ("en", "how many shapes are there?", n_en), ("zh", "有几个图形？", n_zh),
        ("en", "what colour are the shapes?", colour), ("zh", "图形是什么颜色？", col_zh),
    ]
    return canvas, dict(colour=colour, shape=shape, count=count), captions, short, questions


def _make_digit(rng, size):
    colour = str(rng.choice(list(COLOURS)))
    digit = int(rng.integers(0, 10))
    scale = max(1, size // 10)
    canvas = _background(rng, size)
    left = int(rng.integers(1, size - 3 * scale))
    top = int(rng.integers(1, size - 5 * scale))
    _paint(canvas, digit_mask(digit, size, left, top, scale), colour, rng)
    col_zh = COLOURS[colour][1]
    captions = {"en": f"the digit {digit} in {colour}", "zh": f"{col_zh}的数字{digit}"}
    short = {"en": f"the digit {digit}", "zh": f"数字{digit}"}
    questions = [
        ("en", "what digit is this?", str(digit)), ("zh", "这是什么数字？", str(digit)),
        ("en", "what colour is the digit?", colour), ("zh", "数字是什么颜色？", col_zh),
    ]
    return canvas, dict(colour=colour, digit=digit), captions, short, questions


def _make_scene(rng, size):
    colours = [str(c) for c in rng.choice(list(COLOURS), size=2, replace=False)]
    shapes = [str(s) for s in rng.choice(list(SHAPES), size=2, replace=False)]
    canvas = _background(rng, size)
    radius = _radius(rng, size)
    y = size * rng.uniform(0.35, 0.65)
    for (colour, shape), fx in zip(zip(colours, shapes), (0.27, 0.73)):
        cx = (fx + rng.uniform(-0.04, 0.04)) * size
        _paint(canvas, shape_mask(shape, size, cx, y, radius), colour, rng)
    (c1, c2), (s1, s2) = colours, shapes
    z = {k: COLOURS[k][1] for k in colours} | {k: SHAPES[k] for k in shapes}
    captions = {"en": f"a {c1} {s1} to the left of a {c2} {s2}",
                "zh": f"{z[c1]}的{z[s1]}在{z[c2]}的{z[s2]}的左边"}
    short = {"en": f"a {s1} and a {s2}", "zh": f"{z[s1]}和{z[s2]}"}
    questions = [
        ("en", "what shape is on the left?", s1), ("zh", "左边是什么图形？", z[s1]),
        ("en", f"what colour is the {s2}?", c2), ("zh", f"{z[s2]}是什么颜色？", z[c2]),
    ]
    return canvas, dict(colours=colours, shapes=shapes), captions, short, questions


_MAKERS = {"shape": _make_shape, "count": _make_count, "digit": _make_digit, "scene": _make_scene}


def make_example(rng: np.random.Generator, kind: str, size: int = 32) -> ImageExample:
    if kind not in _MAKERS:
        raise ValueError(f"unknown image kind {kind!r}; choose one of {KINDS}")
    if size < 16:
        raise ValueError(f"image size {size} is too small to draw the world; use at least 16 pixels")
    canvas, labels, captions, short, questions = _MAKERS[kind](rng, size)
    qs = [{"lang": lang, "question": q, "answer": a} for lang, q, a in questions]
    return ImageExample(image=canvas.round().astype(np.uint8), kind=kind, labels=labels, captions=captions,
                        short_captions=short, questions=qs)


def make_image_dataset(n: int, seed: int = 0, size: int = 32, kinds: tuple[str, ...] = KINDS) -> list[ImageExample]:
    """``n`` examples, the kinds taking turns (so every kind has n/len(kinds) examples)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    for kind in kinds:
        if kind not in _MAKERS:
            raise ValueError(f"unknown image kind {kind!r}; choose among {KINDS}")
    rng = np.random.default_rng(seed)
    return [make_example(rng, kinds[i % len(kinds)], size) for i in range(n)]


def images_to_tensor(images) -> "torch.Tensor":
    """uint8 [N, H, W, 3] (or a list of them) -> float [N, 3, H, W], roughly zero-mean, unit-scale."""
    import torch

    arr = np.stack(list(images)) if not isinstance(images, np.ndarray) else images
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"images must be [N, H, W, 3] RGB, got shape {arr.shape}")
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float()
    return (x / 255.0 - 0.5) / 0.25


def save_image(image: np.ndarray, path: str | Path) -> Path:
    from PIL import Image

    path = Path(path)
    Image.fromarray(image).save(path)
    return path


def load_image(path: str | Path, size: int) -> np.ndarray:
    """Read any image PIL understands as uint8 [size, size, 3] RGB."""
    from PIL import Image

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such image file")
    with Image.open(path) as img:
        img = img.convert("RGB")
        if img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        return np.asarray(img, dtype=np.uint8).copy()
