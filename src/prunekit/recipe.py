"""Recipe files: a run's flags as a YAML mapping.

A key is a flag's long name without its dashes (`eval_data` or `eval-data`), a value what the flag takes:

    model: runs/base
    method: sparsegpt
    pattern: "2:4"
    ignore: [".*mlp.down_proj"]     # a repeatable flag: a list; a comma-separated one: a list or "a,b"
    skip_dense_eval: true           # a switch: true or false

`--recipe FILE` reads the recipe as if its flags were written on the command line before the others: the
parser's own rules (types, choices, switches) apply to them, and a flag given on the command line wins (a
repeatable one replaces the recipe's list). The values are read as text, like argv (YAML would turn `2:4` into
the number 124). A pattern given on the command line replaces the recipe's sparsity too (an N:M pattern implies
it). Where a run writes — output, overwrite, checkpoint_dir — is never a recipe's: a recipe can be
reused without overwriting anything.

Every saved model holds the `recipe.yaml` of its run (`dump`): `prunekit prune --recipe OUT/recipe.yaml
--output NEW` reproduces OUT's weights bit for bit.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

import yaml

from .errors import UsageError
from .version import __version__

#: where a run writes: said on the command line only, never in a recipe
WHERE = ("output", "overwrite", "checkpoint_dir", "recipe")
SWITCH_VALUES = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}
NULLS = ("", "~", "null", "Null", "NULL")


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """`parser.parse_args(argv)`, with the flags of the command's `--recipe` file (if any) put first."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    path = getattr(args, "recipe", None)
    if not path:
        return args
    sub = subparser(parser, args.command)
    given = {action.dest for action in sub._actions
             if isinstance(action, argparse._AppendAction) and getattr(args, action.dest) is not None}
    given |= decided_elsewhere(args)
    flags = to_argv(sub, read(path), path, skip=given)
    placeholders = [f"{action.option_strings[-1]}=-" for action in sub._actions if action.required]
    try:  # the recipe alone first, so that an error names the file it is in
        sub.parse_args([*flags, *placeholders])
    except UsageError as err:
        raise UsageError(f"recipe {path}: {err}") from None
    at = argv.index(args.command) + 1
    return parser.parse_args([*argv[:at], *flags, *argv[at:]])


def decided_elsewhere(args: argparse.Namespace) -> set[str]:
    """Recipe keys that a flag given on the command line decides: a pattern other than unstructured (N:M,
    mixed-N:M, structured) fixes the sparsity, so the recipe's `sparsity` (say 0.7 of an unstructured run) is
    dropped rather than reported as a conflict the user did not write."""
    from .patterns import Pattern

    text = str(getattr(args, "pattern", None) or "unstructured").strip().lower()
    if getattr(args, "sparsity", None) is not None:
        return set()
    try:
        decides = text == "structured" or Pattern.parse(text).is_nm
    except UsageError:  # an unknown pattern: the method's own check reports it
        decides = False
    return {"sparsity"} if decides else set()


def subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """The parser of one subcommand (`prune`)."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[command]


def read(path: str | Path) -> dict:
    """The recipe at `path`: {key: value} with every scalar as text; a UsageError for a file that is missing or
    is not a YAML mapping."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UsageError(f"recipe {path} is a folder: pass the YAML file in it, e.g. {path / 'recipe.yaml'}")
    try:
        recipe = yaml.load(path.read_text(encoding="utf-8"), Loader=yaml.BaseLoader)  # scalars stay text
    except FileNotFoundError:
        raise UsageError(f"recipe {path} not found: pass an existing YAML file (e.g. a saved model's "
                         "recipe.yaml)") from None
    except UnicodeDecodeError:
        raise UsageError(f"recipe {path} is not UTF-8 text: pass a YAML file") from None
    except OSError as err:
        raise UsageError(f"cannot read recipe {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UsageError(f"recipe {path} is not valid YAML ({getattr(err, 'problem', None) or 'syntax'}{where}): "
                         "fix it, one `flag: value` per line") from None
    if not isinstance(recipe, dict):
        found = "an empty file" if recipe is None else "a list" if isinstance(recipe, list) else "a single value"
        raise UsageError(f"recipe {path} must be a YAML mapping of flag names to values (e.g. `method: wanda`), "
                         f"not {found}")
    return recipe


def flags(sub: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """{recipe key: action} of a subcommand: every long flag but --help, dashes as underscores."""
    return {option[2:].replace("-", "_"): action for action in sub._actions for option in action.option_strings
            if option.startswith("--") and not isinstance(action, argparse._HelpAction)}


def to_argv(sub: argparse.ArgumentParser, recipe: dict, path, skip=()) -> list[str]:
    """The command-line flags that say what `recipe` says (`--key=value`: a value may start with a dash); the
    flags of `skip`'s dests are left out. An unknown key is a UsageError naming it and the key meant."""
    known, out, seen = flags(sub), [], {}
    command = sub.prog.split()[-1]
    for key, value in recipe.items():
        name = str(key).replace("-", "_")
        action = known.get(name)
        if action is None:
            close = difflib.get_close_matches(name, list(known), n=1)
            hint = f"did you mean {close[0]}?" if close else f"use a flag of `prunekit {command} --help`"
            raise UsageError(f"recipe {path}: unknown key {key!r}: {hint} (keys are long flag names without "
                             "the dashes)")
        if name in WHERE:
            raise UsageError(f"recipe {path}: {name} says where a run writes, not what it does: pass "
                             f"--{name.replace('_', '-')} on the command line and remove it from the recipe")
        if name in seen:
            raise UsageError(f"recipe {path}: {name} is given twice ({seen[name]!r} and {key!r}): keep one")
        seen[name] = key
        if action.dest in skip or _is_null(value):
            continue
        flag = f"--{name.replace('_', '-')}"
        if isinstance(value, dict):
            raise UsageError(f"recipe {path}: {name} takes a value, not a mapping: write `{name}: VALUE`")
        if action.nargs == 0:  # a switch
            switch = SWITCH_VALUES.get(value.lower()) if isinstance(value, str) else None
            if switch is None:
                raise UsageError(f"recipe {path}: {name} is a switch: write `{name}: true` or `{name}: false`, not "
                                 f"{value!r}")
            out += [flag] if switch else []
        elif isinstance(action, argparse._AppendAction):
            out += [f"{flag}={item}" for item in (value if isinstance(value, list) else [value])]
        else:  # a list of a comma-separated flag (eval_data: [pydoc, wikitext2]) is that flag's text
            out.append(f"{flag}={','.join(value) if isinstance(value, list) else value}")
    return out


def _is_null(value) -> bool:
    return value is None or (isinstance(value, str) and value in NULLS)


def dump(sub: argparse.ArgumentParser, values: dict) -> str:
    """recipe.yaml's text for a run whose effective settings are `values` ({dest: value}), keys in the parser's
    order: a switch as whether its flag is given, tuples as lists, anything else (a Pattern) as its text."""
    command = sub.prog.split()[-1]
    recipe = {}
    for name, action in flags(sub).items():
        if action.dest not in values or name in WHERE:
            continue
        value = values[action.dest]
        if action.nargs == 0:
            value = value == action.const  # --no-update (const False) is given when update is False
        elif isinstance(value, (list, tuple)):
            value = [str(item) for item in value]
        elif value is not None and not isinstance(value, (bool, int, float, str)):
            value = str(value)
        recipe[name] = value
    return (f"# prunekit {__version__}: `prunekit {command} --recipe recipe.yaml --output NEW` reproduces this "
            "run\n" + yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True))
