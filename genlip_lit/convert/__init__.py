"""Checkpoints of other GenLIP implementations in, the vision encoder out in timm's form.

    genlip import SRC --output DIR           # genlip_lit/commands/import_checkpoint.py

- `official`: the authors' `GenLIPModel` (Hugging Face layout: config.json + safetensors, Qwen tokenizer files).
- `open_clip`: open_clip's `NaFlexGenLip` (model config + safetensors, or a training checkpoint).
- `timm`: a GenLIP image tower as a timm `NaFlexVit` (`rope_type='mrope'`, `attn_gated`), for `genlip export`.

Every mapping is exact and complete: a key, shape or option without a counterpart is a `GenLIPUserError`
naming it, never a partial load. Parity with each implementation's own outputs is tested on the fixtures in
tests/fixtures/ (test_convert_official.py, test_convert_open_clip.py, test_convert_timm.py).
"""
