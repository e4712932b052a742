"""jsonargparse's error messages, cut to the line a user needs: the key, the value or file, and what is wrong.

    short_parse_error(str(argument_error), command="fit")
    -> "model.init_args.no_such_knob: not an option of genlip_lit.modules.GenLIPModule (did you mean ...?)"

jsonargparse reports a bad value inside a class_path plug-in as a union error of 10-70 lines (every subtype it
tried, the value it was given, then usage). The culprit is always in there: the nested `Parser key "..."`
headers spell the key path, and the innermost message says what is wrong. This module rebuilds `key: problem`
from them and adds one hint line. Plain text in, plain text out (no Lightning, no jsonargparse import), so every
command's parser can use it; tests/commands/test_fit.py pins the messages of the installed jsonargparse.
"""

from __future__ import annotations

import difflib
import inspect
import re
import sys

MAX_LINES = 5

OPTIMIZER_REFUSAL = (
    "--optimizer/--lr_scheduler are not supported: the model builds AdamW with its own no-decay parameter groups "
    "and warmup + cosine schedule; set model.init_args.lr, min_lr, weight_decay, betas, warmup_ratio or "
    "warmup_steps instead"
)

# Lines of a jsonargparse union error that carry no information about the culprit.
_NOISE = (
    re.compile(r"^Does not validate against any of the Union subtypes"),
    re.compile(r"^Errors:$"),
    re.compile(r"^Given value type: "),
    re.compile(r"^Given value: "),
    re.compile(r"^Expected a <class 'NoneType'>"),
    re.compile(r"^Expected a path but .* either not accessible or invalid"),
    re.compile(r"^Not a valid subclass of "),
    re.compile(r"^Subclass types expect one of:"),
    re.compile(r"^- (a class path|a dict with class_path|a dict without class_path)"),
    re.compile(r"^tip: "),
    re.compile(r"^usage: "),
)
_KEY = re.compile(r'Parser key "([^"]+)":?')
_CLASS = re.compile(r"Problem with given class_path '([^']+)':?")
_NOT_ACCEPTED = re.compile(r"Option '([^']+)' is not accepted")
_NOT_ACCEPTED_TOP = re.compile(r"does not accept option '([^']+)'")  # a config-file key of the command
_UNRECOGNIZED = re.compile(r"unrecognized arguments: (\S+)")
_IMPORT_FAILURE = re.compile(r"has no attribute|No module named|Unable to import|not a subclass|cannot import")
_EXPECTED = re.compile(r"Expected a <class '([^']+)'>\. Got value: (.*)")
_TYPE = re.compile(r"<class '([^']+)'>")


def is_optimizer_flag(arg: str) -> bool:
    """`--optimizer`, `--optimizer=X`, `--optimizer.lr`, and the same for `--lr_scheduler`."""
    return re.match(r"^--(optimizer|lr_scheduler)([.=].*)?$", arg) is not None


def short_parse_error(message: str, command: str = "fit", options: list[str] | None = None) -> str:
    """At most MAX_LINES lines: `key: problem`, then a hint. Unknown shapes keep their first lines.

    `options`: the parser's option names (`--trainer.max_steps`, ...), to suggest the closest for a typo.
    """
    entries = _entries(message)
    informative = [e for e in entries if e.kind == "detail"]
    if not informative:
        return _first_lines(message)
    if any(e.kind in ("key", "class") for e in entries):
        leaf = max(informative, key=lambda e: (e.depth, e.index))  # the innermost complaint
    else:
        leaf = informative[0]  # a flat message: its headline
    path, class_paths, base = _ancestry(entries, leaf)
    key = ".".join(path)
    detail = leaf.text
    hint = f"`genlip {command} --help` lists the options; `--print_config` shows the merged config"

    unknown = _NOT_ACCEPTED.search(detail) or _NOT_ACCEPTED_TOP.search(detail)
    unrecognized = _UNRECOGNIZED.search(detail)
    if unrecognized:
        unknown_name = unrecognized.group(1)  # a flag: keeps its dashes
    elif unknown:
        unknown_name = unknown.group(unknown.lastindex or 1)
    else:
        unknown_name = None
    if unknown_name is not None:
        if re.match(r"^(--)?(optimizer|lr_scheduler)\b", unknown_name):
            return OPTIMIZER_REFUSAL
        owner = class_paths[-1] if class_paths else None
        full = f"{key}.{unknown_name}" if key else unknown_name
        where = f"not an option of {owner}" if owner else "not an option"
        if owner:
            suggestion = _suggest_argument(owner, unknown_name)
            hint = f"its options: genlip {command} --{_plugin_key(path)}.help {owner}"
        else:  # a flag is answered with a flag, a config-file key with a key
            prefix = "--" if unknown_name.startswith("--") else ""
            suggestion = _suggest_option(unknown_name.lstrip("-"), options, prefix)
        return _join(f"{full}: {where}{suggestion}", hint)

    if class_paths and _IMPORT_FAILURE.search(detail):
        plugin = _plugin_key(path)
        what = f"a subclass of {base}" if base else "a class"
        return _join(f"{plugin}: cannot import {class_paths[-1]!r} ({detail}){_suggest_class(class_paths[-1])}",
                     f"expected the import path of {what}")
    expected = _EXPECTED.search(detail)
    if expected:
        detail = f"expected {expected.group(1)}, got {expected.group(2)!r}"
    elif detail.startswith("Expected a "):
        detail = _expected_any(entries, leaf)
    detail = _TYPE.sub(r"\1", detail)
    return _join(f"{key}: {detail}" if key else detail, hint)


class _Entry:
    """One line of a jsonargparse message: its indentation depth, position, kind and value."""

    def __init__(self, index: int, depth: int, kind: str, text: str, value: str = "") -> None:
        self.index, self.depth, self.kind, self.text, self.value = index, depth, kind, text, value


def _entries(message: str) -> list[_Entry]:
    entries = []
    for index, raw in enumerate(message.strip().splitlines()):
        text = raw.strip()
        if not text:
            continue
        depth = len(raw) - len(raw.lstrip())
        if text.startswith("error: "):
            text = text[len("error: "):]
        if text.startswith("- "):
            depth, text = depth + 2, text[2:].strip()
        key, problem = _KEY.match(text), _CLASS.match(text)
        if key:
            entries.append(_Entry(index, depth, "key", text, key.group(1)))
            rest = text[key.end():].strip()
            if rest:  # `Parser key "config": File does not exist: ...`: the complaint sits below the key
                entries.append(_Entry(index, depth + 1, "detail", rest))
        elif problem:
            entries.append(_Entry(index, depth, "class", text, problem.group(1)))
        elif text.startswith("Subtypes: "):
            entries.append(_Entry(index, depth, "subtypes", text))
        elif any(p.search(text) for p in _NOISE):
            entries.append(_Entry(index, depth, "noise", text))
        else:
            entries.append(_Entry(index, depth, "detail", text))
    return entries


def _ancestry(entries: list[_Entry], leaf: _Entry) -> tuple[list[str], list[str], str | None]:
    """Key path (with `init_args` below each class), class paths and the innermost expected base class."""
    chain: list[_Entry] = []
    depth = leaf.depth
    for entry in reversed(entries[: entries.index(leaf)]):
        if entry.depth < depth and entry.kind in ("key", "class"):
            chain.append(entry)
            depth = entry.depth
    chain.reverse()
    path, class_paths = [], []
    for entry in chain:
        if entry.kind == "key":
            path.append(entry.value)
        else:
            class_paths.append(entry.value)
            path.append("init_args")
    base = None
    subtypes = [e for e in entries if e.kind == "subtypes" and e.index < leaf.index]
    if subtypes:
        names = [n for n in _TYPE.findall(subtypes[-1].text) if n != "NoneType"]
        base = names[0] if names else None
    return path, class_paths, base


def _expected_any(entries: list[_Entry], leaf: _Entry) -> str:
    """`got 'bogus', expected one of 64, 32, '16-mixed', ...` from a union's `Expected a ...` alternatives."""
    siblings = [e.text for e in entries if e.depth == leaf.depth and e.text.startswith("Expected a ")]
    alternatives: list[str] = []
    given = None
    for text in siblings:
        kind = text[len("Expected a "):].strip()
        inline = re.match(r"(.*)\. Got value: (.*)$", kind)  # a flat Literal: `Expected a typing.Literal[..]. Got value: x`
        if inline:
            kind, given = inline.group(1), inline.group(2)
        literal = re.match(r"typing\.Literal\[(.*)\]$", kind)
        alternatives += [v.strip() for v in literal.group(1).split(",")] if literal else [_TYPE.sub(r"\1", kind)]
    alternatives = [a for a in dict.fromkeys(alternatives) if a != "NoneType"]
    after = entries[entries.index(leaf):]
    given = next((e.text[len("Given value: "):] for e in after if e.text.startswith("Given value: ")), given)
    got = f"got {given!r}, " if given is not None else ""
    if len(alternatives) == 1:  # `int | None`: worded as a plain int's error
        return f"expected {alternatives[0]}" + (f", got {given!r}" if given is not None else "")
    return f"{got}expected one of {', '.join(alternatives)}"


def _join(*lines: str) -> str:
    return "\n".join(lines[:MAX_LINES])


def _first_lines(message: str) -> str:
    kept = [line for line in message.strip().splitlines()
            if line.strip() and not any(p.search(line.strip()) for p in _NOISE)]
    return "\n".join(kept[:MAX_LINES]) or message.strip()[:300]


def _plugin_key(path: list[str]) -> str:
    """The key of the plug-in whose class is named: [model, init_args, lr] -> model."""
    parts = list(path)
    while parts and parts[-1] != "init_args":
        parts.pop()
    while parts and parts[-1] == "init_args":
        parts.pop()
    return ".".join(parts) or ".".join(path) or "model"


def _suggest_argument(class_path: str, name: str) -> str:
    """`; did you mean 'lr'?` from the class's constructor arguments (a class jsonargparse already imported)."""
    cls = _loaded(class_path)
    if cls is None:
        return ""
    return _closest(name, _init_arguments(cls))


def _init_arguments(cls: type) -> list[str]:
    """Constructor arguments, following `**kwargs` up the class hierarchy as jsonargparse does (a module passes
    its optimizer arguments to the base class that defines them)."""
    names: list[str] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        try:
            params = inspect.signature(vars(klass)["__init__"]).parameters.values()
        except (TypeError, ValueError):
            break
        names += [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name != "self"]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names


def _suggest_option(name: str, options: list[str] | None, prefix: str) -> str:
    names = [o.lstrip("-") for o in options or [] if o.startswith("--")]
    return _closest(name, names, prefix=prefix) if names else ""


def _suggest_class(class_path: str) -> str:
    """`; did you mean 'genlip_lit.modules.GenLIPModule'?` when the module is loaded and has a close name."""
    module, _, attr = class_path.rpartition(".")
    loaded = sys.modules.get(module)
    if loaded is None:
        return ""
    names = [n for n in dir(loaded) if not n.startswith("_")]
    close = difflib.get_close_matches(attr, names, n=1, cutoff=0.6)
    return f"; did you mean '{module}.{close[0]}'?" if close else ""


def _closest(name: str, names: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    return f"; did you mean '{prefix}{close[0]}'?" if close else ""


def _loaded(class_path: str) -> type | None:
    module, _, attr = class_path.rpartition(".")
    return getattr(sys.modules.get(module), attr, None)
