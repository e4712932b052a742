"""The evaluation library: what a number means. No argparse, no Lightning.

Data views (`data.py`) say what is evaluated; `evaluations.py` holds the five evaluations the callbacks schedule
and `genlip eval` runs once; the metrics live beside them (`probes.py` + `features.py`, `readout.py`,
`zero_shot.py`, `captions.py` + `caption_metrics.py`, `sink.py`, `resolution.py`, `llm_probe.py`), and
`report.py`, `tables.py` and `plots.py` write what they find. Commands (`genlip_lit/commands/`) and callbacks
(`genlip_lit/callbacks/`) call into it; it calls neither.
"""
