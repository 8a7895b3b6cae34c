"""Predict segmentation masks for arbitrary images with a trained DeepLab-v2 checkpoint.

    python stages/infer.py --checkpoint runs/<exp>/seg/best.pt --input IMAGE_OR_FOLDER --output DIR
                           [--scales 1.0 0.75 1.25] [--flip] [--crf] [--device cpu]

For every image (``.jpg``, ``.jpeg``, ``.png``, ``.bmp``) writes ``DIR/<name>.png``, the predicted
label map as a palette PNG of the input's size, and ``DIR/<name>_overlay.png``, the prediction
blended over the image. The checkpoint carries the architecture, class names and palette.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from rca.crf import dense_crf
from rca.data.base import read_image
from rca.data.transforms import eval_transform
from rca.engine.checkpoint import load_checkpoint
from rca.errors import add_debug_arg, run_cli
from rca.io import save_label_png, save_rgb_png
from rca.models.deeplab import build_deeplab
from rca.segment import predict_probs

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="train_seg checkpoint (best.pt or last.pt)")
    parser.add_argument("--input", required=True, help="an image file or a folder of images")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0], help="test-time scales (default 1.0)")
    parser.add_argument("--flip", action="store_true", help="add horizontal flips")
    parser.add_argument("--crf", action="store_true", help="dense-CRF post-processing (deeplab preset)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    add_debug_arg(parser)
    return parser.parse_args(argv)


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


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    checkpoint = load_checkpoint(args.checkpoint, kind="segmentation")
    model = build_deeplab(**checkpoint["model_args"]).to(device)
    model.load_state_dict(checkpoint["model"])
    model.eval()
    palette = np.asarray(checkpoint["palette"], dtype=np.uint8)
    to_tensor = eval_transform()
    output = Path(args.output)
    for path in tqdm(list_images(Path(args.input)), desc="infer"):
        rgb = read_image(path, fix="replace the file or take it out of --input")
        probs = predict_probs(model, to_tensor({"id": path.stem, "image": rgb})["image"], args.scales, args.flip)
        if args.crf:
            prediction = dense_crf(rgb, probs.cpu().numpy(), preset="deeplab").argmax(0)
        else:
            prediction = probs.argmax(0).cpu().numpy()
        save_label_png(output / f"{path.stem}.png", prediction, palette)
        overlay = (0.5 * rgb + 0.5 * palette[prediction]).astype(np.uint8)
        save_rgb_png(output / f"{path.stem}_overlay.png", overlay)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
