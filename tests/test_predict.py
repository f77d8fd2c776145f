"""python -m mnist_ddp.predict: MNIST-style normalisation and predictions on image files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import run_in_process
from PIL import Image

from mnist_ddp.config.schema import DataConfig
from mnist_ddp.data.splits import load_splits
from mnist_ddp.predict import to_mnist


def centre_of_mass(pixels: torch.Tensor, side: int = 28) -> tuple[float, float]:
    image = pixels.reshape(side, side).double()
    yy, xx = torch.meshgrid(torch.arange(side).double(), torch.arange(side).double(), indexing="ij")
    return float((yy * image).sum() / image.sum()), float((xx * image).sum() / image.sum())


def test_an_off_centre_blob_is_fitted_and_centred_by_mass():
    canvas = np.zeros((60, 100), dtype=np.uint8)
    canvas[5:45, 70:90] = 255  # a tall bar near the top right of a wide image
    pixels = to_mnist(Image.fromarray(canvas))
    assert pixels.dtype == torch.uint8 and pixels.shape == (784,)
    cy, cx = centre_of_mass(pixels)
    assert abs(cy - 14) <= 0.6 and abs(cx - 14) <= 0.6  # where MNIST puts it
    rows = torch.nonzero(pixels.reshape(28, 28).amax(dim=1) > 64).flatten()
    assert rows.max() - rows.min() + 1 == 20  # the long side fills MNIST's 20-pixel box


def test_dark_on_light_gives_the_same_digit_as_light_on_dark():
    canvas = np.zeros((50, 40), dtype=np.uint8)
    canvas[10:40, 15:22] = 255
    canvas[10:14, 10:30] = 200
    light_on_dark = to_mnist(Image.fromarray(canvas))
    dark_on_light = to_mnist(Image.fromarray(255 - canvas))
    assert (light_on_dark.int() - dark_on_light.int()).abs().max() <= 2
    assert to_mnist(Image.fromarray(np.full((30, 30), 255, dtype=np.uint8))).sum() == 0  # blank page


@pytest.fixture(scope="module")
def mnist_model(real_mnist, tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    result = run_in_process("mnist_ddp.train", f"data.root={real_mnist}", "train.epochs=3", f"run.dir={root}", cwd=root)
    assert result.returncode == 0, result.stderr
    return root / "model.pt"


@pytest.fixture(scope="module")
def real_mnist(request):
    from conftest import real_mnist_dir

    root = real_mnist_dir()
    if root is None:
        pytest.skip("real MNIST not found: set MNIST_DDP_DATA to a folder with the four IDX files")
    return root


def image_files(digit: np.ndarray) -> dict[str, tuple[Image.Image, str]]:
    """One 28x28 uint8 digit in every mode and polarity a user's files come in: (image, file suffix)."""
    page = np.zeros((90, 160), dtype=np.uint8)
    page[20:76, 90:146] = np.asarray(Image.fromarray(digit).resize((56, 56), Image.BILINEAR))
    wide = digit.astype(np.uint16) * 257  # 16-bit, 0-65535
    unit = (digit / 255).astype(np.float32)  # float, 0-1
    faint = (digit.astype(np.float32) * 40 / 255).round().astype(np.uint8)  # brightest ink 40 of 255
    return {
        "plain": (Image.fromarray(digit), "png"),
        "inverted": (Image.fromarray(255 - digit), "png"),
        "large": (Image.fromarray(digit).resize((120, 120), Image.BICUBIC), "png"),
        "page": (Image.fromarray(255 - page), "jpg"),
        "16-bit": (Image.fromarray(wide), "png"),
        "16-bit dark on light": (Image.fromarray(65535 - wide), "png"),
        "float": (Image.fromarray(unit, mode="F"), "tiff"),
        "float dark on light": (Image.fromarray(1 - unit, mode="F"), "tiff"),
        "faint": (Image.fromarray(faint), "png"),
        "faint dark on light": (Image.fromarray(255 - faint), "png"),
        "1-bit": (Image.fromarray(digit > 100), "png"),
        "palette dark on light": (Image.fromarray(255 - digit).convert("P"), "png"),
        "rgb dark on light": (Image.fromarray(255 - digit).convert("RGB"), "jpg"),
    }


def write_variants(images: torch.Tensor, folder) -> dict[str, list[str]]:
    """Each test digit as an image file in every variant of :func:`image_files`."""
    variants: dict[str, list[str]] = {}
    for i, pixels in enumerate(images):
        for kind, (image, suffix) in image_files(pixels.reshape(28, 28).numpy()).items():
            path = folder / f"{i}-{kind.replace(' ', '-')}.{suffix}"
            image.save(path)
            variants.setdefault(kind, []).append(str(path))
    return variants


def test_every_mode_reads_on_its_own_scale():
    digit = np.zeros((28, 28), dtype=np.uint8)
    digit[4:24, 12:16] = 255
    expected = to_mnist(Image.fromarray(digit))
    for kind, (image, _) in image_files(digit).items():
        assert image.mode in {"L", "I;16", "F", "1", "P", "RGB"}
        if kind not in ("large", "page"):  # resampled: other edges
            assert (to_mnist(image).int() - expected.int()).abs().max() <= 3, kind


def predictions(stdout: str) -> dict[str, int]:
    return {line.split(": ")[0]: int(line.split(": ")[1].split()[0]) for line in stdout.splitlines() if ": " in line}


def test_predict_reads_test_digits_in_any_mode_polarity_and_size(mnist_model, real_mnist, tmp_path):
    data = load_splits(DataConfig(root=str(real_mnist), download=False), seed=0)
    images, labels = data.test_images[:20], data.test_labels[:20].tolist()
    variants = write_variants(images, tmp_path)
    files = [f for kind in variants.values() for f in kind]
    result = run_in_process("mnist_ddp.predict", f"checkpoint={mnist_model}", *files, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    predicted = predictions(result.stdout)
    for kind, names in variants.items():
        right = sum(predicted[name] == label for name, label in zip(names, labels, strict=True))
        assert right >= 19, (kind, right)  # the model itself scores ~97% on these
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith(variants["plain"][0]))
    probabilities = [float(p.split(": ")[1]) for p in line.split("(")[1].rstrip(")").split(", ")]
    assert len(probabilities) == 3 and probabilities == sorted(probabilities, reverse=True)


def test_unreadable_files_are_reported_and_the_rest_predicted(mnist_model, tmp_path):
    good = tmp_path / "good.png"
    digit = np.zeros((28, 28), dtype=np.uint8)
    digit[4:24, 12:16] = 255  # a stroke: a blank image is itself an error now
    Image.fromarray(digit).save(good)
    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    missing = tmp_path / "missing.png"
    animation = tmp_path / "animation.gif"  # only its first frame would be read
    Image.fromarray(digit).save(animation, save_all=True, append_images=[Image.fromarray(255 - digit)])
    nan = tmp_path / "nan.tiff"
    floats = digit.astype(np.float32) / 255
    floats[0, 0] = np.nan
    Image.fromarray(floats, mode="F").save(nan)
    huge = tmp_path / "huge.png"  # 98 KB of PNG that would decode to 88 megapixels
    Image.new("L", (9400, 9400)).save(huge, optimize=True)
    files = [missing, fake, animation, nan, huge, good]
    result = run_in_process("mnist_ddp.predict", f"checkpoint={mnist_model}", *map(str, files), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: {missing}: no such file",
        f"error: {fake}: not a readable image (UnidentifiedImageError)",
        f"error: {animation}: 2 frames (an animation or a multi-page file); give one digit per file",
        f"error: {nan}: 1 pixels are NaN or infinite; fix or re-export the image",
        f"error: {huge}: 9400x9400 pixels, more than the 16 megapixels predict reads (a digit needs far fewer);"
        " scale it down",
    ]
    assert result.stdout.startswith(f"{good}: ")
