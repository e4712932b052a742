"""The evaluations genlip_lit knows, and the one place a new one is declared.

An evaluation is one function `fn(module, view, *, option=default, ...) -> EvalResult` plus its registration:

    from genlip_lit.eval.registry import Metric, evaluation

    @evaluation("bright", title="brightness", metrics=[Metric("mean", column="mean brightness", kind="num")])
    def brightness_evaluation(module, view, *, budget: int = 64, batch_size: int = 32) -> EvalResult:
        '''Mean pixel of the held-out images.

        Args:
            budget: held-out images read
            batch_size: images per forward pass
        '''

Everything else comes from that: the training callback (`genlip_lit.callbacks.Evaluate` with `evaluation:
bright`, or a named class made by `callbacks.evaluation.evaluation_callback`), its options (the function's
keyword-only parameters: defaults and types from the signature, one-line help from the docstring's `Args:`),
`genlip eval`'s choice (`evaluations: [bright]`), and the columns and curves of `genlip compare`'s table
(`Metric.column`, `Metric.curve`). Scalar tags are `PREFIX/KEY`: the prefix is the evaluation's name, or a
template over its options (`transfer_{dataset}`).

A registration may also say which data it reads when that is not the trainer's held-out split (`view`: e.g. an
ImageFolder, a real image set), how much it reads (`reads` / `plan`, for progress lines), how to check its options
(`check`), and which parameter takes back the baseline rows of an earlier run (`carries`: rows that do not change
while the encoder trains, e.g. raw pixels and random init, computed at the first run and reused).
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from genlip_lit.errors import GenLIPUserError
from genlip_lit.eval.result import EvalResult

KINDS = ("pct", "num")  # how a comparison-table cell shows a value: 91.2% or 0.91


@dataclass(frozen=True)
class Metric:
    """A scalar an evaluation reports (`PREFIX/key`), and where it shows beyond the loggers."""

    key: str
    column: str | None = None  # its title in `genlip compare`'s table (None: not a column)
    kind: str = "pct"  # "pct" or "num" (see KINDS)
    curve: str | None = None  # the title of its panel in `genlip compare`'s curves.png (None: no panel)
    headline: bool = True  # shown in the closing progress line of a run
    # in every result it does not skip, at its default options (NaN where it does not apply); False: only on some
    # data (e.g. a baseline that needs training captions)
    always: bool = True

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Metric {self.key!r}: kind must be one of {KINDS}, got {self.kind!r}")


@dataclass(frozen=True)
class Option:
    """One keyword-only parameter of an evaluation function."""

    name: str
    default: Any
    annotation: Any  # the resolved type (jsonargparse checks YAML values against it)
    help: str


@dataclass(frozen=True)
class Evaluation:
    """A registered evaluation: its function and everything the callbacks, `genlip eval` and the comparison
    table need to know about it."""

    name: str
    function: Callable[..., EvalResult]
    title: str
    metrics: tuple[Metric, ...]
    options: dict[str, Option]
    summary: str  # the first paragraph of the function's docstring
    prefix: str = ""  # tag prefix template over the options; "" = the name
    reads: tuple[tuple[str, str], ...] = (("val", "budget"),)  # (split, option capping it), read in this order
    then: str = ""  # what the evaluation does once it has read its data (a progress line)
    view: Callable[[Any, dict[str, Any]], Any] | None = None  # (trainer's view, options) -> the view it reads
    plan: Callable[[Any, dict[str, Any]], tuple[str, int, int, str]] | None = None  # overrides `reads`
    check: Callable[[dict[str, Any]], None] | None = None  # raises ValueError on options it cannot take
    carries: str | None = None  # parameter that takes an earlier result's details["baselines"]
    key: tuple[str, ...] = ()  # options that tell two scheduled instances apart (checkpointed state)
    defaults: dict[str, Any] = field(default_factory=dict)

    def tag_prefix(self, options: dict[str, Any] | None = None) -> str:
        return (self.prefix or self.name).format(**{**self.defaults, **(options or {})})

    def tags(self, options: dict[str, Any] | None = None) -> list[str]:
        """The scalar tags it always reports (in every result it does not skip, at its default options)."""
        prefix = self.tag_prefix(options)
        return [f"{prefix}/{m.key}" for m in self.metrics if m.always]

    def headline(self, options: dict[str, Any] | None = None) -> tuple[str, ...]:
        prefix = self.tag_prefix(options)
        return tuple(f"{prefix}/{m.key}" for m in self.metrics if m.headline)

    def resolve(self, given: dict[str, Any] | None, where: str = "") -> dict[str, Any]:
        """Every option's value: `given` over the defaults. An unknown name is refused naming the known ones;
        the `check` hook's ValueError (a value it cannot take) is passed on."""
        given = dict(given or {})
        unknown = [k for k in given if k not in self.options]
        if unknown:
            close = difflib.get_close_matches(unknown[0], list(self.options), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise GenLIPUserError(f"{where or self.name}: unknown option {unknown[0]!r}{hint}; the options of "
                                  f"{self.name!r} are {', '.join(self.options) or 'none'}")
        options = {**self.defaults, **given}
        if self.check is not None:
            self.check(options)
        return options

    def data(self, view: Any, options: dict[str, Any]) -> Any:
        """The view this evaluation reads, given the trainer's (or `genlip eval`'s) view."""
        return self.view(view, options) if self.view is not None else view

    def run(self, module: Any, view: Any, options: dict[str, Any], baselines: dict[str, Any] | None = None
            ) -> EvalResult:
        """Call the function on `view` as it is (callers swap it with `data` first, so that what it reads is
        counted); `baselines`: an earlier result's details["baselines"], when the registration carries them."""
        kwargs = dict(options)
        if self.carries is not None:
            kwargs[self.carries] = baselines
        return self.function(module, view, **kwargs)


_REGISTRY: dict[str, Evaluation] = {}


def evaluation(
    name: str,
    *,
    title: str | None = None,
    metrics: Iterable[Metric] = (),
    prefix: str = "",
    reads: Iterable[tuple[str, str]] | None = None,
    then: str = "",
    view: Callable[[Any, dict[str, Any]], Any] | None = None,
    plan: Callable[[Any, dict[str, Any]], tuple[str, int, int, str]] | None = None,
    check: Callable[[dict[str, Any]], None] | None = None,
    carries: str | None = None,
    key: Iterable[str] | None = None,
) -> Callable[[Callable[..., EvalResult]], Callable[..., EvalResult]]:
    """Register the decorated function as evaluation `name` (see the module docstring); returns it unchanged.

    `reads` defaults to the val split capped by `budget` (nothing read ahead of time when the function has no
    `budget`); `key` to `("budget",)` where it has one. Registering a name again replaces the entry (a reloaded
    module), so names are unique."""

    def register(fn: Callable[..., EvalResult]) -> Callable[..., EvalResult]:
        options = options_of(fn, exclude=(carries,) if carries else ())
        if carries and carries not in inspect.signature(fn).parameters:
            raise ValueError(f"evaluation {name!r}: carries={carries!r} is not a parameter of {fn.__qualname__}")
        has_budget = "budget" in options
        entry = Evaluation(
            name=name, function=fn, title=title or name.replace("_", " "), metrics=tuple(metrics),
            options=options, summary=summary_of(fn), prefix=prefix,
            reads=tuple(reads) if reads is not None else ((("val", "budget"),) if has_budget else ()),
            then=then, view=view, plan=plan, check=check, carries=carries,
            key=tuple(key) if key is not None else (("budget",) if has_budget else ()),
            defaults={k: o.default for k, o in options.items()},
        )
        _REGISTRY[name] = entry
        return fn

    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"evaluation name {name!r}: lower-case letters, digits and _ (it prefixes scalar tags)")
    return register


def registered() -> list[Evaluation]:
    """Every registered evaluation, in registration order (the built-in ones register when
    `genlip_lit.eval.evaluations` is imported)."""
    return list(_REGISTRY.values())


def unregister(name: str) -> None:
    """Forget evaluation `name` (a plug-in a test registered for its own run); unknown names are ignored."""
    _REGISTRY.pop(name, None)


def get(name: str, where: str = "") -> Evaluation:
    """The evaluation registered as `name`; anything else is refused in one line naming the known ones."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    close = difflib.get_close_matches(name, list(_REGISTRY), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise GenLIPUserError(f"{where or 'evaluation'}: no evaluation named {name!r}{hint}; registered: "
                          f"{', '.join(_REGISTRY) or 'none'}")


def metric_columns() -> list[tuple[str, str, str]]:
    """(column title, scalar tag, kind) of every registered metric that is a comparison-table column, with each
    evaluation's default options (e.g. transfer_digits)."""
    return [(m.column, f"{ev.tag_prefix()}/{m.key}", m.kind) for ev in registered() for m in ev.metrics if m.column]


def curve_panels() -> list[tuple[str, str]]:
    """(scalar tag, panel title) of every registered metric drawn in the comparison's curves."""
    return [(f"{ev.tag_prefix()}/{m.key}", m.curve) for ev in registered() for m in ev.metrics if m.curve]


# ------------------------------------------------------------------------------------- options from the function
def options_of(fn: Callable[..., Any], exclude: Iterable[str] = ()) -> dict[str, Option]:
    """The keyword-only parameters of `fn` (after `module, view`) as options: default, resolved type, and the
    one-line help its docstring's `Args:` section gives (an undocumented option is refused: the help is all a
    YAML user sees)."""
    helps = arg_help(fn.__doc__ or "")
    out = {}
    for p in inspect.signature(fn, eval_str=True).parameters.values():
        if p.kind is not p.KEYWORD_ONLY or p.name in exclude:
            continue
        if p.default is p.empty:
            raise ValueError(f"{fn.__qualname__}: option {p.name!r} needs a default")
        if p.name not in helps:
            raise ValueError(f"{fn.__qualname__}: document option {p.name!r} in the docstring's Args: section")
        out[p.name] = Option(p.name, p.default, p.annotation if p.annotation is not p.empty else Any, helps[p.name])
    return out


def arg_help(doc: str) -> dict[str, str]:
    """{name: help} from a Google-style `Args:` section (continuation lines joined)."""
    lines = inspect.cleandoc(doc).splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Args:")
    except StopIteration:
        return {}
    helps: dict[str, str] = {}
    current = None
    indent = None
    for line in lines[start + 1:]:
        if not line.strip():
            break
        width = len(line) - len(line.lstrip())
        indent = width if indent is None else indent
        match = re.fullmatch(r"\s*(\w+)(?:\s*\([^)]*\))?:\s*(.*)", line)
        if width == indent and match:
            current = match.group(1)
            helps[current] = match.group(2).strip()
        elif width > indent and current:
            helps[current] += " " + line.strip()
        else:
            break
    return helps


def summary_of(fn: Callable[..., Any]) -> str:
    """The first paragraph of `fn`'s docstring, on one line."""
    doc = inspect.cleandoc(fn.__doc__ or "")
    return " ".join(doc.split("\n\n", 1)[0].split())
