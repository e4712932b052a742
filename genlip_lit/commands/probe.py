"""`genlip probe`: linear and attentive probes of a checkpoint's frozen features on any labelled image set, beside
two baselines on the same images (raw pixels at the encoder's patch grid; the same architecture at random init).

    genlip probe --ckpt runs/quickstart --data path/to/imagefolder            # CLASS/*.jpg or train/ + val/
    genlip probe --ckpt runs/quickstart --data data/pets --output runs/probe  # labelled shards; + probe.md/csv/json
"""

from __future__ import annotations

import os
from typing import Any

from genlip_lit.commands.common import (
    add_ckpt,
    add_device,
    add_output,
    add_threads,
    at_least,
    command_parser,
    parse,
)
from genlip_lit.console.logs import counted_library_warnings
from genlip_lit.errors import GenLIPUserError


def build_parser() -> Any:
    from jsonargparse import ActionYesNo

    p = command_parser("probe", "Probe a checkpoint's frozen features on labelled images (with baselines).")
    add_ckpt(p)
    p.add_argument("--data", type=str, required=True, help="an ImageFolder (CLASS/*.jpg, or train/CLASS + "
                   "val/CLASS) or labelled shards from `genlip optimize --label-field/--classes` (train/, val/)")
    p.add_argument("--budget", type=int, default=5000, help="most training images")
    p.add_argument("--test-budget", type=int, default=2000, help="most test images")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--attentive-epochs", type=int | None, default=None, help="attentive probe epochs (null: "
                   "its default, 20)")
    p.add_argument("--baselines", action=ActionYesNo, default=True, help="also probe raw pixels and the "
                   "architecture at random init (--no_baselines: the encoder alone)")
    p.add_argument("--seed", type=int, default=0, help="the held-out split of an ImageFolder without val/, and "
                   "the random-init weights")
    add_device(p)
    add_threads(p)
    add_output(p, required=False, help="also write DIR/probe.md, probe.csv and probe.json (null: print only)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv)
    for flag, value in (("--budget", args.budget), ("--test-budget", args.test_budget),
                        ("--batch-size", args.batch_size)):
        at_least(flag, value, 1)
    from genlip_lit.storage import paths as storage

    if storage.is_remote(args.data):  # shards in object storage: train/ must be there (one line otherwise)
        if not storage.isfile(storage.join(args.data, "train", "index.json")):
            raise GenLIPUserError(f"--data {args.data}: no labelled shards there (no train/index.json; write them "
                                  "with `genlip optimize --output URL`)")
    elif not os.path.isdir(os.path.expanduser(args.data)):  # before the (slower) checkpoint load
        raise GenLIPUserError(f"--data {args.data}: no such directory (an ImageFolder, or labelled shards from "
                              "`genlip optimize`)")
    from genlip_lit.data.shard_check import check_shard_dir

    check_shard_dir(args.data)  # damaged shards: one line naming the file, before the checkpoint loads
    from genlip_lit.commands.common import load_module, torch_threads
    from genlip_lit.commands.output import check_output, claim_output

    if args.output:
        check_output(args.output, "probe", args.overwrite)
    from genlip_lit.eval.data import labelled_view
    from genlip_lit.eval.evaluations import probe_evaluation

    with torch_threads(args.threads), counted_library_warnings():  # PIL's warnings: one counted line
        module, preprocessing, _ = load_module(args.ckpt, args.device)
        view = labelled_view(args.data, preprocessing, module.device, seed=args.seed)
        result = probe_evaluation(module, view, budget=args.budget, test_budget=args.test_budget,
                                  batch_size=args.batch_size, attentive_epochs=args.attentive_epochs,
                                  baselines=args.baselines, seed=args.seed)
    print(f"probe of {args.ckpt} on {view.source}:")
    print(result.texts["probe/table"])
    if args.output:
        from genlip_lit.console.tables import fmt, write_table
        from genlip_lit.storage.paths import write_json

        claim_output(args.output, "probe", args.overwrite)
        header, raw = result.tables["probe/table"]
        shown = [[label, *(fmt(v, "pct", "-") for v in values)] for label, *values in raw]
        footer = result.texts["probe/table"].splitlines()[-1:]
        write_table(args.output, header, shown, raw, name="probe", footer=["", *footer])
        write_json(os.path.join(args.output, "probe.json"), {"checkpoint": args.ckpt, **result.details})
        print(f"wrote {os.path.join(args.output, 'probe.md')}, probe.csv and probe.json")
    return 0
