"""models/arch_checks.py and the modules' own argument checks: bad `arch`, `arch_overrides`, `lr`, `min_lr` and
data `batch_size` are one-line GenLIPUserErrors naming the key (at 704228a: tracebacks or 76-80-line dumps)."""

from __future__ import annotations

import pytest

from genlip_lit.data.datamodule import GenLIPDataModule
from genlip_lit.data.tokenizer import OpenCLIPTokenizer
from genlip_lit.errors import GenLIPUserError
from genlip_lit.models.arch_checks import check_architecture
from genlip_lit.modules import CaptionerModule, ContrastiveModule, GenLIPModule


@pytest.mark.parametrize("fields, message", [
    ({"depth": "x"}, "model.arch_overrides.depth must be a positive integer, got 'x'"),
    ({"depth": -2}, "depth must be a positive integer"),
    ({"width": 0}, "width must be a positive integer"),
    ({"width": True}, "width must be a positive integer"),
    ({"norm_eps": -1}, "norm_eps must be a finite number > 0"),
    ({"norm_eps": float("nan")}, "norm_eps must be a finite number > 0"),
    ({"attn_mode": "sideways"}, "attn_mode must be one of"),
    ({"gated_attn": "yes"}, "gated_attn must be true or false"),
    ({"drop_path": 1.0}, r"drop_path must be a number in \[0, 1\)"),
    ({"num_registers": -1}, "num_registers must be an integer >= 0"),
    ({"mrope_section": [8, 8]}, "mrope_section must be 3 integers"),
    ({"head_dim": 0}, "head_dim must be a positive integer or null"),
])
def test_bad_architecture_fields_are_named(fields, message) -> None:
    with pytest.raises(GenLIPUserError, match=message):
        check_architecture(fields, "model.arch_overrides")
    check_architecture({"depth": 2, "norm_eps": 1e-5, "layer_scale_init": None, "mrope_section": [4, 6, 6]}, "x")


@pytest.mark.parametrize("cls", [GenLIPModule, ContrastiveModule, CaptionerModule])
def test_modules_refuse_bad_arch_and_learning_rates_in_one_line(cls) -> None:
    tok = OpenCLIPTokenizer(compact_corpus="synthetic")
    cases = [
        ({"arch": "nope"}, "unknown GenLIP preset 'nope'"),
        ({"arch": ["tiny"]}, "model.arch must be a preset name"),
        ({"arch_overrides": {"depth": "x"}}, "model.arch_overrides.depth must be a positive integer"),
        ({"arch_overrides": [1, 2]}, "model.arch_overrides must be a mapping"),
        ({"arch_overrides": {"colour": 1}}, r"unknown architecture key\(s\) \['colour'\]"),
        ({"lr": -1.0}, r"model.lr must be > 0, got -1.0"),
        ({"lr": 0.0}, r"model.lr must be > 0, got 0.0"),
        ({"lr": float("nan")}, r"model.lr must be > 0, got nan"),
        ({"min_lr": -1e-6}, r"model.min_lr must be >= 0"),
    ]
    for kwargs, message in cases:
        with pytest.raises(GenLIPUserError, match=message) as info:
            cls(tokenizer=tok, **kwargs)
        assert "\n" not in str(info.value)


def test_datamodule_refuses_bad_batch_sizes() -> None:
    for kwargs, message in (({"batch_size": 0}, "data.batch_size must be an integer >= 1, got 0"),
                            ({"batch_size": 2.5}, "data.batch_size must be an integer >= 1"),
                            ({"val_batch_size": -1}, "data.val_batch_size must be an integer >= 1"),
                            ({"num_workers": -1}, "data.num_workers must be an integer >= 0")):
        with pytest.raises(GenLIPUserError, match=message):
            GenLIPDataModule(synthetic={"num_train": 8}, **kwargs)
