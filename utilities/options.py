"""Range-checked option types for argparse, and the checks built on them.

Every numeric option declares its valid range where it is declared, as its ``type=``::

    add("--eval_bs", default=None, type=at_least(1))        # integers >= 1
    add("--tv_split_perc", default=0.8, type=between(0.0, 1.0, open_low=True, open_high=True))
    add("--fc_lr", default=-1, type=greater_than(0.0, also=(-1,)))

argparse then refuses a bad value before anything runs (``argument --eval_bs: expected an
integer >= 1, got 0``), :func:`document_ranges` adds the range to ``--help``, and
:func:`check_saved_options` applies the same ranges to a saved ``config.json`` on resume.
NaN and infinity are never valid.
"""
from __future__ import annotations

import argparse
import math
from functools import partial
from typing import Any, Dict, Iterable, List, Optional, Tuple

from utilities.errors import UserError


class OptionParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``main.py: error: argument --bs: ...``)
    instead of the whole usage text followed by the error."""

    def error(self, message: str):
        command = f"python {self.prog}" if self.prog.endswith(".py") else self.prog
        self.exit(2, f"{self.prog}: error: {message} ({command} --help lists the options)\n")


class Range:
    """An argparse ``type=``: parses an int or float and checks it lies in a range."""

    def __init__(self, kind: type, low: Optional[float] = None, high: Optional[float] = None,
                 open_low: bool = False, open_high: bool = False, also: Tuple = ()) -> None:
        self.kind, self.low, self.high = kind, low, high
        self.open_low, self.open_high, self.also = open_low, open_high, tuple(also)
        self.__name__ = kind.__name__  # argparse names the type in some messages

    def describe(self) -> str:
        """E.g. 'an integer >= 1', 'a number in (0, 1)', '-1 or a number > 0'."""
        noun = "an integer" if self.kind is int else "a number"
        if self.low is not None and self.high is not None:
            text = (f"{noun} in {'(' if self.open_low else '['}{_show(self.low)}, "
                    f"{_show(self.high)}{')' if self.open_high else ']'}")
        elif self.low is not None:
            text = f"{noun} {'>' if self.open_low else '>='} {_show(self.low)}"
        elif self.high is not None:
            text = f"{noun} {'<' if self.open_high else '<='} {_show(self.high)}"
        else:
            text = f"{noun} (finite)" if self.kind is float else noun
        if self.also:
            text = " or ".join(_show(v) for v in self.also) + " or " + text
        return text

    def contains(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind is int and not isinstance(value, int):
            return False
        if value in self.also:
            return True
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.open_low and value == self.low)):
            return False
        if self.high is not None and (value > self.high or (self.open_high and value == self.high)):
            return False
        return True

    def __call__(self, text: str):
        try:
            value = self.kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {self.describe()}, got '{text}'") from None
        if not self.contains(value):
            raise argparse.ArgumentTypeError(f"expected {self.describe()}, got {text}")
        return value

    def __repr__(self) -> str:
        return f"Range({self.describe()})"


def _show(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def at_least(low: float, kind: Optional[type] = None, also: Tuple = ()) -> Range:
    """``low`` or more; an int bound gives an integer option unless ``kind`` says otherwise."""
    return Range(kind or type(low), low=low, also=also)


def greater_than(low: float, kind: Optional[type] = None, also: Tuple = ()) -> Range:
    """More than ``low`` (a float bound: a number option)."""
    return Range(kind or type(low), low=low, open_low=True, also=also)


def between(low: float, high: float, kind: Optional[type] = None, open_low: bool = False,
            open_high: bool = False) -> Range:
    return Range(kind or type(low), low=low, high=high, open_low=open_low, open_high=open_high)


positive_int = at_least(1)
non_negative_int = at_least(0)
positive_float = greater_than(0.0)
non_negative_float = at_least(0.0)


def torch_device(text: str) -> str:
    """An argparse ``type=`` for ``--device``: a string ``torch.device`` accepts, of type cpu or
    cuda (whether that CUDA device exists is checked when the device is chosen)."""
    import torch  # late: this module of option types needs torch for this check only

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got '{text}'") from None
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got '{text}' "
                                         f"(device type '{device.type}' is not supported)")
    return text


class Option:
    """One command-line option, declared next to the code that reads it: the arguments of
    ``argparse``'s ``add_argument``. Members of a registry list theirs in a class attribute
    ``options``; ``parameters.py`` collects them (:func:`add_declared`)::

        options = (Option("--loss_triplet_margin", default=0.2, type=non_negative_float,
                          help="triplet: margin m of max(0, d(a, p) - d(a, n) + m)."),)

    ``changes_experiment=False`` marks an option that places, paces or logs a run without
    changing what it trains or the figures it reports (see :func:`changes_experiment`).
    """

    def __init__(self, *names: str, changes_experiment: bool = True, **settings: Any) -> None:
        self.names, self.settings = names, settings
        self.changes_experiment = changes_experiment

    def add_to(self, group) -> argparse.Action:
        add = group.add_argument if self.changes_experiment else partial(bookkeeping, group)
        return add(*self.names, **self.settings)

    def __repr__(self) -> str:
        return f"Option({', '.join(self.names)})"


def bookkeeping(group, *names: str, **settings: Any) -> argparse.Action:
    """``group.add_argument`` for an option that does not change the experiment: where the run
    folder is, where the same data lies, what hardware ran it, how often it logs. Runs that
    differ only in such options are one setting (seed grouping), a resume may give them anew, a
    table row ignores them."""
    action = group.add_argument(*names, **settings)
    action.changes_experiment = False
    return action


def changes_experiment(action: argparse.Action) -> bool:
    """Whether an option changes what a run trains or reports (the default for every option)."""
    return getattr(action, "changes_experiment", True)


def add_declared(group, options: Iterable[Option]) -> None:
    """Add ``options`` to an argument group (or parser), each declaration once: a declaration
    shared by several members (e.g. inherited from a base class) is added the first time."""
    added = set()
    for option in options:
        if id(option) not in added:
            option.add_to(group)
            added.add(id(option))


def registry_options(registry) -> List[Option]:
    """The options declared by a registry's members (class attribute ``options``), members in
    name order."""
    return [option for name in registry.names()
            for option in getattr(registry.get(name), "options", ())]


def document_ranges(parser: argparse.ArgumentParser) -> None:
    """Append each ranged option's valid range to its ``--help`` text."""
    for action in parser._actions:
        if isinstance(action.type, Range):
            valid = f"Valid: {action.type.describe()}{' each' if action.nargs else ''}."
            action.help = f"{action.help} {valid}" if action.help else valid


def option_name(action: argparse.Action) -> str:
    """The long name an option is documented under (``--source``, not its alias)."""
    return next((s for s in action.option_strings if s.startswith("--")), action.dest)


def given_options(parser: argparse.ArgumentParser, argv: Optional[Iterable[str]]) -> Dict[str, Any]:
    """The options typed on the command line (dest -> value), defaults left out. ``argv`` must
    already have parsed without error with ``parser``."""
    import copy  # late: only main's option parsing needs it, once per run

    quiet = copy.deepcopy(parser)
    for action in quiet._actions:
        action.default = argparse.SUPPRESS
        action.required = False
    return vars(quiet.parse_args(None if argv is None else list(argv)))


class ConfigError(UserError, ValueError):
    """A damaged config.json; the message names the file and the key."""


def check_saved_options(parser: argparse.ArgumentParser, config: Any, path: str,
                        filled: Iterable[str] = ()) -> None:
    """Check a saved configuration against the parser's declarations: every option present,
    of its declared type, within its range, among its choices; options in ``filled`` (set once
    defaults are resolved) must not be null. Raises :class:`ConfigError` naming file and key."""
    filled = set(filled)
    if not isinstance(config, dict):
        raise ConfigError(f"'{path}' holds a JSON {type(config).__name__}, expected an object "
                          f"of options (is the file damaged?)")
    for action in parser._actions:
        if action.dest == "help" or action.default is argparse.SUPPRESS:
            continue
        key = action.dest
        if key not in config:
            raise ConfigError(f"'{path}' has no key '{key}' (option {option_name(action)}); the "
                              f"file is damaged or written by another version of main.py")
        problem = ("expected a value, not null" if config[key] is None and key in filled
                   else _saved_value_problem(action, config[key]))
        if problem:
            raise ConfigError(f"'{path}' key '{key}' (option {option_name(action)}): {problem}, "
                              f"got {config[key]!r}")


def _saved_value_problem(action: argparse.Action, value: Any) -> str:
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return "" if isinstance(value, bool) else "expected true or false"
    if action.nargs in ("+", "*"):
        if not isinstance(value, list) or (action.nargs == "+" and not value):
            return "expected a list"
        values = value
    elif isinstance(action.nargs, int) and action.nargs > 1:
        if not isinstance(value, list) or len(value) != action.nargs:
            return f"expected a list of {action.nargs} values"
        values = value
    else:
        values = [value]
    for item in values:
        if item is None:
            continue  # options filled in later (dataset defaults) may be saved unset
        if isinstance(action.type, Range):
            if not action.type.contains(item):
                return f"expected {action.type.describe()}"
        elif action.type in (str, torch_device) or action.choices:
            if not isinstance(item, str):
                return "expected a string"
        if action.choices and item not in action.choices:
            return f"expected one of {', '.join(map(str, action.choices))}"
    return ""
