"""Predict the digit in image files: ``python -m mnist_ddp.predict checkpoint=PATH IMAGE...``.

Any size, white-on-black or black-on-white, any image mode Pillow reads (8-bit, 16-bit, float,
1-bit, palette, with or without alpha): each image is turned into what MNIST holds (a white
digit on black, its ink stretched to the full 0-255 range, fitted into a 20x20 box and centred
by mass in 28x28) before the model sees it; ink drawn on a transparent background counts.
Prints the predicted digit and the top-3 probabilities per file. An unreadable, oversized or
blank image gets a one-line error; the others are still predicted, and the exit code is then 2.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mnist_ddp.base.console import say
from mnist_ddp.base.errors import EXIT_INPUT, EXIT_INTERRUPTED, InputError, JobError, first_line
from mnist_ddp.config.loading import load_config
from mnist_ddp.data.splits import normalize_pixels
from mnist_ddp.model.mlp import MLP, build_model
from mnist_ddp.parallel.entry import report_unexpected
from mnist_ddp.state.weights import check_weights_fit, load_weights_into, model_settings, read_weights

# Pillow's modes whose pixels are one number on a scale other than 0-255: 16-bit, 32-bit, float.
# Larger images are refused before decoding: 16 megapixels is a 4096x4096 scan.
MAX_PIXELS = 16 * 2**20
WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
# Ink must stand out from the background by this share of the image's full scale; less is noise
# on a blank page (a JPEG's ringing), not a digit. Faint ink above it is stretched, as MNIST's was.
MIN_CONTRAST = 0.02


def grayscale(image: Image.Image) -> tuple[np.ndarray, float]:
    """The image as gray floats on its own scale, and that scale's full value (255 for 8-bit
    images, 65535 for 16-bit ones, 1 for floats in 0-1): nothing clipped or rounded away.

    A transparent background becomes one that contrasts with the strokes (white behind dark
    strokes, black behind light ones), so ink drawn on alpha shows."""
    if image.mode in WIDE_MODES:
        gray = np.asarray(image, dtype=np.float64)
        if not np.isfinite(gray).all():
            raise InputError(
                f"{int((~np.isfinite(gray)).sum())} pixels are NaN or infinite; fix or re-export the image"
            )
        if image.mode == "F":
            return gray, 1.0 if gray.max() <= 1 else float(gray.max() - min(gray.min(), 0))
        return gray, 65535.0 if image.mode.startswith("I;16") or gray.max() > 255 else 255.0
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"), dtype=np.float64) / 255
        if alpha.min() < 1:
            gray = np.asarray(rgba.convert("L"), dtype=np.float64)
            opaque = alpha > 0.5
            background = 0.0 if opaque.any() and gray[opaque].mean() >= 128 else 255.0
            return gray * alpha + background * (1 - alpha), 255.0
    return np.asarray(image.convert("L"), dtype=np.float64), 255.0


def ink_of(image: Image.Image) -> np.ndarray:
    """How far each pixel stands out from the background, stretched so the strongest ink is 255
    (MNIST's digits span the full range, however faint the scan); all zeros when nothing does."""
    gray, full_scale = grayscale(image)
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    background = float(np.median(border))
    # A light background (dark strokes) lies nearer the image's top than its bottom.
    light = background - gray.min() > gray.max() - background
    ink = np.clip(background - gray if light else gray - background, 0, None)
    if ink.max() < MIN_CONTRAST * full_scale:
        return np.zeros_like(ink)
    return ink * (255 / ink.max())


def to_mnist(image: Image.Image, side: int = 28) -> torch.Tensor:
    """A uint8 (side*side,) tensor laid out as MNIST's digits are (all zeros for an image with no ink)."""
    gray = ink_of(image)
    ink = gray > 0.1 * 255
    if not ink.any():
        return torch.zeros(side * side, dtype=torch.uint8)
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    digit = gray[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    box = round(side * 20 / 28)
    scale = box / max(digit.shape)
    size = (max(1, round(digit.shape[1] * scale)), max(1, round(digit.shape[0] * scale)))
    resized = np.asarray(Image.fromarray(digit.astype(np.uint8)).resize(size, Image.LANCZOS), dtype=np.float32)
    total = resized.sum()
    yy, xx = np.indices(resized.shape)
    cy, cx = (yy * resized).sum() / total, (xx * resized).sum() / total
    top = int(np.clip(round(side / 2 - cy), 0, side - resized.shape[0]))
    left = int(np.clip(round(side / 2 - cx), 0, side - resized.shape[1]))
    canvas = np.zeros((side, side), dtype=np.float32)
    canvas[top : top + resized.shape[0], left : left + resized.shape[1]] = resized
    return torch.from_numpy(np.clip(canvas, 0, 255).astype(np.uint8)).flatten()


def load_model(path: Path) -> MLP:
    """The model saved at ``path``, in eval mode on the CPU."""
    saved = read_weights(path)
    cfg = load_config(base=model_settings(saved.config))
    check_weights_fit(lambda: build_model(cfg, saved.in_features), saved.state_dict, f"checkpoint={path}")
    model = build_model(cfg, saved.in_features)
    load_weights_into(model, saved.state_dict, f"checkpoint={path}")
    return model.eval()


def check_one_still_image(image: Image.Image) -> None:
    """Refuse, before decoding, what would cost far more than a digit needs or lose part of the
    file: an image over MAX_PIXELS (a few KB of PNG can decode to gigabytes), and an animation or
    multi-page file (only its first frame would be read)."""
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise InputError(
            f"{width}x{height} pixels, more than the {MAX_PIXELS // 2**20} megapixels predict reads (a digit needs"
            " far fewer); scale it down"
        )
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        raise InputError(f"{frames} frames (an animation or a multi-page file); give one digit per file")


def read_digit(name: str, side: int) -> torch.Tensor:
    """The image file as an MNIST digit; an unreadable, oversized or blank image is an InputError."""
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that: refuse those too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(name) as image:
                check_one_still_image(image)
                pixels = to_mnist(image, side)
    except FileNotFoundError:
        raise InputError("no such file") from None
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputError(f"too large to read safely ({first_line(e)})") from None
    except Exception as e:  # Pillow raises many types for damaged files; none may stop the other files
        raise InputError(f"not a readable image ({type(e).__name__})") from None
    if not pixels.any():
        raise InputError("no ink: the image is one flat colour, there is no digit to read")
    return pixels


def predict_files(model: MLP, files: list[str]) -> int:
    """Print a prediction per readable file and an error per unreadable one; the number of errors."""
    side = round(model.layers[0].in_features ** 0.5)
    errors = 0
    for name in files:
        try:
            pixels = read_digit(name, side)
        except InputError as e:
            say(f"error: {name}: {e}", sys.stderr)
            errors += 1
            continue
        with torch.no_grad():
            probabilities = model(normalize_pixels(pixels[None])).softmax(dim=1)[0]
        top = probabilities.topk(3)
        ranked = ", ".join(f"{int(d)}: {p:.3f}" for p, d in zip(top.values, top.indices, strict=True))
        say(f"{name}: {int(top.indices[0])}  ({ranked})")
    return errors


USAGE = "usage: python -m mnist_ddp.predict checkpoint=PATH IMAGE [IMAGE ...]"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: 0 when every file was predicted, 2 otherwise."""
    args = argv if argv is not None else sys.argv[1:]
    if any(a in ("-h", "--help") for a in args):
        say(__doc__ or USAGE)  # python -OO drops docstrings
        return 0
    checkpoints = [a.partition("=")[2] for a in args if a.startswith("checkpoint=")]
    files = [a for a in args if not a.startswith("checkpoint=")]
    try:
        if len(checkpoints) != 1 or not files:
            raise InputError(USAGE)
        model = load_model(Path(checkpoints[0]))
        return EXIT_INPUT if predict_files(model, files) else 0
    except JobError as e:
        say(f"error: {e}", sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as e:
        return report_unexpected(e, "predict")


if __name__ == "__main__":
    sys.exit(main())
