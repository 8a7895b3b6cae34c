"""Predict segmentation masks for arbitrary images, or a dataset split, with a trained DeepLab-v2 checkpoint.

    python stages/infer.py --checkpoint runs/<exp>/seg/best.pt --input IMAGE_OR_FOLDER --output DIR
                           [--scales 1.0 0.75 1.25] [--flip] [--crf] [--device cpu]
    python stages/infer.py --checkpoint runs/voc12/seg/best.pt --split test [--root DIR] --output DIR

For every image (``.jpg``, ``.jpeg``, ``.png``, ``.bmp``) writes ``DIR/<name>.png``, the predicted
label map as a palette PNG of the input's size, and ``DIR/<name>_overlay.png``, the prediction
blended over the image. The checkpoint carries the architecture, class names and palette.

``--split`` predicts the images of a split of the dataset the checkpoint was trained on (its
config's ``data.name``, ``data.options`` and ``data.root``, or ``--root``), named by image id. The
split needs no masks or tags: VOC's ``test`` list gives the label PNGs its evaluation server takes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

from rca.cli import make_parser, parse_command_line
from rca.errors import CheckpointError, add_debug_arg, run_cli


def parse_args(argv=None) -> argparse.Namespace:
    parser = make_parser(__doc__)
    parser.add_argument("--checkpoint", required=True, help="train_seg checkpoint (best.pt or last.pt)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="an image file or a folder of images")
    source.add_argument("--split", help="a split of the checkpoint's dataset (e.g. test)")
    parser.add_argument("--root", default=None, help="dataset root for --split (default: the checkpoint's data.root)")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0], help="test-time scales (default 1.0)")
    parser.add_argument("--flip", action="store_true", help="add horizontal flips")
    parser.add_argument("--crf", action="store_true", help="dense-CRF post-processing (deeplab preset)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    add_debug_arg(parser)
    return parse_command_line(parser, argv)


if __name__ == "__main__":
    parse_args()  # --help and argument errors answer here, before the heavy imports below (rca/cli.py)

import numpy as np
import torch
from tqdm import tqdm

from rca.crf import dense_crf
from rca.data import build_dataset
from rca.data.base import read_image
from rca.data.transforms import eval_transform
from rca.engine.checkpoint import load_checkpoint, load_model_state
from rca.io import save_label_png, save_rgb_png
from rca.models.deeplab import build_deeplab
from rca.segment import predict_probs

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def list_images(path: Path) -> list[Path]:
    """The image files named by ``path`` (a file, or the images directly inside a folder)."""
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            return files
        raise FileNotFoundError(f"--input {path}: no {', '.join(IMAGE_SUFFIXES)} images in this folder")
    raise FileNotFoundError(f"--input {path} does not exist")


def images_to_predict(args, checkpoint: dict) -> tuple[int, Iterator[tuple[str, np.ndarray]]]:
    """The number of images to predict and an iterator of ``(name, (H, W, 3) uint8 RGB)`` over them:
    the files of ``--input`` (named by file stem) or the items of ``--split`` (named by id).

    Raises:
        FileNotFoundError: ``--input`` names no image; the dataset root or split list is missing.
        CheckpointError: ``--split`` with a checkpoint that records no config.
    """
    if args.input is not None:
        paths = list_images(Path(args.input))
        return len(paths), _read_files(paths)
    if "config" not in checkpoint:
        raise CheckpointError(f"{args.checkpoint} records no config (dataset name and root): use --input")
    data = checkpoint["config"]["data"]
    dataset = build_dataset(data["name"], args.root or data["root"], args.split, **data["options"])
    return len(dataset), _read_items(dataset)


def _read_files(paths: list[Path]) -> Iterator[tuple[str, np.ndarray]]:
    for path in paths:
        yield path.stem, read_image(path, fix="replace the file or take it out of --input")


def _read_items(dataset) -> Iterator[tuple[str, np.ndarray]]:
    for index in range(len(dataset)):
        item = dataset[index]  # "id" and "image"; "tags" and "mask" only where the split has them
        yield item["id"], item["image"]


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    checkpoint = load_checkpoint(args.checkpoint, kind="segmentation")
    model = build_deeplab(**checkpoint["model_args"]).to(device)
    load_model_state(model, checkpoint, args.checkpoint, fix="give a checkpoint written by this version")
    model.eval()
    palette = np.asarray(checkpoint["palette"], dtype=np.uint8)
    to_tensor = eval_transform()
    output = Path(args.output)
    count, images = images_to_predict(args, checkpoint)
    for name, rgb in tqdm(images, total=count, desc="infer"):
        probs = predict_probs(model, to_tensor({"id": name, "image": rgb})["image"], args.scales, args.flip)
        if args.crf:
            prediction = dense_crf(rgb, probs.cpu().numpy(), preset="deeplab").argmax(0)
        else:
            prediction = probs.argmax(0).cpu().numpy()
        save_label_png(output / f"{name}.png", prediction, palette)
        overlay = (0.5 * rgb + 0.5 * palette[prediction]).astype(np.uint8)
        save_rgb_png(output / f"{name}_overlay.png", overlay)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
