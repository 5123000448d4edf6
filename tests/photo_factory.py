"""Real face photos that ship inside packages, and sets derived from them for tests.

astronaut: Eileen Collins (skimage). grace_hopper: Grace Hopper (matplotlib). camera: a man with a camera
(skimage, grayscale, face small). Variants are crops, flips, light changes and recompression: the same person
seen differently, as in a real upload.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps


def astronaut() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut()).convert("RGB")


def grace_hopper() -> Image.Image:
    import matplotlib.cbook as cbook

    return Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")


def camera() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.camera()).convert("RGB")


def jpeg_bytes(image: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def variants(image: Image.Image, count: int, seed: int = 0) -> list[Image.Image]:
    """``count`` distinct photos of the same face: crops, flips, slight rotations, light and colour changes.

    Each is distinct enough not to be a near-duplicate of the others (different crop boxes and edits).
    """
    rng = np.random.default_rng(seed)
    w, h = image.size
    out = []
    for i in range(count):
        # crop 75–95 % of the frame at a random offset, so the face stays in
        scale = rng.uniform(0.75, 0.95)
        cw, ch = int(w * scale), int(h * scale)
        x0 = int(rng.uniform(0, w - cw))
        y0 = int(rng.uniform(0, h - ch))
        img = image.crop((x0, y0, x0 + cw, y0 + ch))
        if i % 2:
            img = ImageOps.mirror(img)
        img = img.rotate(float(rng.uniform(-8, 8)), resample=Image.BICUBIC, expand=False)
        img = ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.85, 1.15)))
        img = ImageEnhance.Color(img).enhance(float(rng.uniform(0.7, 1.3)))
        img = img.resize((int(cw * rng.uniform(1.0, 1.6)), int(ch * rng.uniform(1.0, 1.6))), Image.LANCZOS)
        out.append(img)
    return out


def blurred(image: Image.Image, radius: float = 6) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(radius))


def darkened(image: Image.Image, factor: float = 0.15) -> Image.Image:
    return ImageEnhance.Brightness(image).enhance(factor)


def overexposed(image: Image.Image, factor: float = 3.0) -> Image.Image:
    return ImageEnhance.Brightness(image).enhance(factor)


def side_by_side(left: Image.Image, right: Image.Image) -> Image.Image:
    h = min(left.height, right.height)
    left = left.resize((int(left.width * h / left.height), h))
    right = right.resize((int(right.width * h / right.height), h))
    canvas = Image.new("RGB", (left.width + right.width, h))
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width, 0))
    return canvas


def tiny_face_in_big_canvas(face: Image.Image, canvas_side: int = 3000, face_side: int = 120) -> Image.Image:
    canvas = Image.new("RGB", (canvas_side, canvas_side), (120, 130, 125))
    canvas.paste(face.resize((face_side, face_side)), (canvas_side // 2, canvas_side // 3))
    return canvas


def no_face(size: int = 512, seed: int = 0) -> Image.Image:
    """A textured landscape-like image with no face in it."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, size)[:, None]
    sky = np.stack([0.4 + 0.3 * y, 0.6 + 0.2 * y, 0.9 - 0.2 * y], -1) * np.ones((size, size, 3))
    noise = rng.normal(0, 0.04, (size, size, 3))
    return Image.fromarray((np.clip(sky + noise, 0, 1) * 255).astype(np.uint8))


def with_exif_rotation(image: Image.Image, orientation: int = 6) -> bytes:
    """JPEG bytes whose pixels are stored rotated, with the EXIF tag saying how to turn them upright."""
    # Orientation 6 means "rotate 90° clockwise to display": store the pixels turned the other way.
    stored = image.transpose(Image.Transpose.ROTATE_90) if orientation == 6 else image
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    stored.save(buf, format="JPEG", quality=92, exif=exif)
    return buf.getvalue()


def write_set(folder: Path, images: list[Image.Image], prefix: str = "photo") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(images):
        path = folder / f"{prefix}_{i:02d}.jpg"
        path.write_bytes(jpeg_bytes(img))
        paths.append(path)
    return paths


def same_person_set(folder: Path, count: int = 16, seed: int = 0) -> list[Path]:
    """``count`` photos of one person (the astronaut) as JPEG files."""
    return write_set(folder, variants(astronaut(), count, seed=seed), prefix="astronaut")


# Bad inputs, made here rather than shipped.
def truncated_jpeg() -> bytes:
    data = jpeg_bytes(astronaut())
    return data[: len(data) // 3]


def text_named_jpg() -> bytes:
    return b"this is not an image, just text with a .jpg name\n"


def decompression_bomb_png(side: int = 20000) -> bytes:
    """A small PNG file that decodes to side×side pixels (400 MP at 20000)."""
    img = Image.new("1", (side, side), 0)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


# Head-and-shoulders portraits framed around a known face box (added for the classification tests).
ASTRONAUT_FACE = (181, 62, 268, 172)  # MTCNN's box on skimage's astronaut (x0, y0, x1, y1)
ASTRONAUT_EYES = ((205, 102), (247, 104))  # MTCNN's eye landmarks on it
GRACE_HOPPER_FACE = (174, 120, 356, 340)  # MTCNN's box on matplotlib's grace_hopper


def portrait_variants(image: Image.Image, face_box: tuple[int, int, int, int], count: int, seed: int = 0,
                      face_px: tuple[int, int] = (170, 210)) -> list[Image.Image]:
    """``count`` distinct head-and-shoulders photos keeping the whole face in frame with a margin.

    Each crop is 2.3–2.9 face widths wide at a random offset, mirrored every other time, slightly rotated,
    lit and coloured differently, then resized so the face is ``face_px`` pixels wide and sharpened as a
    camera would: the same person, well framed, as a good upload looks.
    """
    rng = np.random.default_rng(seed)
    x0, y0, x1, y1 = face_box
    fw = x1 - x0
    out = []
    for i in range(count):
        cw = fw * rng.uniform(2.3, 2.9)
        ch = cw * rng.uniform(1.1, 1.3)
        margin = 0.3 * fw
        # the face (plus margin) anywhere inside the crop, the crop inside the image where possible
        left = rng.uniform(x1 + margin - cw, x0 - margin)
        top = rng.uniform(y1 + margin - ch, y0 - margin)
        left = float(np.clip(left, 0, max(0, image.width - cw)))
        top = float(np.clip(top, 0, max(0, image.height - ch)))
        img = image.crop((round(left), round(top), round(left + cw), round(top + ch)))
        if i % 2:
            img = ImageOps.mirror(img)
        img = img.rotate(float(rng.uniform(-6, 6)), resample=Image.BICUBIC, expand=False)
        img = ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.9, 1.1)))
        img = ImageEnhance.Color(img).enhance(float(rng.uniform(0.8, 1.2)))
        scale = rng.uniform(*face_px) / fw
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
        out.append(img.filter(ImageFilter.UnsharpMask(radius=2, percent=120, threshold=2)))
    return out


def with_sunglasses(image: Image.Image, eyes: tuple[tuple[int, int], ...], face_width: float) -> Image.Image:
    """Dark lenses over both eyes and a bridge between them, as sunglasses look to a camera."""
    from PIL import ImageDraw

    out = image.copy()
    draw = ImageDraw.Draw(out)
    rx, ry = 0.2 * face_width, 0.14 * face_width
    for x, y in eyes:
        draw.ellipse((x - rx, y - ry, x + rx, y + ry), fill=(15, 15, 20))
    draw.line((*eyes[0], *eyes[1]), fill=(15, 15, 20), width=max(2, round(face_width / 30)))
    return out


def portrait_set(folder: Path, count: int = 8, seed: int = 0) -> list[Path]:
    """``count`` well-framed portraits of the astronaut as JPEG files (all should be kept)."""
    return write_set(folder, portrait_variants(astronaut(), ASTRONAUT_FACE, count, seed=seed), prefix="portrait")


def face_cut_by_edge() -> Image.Image:
    """The astronaut framed too tight: the top of her face (brows and above) is outside the photo."""
    return astronaut().crop((100, 80, 360, 380)).resize((520, 600), Image.LANCZOS)


def review_set(folder: Path, good: int = 8, seed: int = 0) -> dict[str, str]:
    """A realistic upload: ``good`` clean portraits of the astronaut plus one of each problem.

    Returns file name → the reason code it should get ("" for a clean keep). The problem photos are derived from
    other shots than the good ones, so each has one problem (the duplicate copies ``portrait_00.jpg``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    shots = portrait_variants(astronaut(), ASTRONAUT_FACE, good + 6, seed=seed)
    expected = {p.name: "" for p in write_set(folder, shots[:good], prefix="portrait")}
    extra = shots[good:]
    files = {
        "blurry.jpg": (jpeg_bytes(blurred(extra[0], 6)), "blurry"),
        "dark.jpg": (jpeg_bytes(darkened(extra[1])), "underexposed"),
        "overexposed.jpg": (jpeg_bytes(overexposed(extra[2])), "overexposed"),
        "copy_of_00.jpg": (jpeg_bytes(shots[0].resize((shots[0].width * 3 // 4, shots[0].height * 3 // 4)), 70),
                           "duplicate"),
        "rotated_exif.jpg": (with_exif_rotation(extra[3], 6), ""),
        "grace_hopper.jpg": (jpeg_bytes(portrait_variants(grace_hopper(), GRACE_HOPPER_FACE, 1)[0]),
                             "different_person"),
        "two_people.jpg": (jpeg_bytes(side_by_side(extra[4], grace_hopper())), "multiple_faces"),
        "landscape.jpg": (jpeg_bytes(no_face()), "no_face"),
        "tiny_face.jpg": (jpeg_bytes(tiny_face_in_big_canvas(astronaut())), "face_too_small"),
        "cameraman.jpg": (jpeg_bytes(camera()), "head_turned"),
        "cut_off.jpg": (jpeg_bytes(face_cut_by_edge()), "face_cut_off"),
        "sunglasses.jpg": (jpeg_bytes(portrait_variants(
            with_sunglasses(astronaut(), ASTRONAUT_EYES, ASTRONAUT_FACE[2] - ASTRONAUT_FACE[0]), ASTRONAUT_FACE, 1,
            seed=seed + 7)[0]), "eyes_hidden"),
        "truncated.jpg": (truncated_jpeg(), "unreadable"),
        "notes.jpg": (text_named_jpg(), "unreadable"),
        "empty.jpg": (b"", "unreadable"),
        "bomb.png": (decompression_bomb_png(), "too_large"),
    }
    for name, (data, reason) in files.items():
        (folder / name).write_bytes(data)
        expected[name] = reason
    return expected
