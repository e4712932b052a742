"""The evaluation library: what a number means. No argparse, no Lightning.

Data views (`data.py`) say what is evaluated; `registry.py` is where an evaluation is declared (one function plus
its registration: the callbacks, `genlip eval` and `genlip compare`'s columns come from it); `evaluations.py`
holds the six built-in ones the callbacks schedule and `genlip eval` runs once; the metrics live beside them
(`probes.py` + `features.py`, `readout.py`, `zero_shot.py`, `caption_metrics.py`, `sink.py`, `transfer.py` +
`real_images.py`), and `report.py` and `plots.py` write what they find (tables through `console/tables.py`, JSON
through `storage/paths.py`). Pipelines a single command runs (resolution sweeps, the LLM probe, scene captions,
comparison reports) live in `genlip_lit/studies/`. Commands, studies and callbacks call into it; it calls none of
them.
"""
