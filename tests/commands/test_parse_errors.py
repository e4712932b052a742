"""parse_errors: jsonargparse messages cut to `key: problem` + one hint (the real messages are exercised through
`genlip fit` in test_lightning_cli.py; these are the shapes that need no parser)."""

from __future__ import annotations

from genlip_lit.commands.parse_errors import (
    MAX_LINES,
    OPTIMIZER_REFUSAL,
    is_optimizer_flag,
    short_parse_error,
)

NESTED_TYPE_ERROR = """Parser key "model":
  Does not validate against any of the Union subtypes
  Subtypes: [<class 'genlip_lit.modules.base.EncoderModule'>, <class 'NoneType'>]
  Errors:
    - Problem with given class_path 'genlip_lit.modules.GenLIPModule':
        Parser key "tokenizer":
          Does not validate against any of the Union subtypes
          Subtypes: [<class 'genlip_lit.data.tokenizer.Tokenizer'>, <class 'NoneType'>]
          Errors:
            - Problem with given class_path 'genlip_lit.data.tokenizer.HFTokenizer':
                Parser key "max_len":
                  Expected a <class 'int'>. Got value: long
            - Expected a <class 'NoneType'>
          Given value type: <class 'jsonargparse._util.NestedArg'>
          Given value: NestedArg(key='max_len', val='long')
    - Expected a <class 'NoneType'>
  Given value type: <class 'jsonargparse._util.NestedArg'>
  Given value: NestedArg(key='tokenizer.init_args.max_len', val='long')"""


def test_nested_key_path_is_rebuilt_through_two_class_paths():
    lines = short_parse_error(NESTED_TYPE_ERROR, command="fit").splitlines()
    assert lines[0] == "model.init_args.tokenizer.init_args.max_len: expected int, got 'long'"
    assert len(lines) == 2


def test_unknown_shapes_keep_their_first_lines_only():
    message = "\n".join(f"line {i}: something jsonargparse says" for i in range(40))
    out = short_parse_error(message)
    assert out.splitlines()[0] == "line 0: something jsonargparse says"
    assert len(out.splitlines()) <= MAX_LINES


def test_unrecognized_flags_get_the_closest_option():
    out = short_parse_error("unrecognized arguments: --trainer.max_stepz 3",
                            options=["--trainer.max_steps", "--trainer.max_epochs", "--config"])
    assert out.splitlines()[0] == "--trainer.max_stepz: not an option; did you mean '--trainer.max_steps'?"
    assert short_parse_error("Subcommand 'fit' does not accept option 'optimizer.class_path'") == OPTIMIZER_REFUSAL


def test_optimizer_flags():
    assert all(map(is_optimizer_flag, ["--optimizer", "--optimizer=Adam", "--optimizer.lr", "--lr_scheduler"]))
    assert not any(map(is_optimizer_flag, ["--optimizers", "--model.init_args.lr", "optimizer"]))
