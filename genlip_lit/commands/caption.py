"""`genlip caption`: one caption per image from a checkpoint (greedy by default).

    genlip caption --ckpt runs/quickstart/version_0/checkpoints/last.ckpt a.png b.jpg
    genlip caption --ckpt runs/quickstart scene.png --temperature 0.7 --top-p 0.9 --seed 1

Prints `path<TAB>caption` per image (with `--output DIR`, also into DIR/captions.tsv). Images are read before the
model is loaded, so a bad path fails fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from genlip_lit.commands.common import add_ckpt, add_device, add_output, add_threads, command_parser, parse
from genlip_lit.errors import GenLIPUserError


def build_parser() -> Any:
    p = command_parser("caption", "Print one caption per image (path<TAB>caption).")
    add_ckpt(p)
    p.add_argument("images", nargs="+", type=str, help="image files (any format Pillow reads)")
    p.add_argument("--max-new-tokens", type=int | None, default=None, help="caption length limit (null: the "
                   "model's own)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (the paper's setting)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass when temperature > 0")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (temperature > 0)")
    add_device(p)
    add_threads(p)
    add_output(p, required=False, help="also write DIR/captions.tsv (null: print only)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv)
    from genlip_lit.data.transforms import decode_image

    pictures = []
    for path in args.images:
        try:
            pictures.append(decode_image(Path(path).read_bytes()))
        except FileNotFoundError:
            raise GenLIPUserError(f"image file not found: {path}") from None
        except (OSError, ValueError) as err:
            raise GenLIPUserError(f"{path} is not a readable image ({err})") from None
    import torch

    from genlip_lit.commands.common import load_module, torch_threads

    with torch_threads(args.threads):
        module, preprocessing, _ = load_module(args.ckpt, args.device)
        if not module.is_generative:
            raise GenLIPUserError(f"checkpoint {args.ckpt} holds a {type(module).__name__}, which does not "
                                  "generate captions")
        transform = preprocessing.transform()
        pixels = torch.stack([transform(p) for p in pictures]).to(module.device)
        generator = torch.Generator(device=module.device).manual_seed(args.seed)
        captions = module.generate_captions(pixels, args.max_new_tokens, temperature=args.temperature,
                                            top_p=args.top_p, generator=generator)
    lines = [f"{path}\t{caption}" for path, caption in zip(args.images, captions)]
    print("\n".join(lines))
    if args.output:
        import os

        os.makedirs(args.output, exist_ok=True)
        with open(os.path.join(args.output, "captions.tsv"), "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
    return 0
