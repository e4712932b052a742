"""Checkpoints of other GenLIP implementations in: one file per import format, registered in formats.py.

    genlip import SRC --output DIR           # genlip_lit/commands/import_checkpoint.py

- formats.py: the `ImportFormat` interface (detect, model config, tokenizer, text settings, preprocessing,
  convert) and the registry `genlip import` loops over; every module of this package is imported once to fill
  it, so a new format is one new file here (or a `register_format` call from outside the package).
- official.py: the authors' `GenLIPModel` (Hugging Face layout: config.json + safetensors, Qwen tokenizer files).
- open_clip.py: open_clip's `NaFlexGenLip` (model config + safetensors, or a training checkpoint).
- common.py: what every format shares (safe reading of SRC, the strict `StateMapper`, writing genlip.ckpt).

The vision encoder goes out in timm's form from genlip_lit/encoders/timm.py (`genlip export`).
Every mapping is exact and complete: a key, shape or option without a counterpart is a `GenLIPUserError`
naming it, never a partial load. Parity with each implementation's own outputs is tested on the fixtures in
tests/fixtures/ (tests/convert/test_official.py, test_open_clip.py); every registered format runs through the
same checks in tests/convert/test_formats.py.
"""
