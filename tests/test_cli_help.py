"""Help that tells the truth: every argument of every subcommand has help, and every option's help states the default
it really has (the value the command runs with when the option is left out)."""

import argparse

import pytest

from vaebench import cli

FLAGS = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._HelpAction, argparse._VersionAction)
# the least each subcommand needs to parse: its required positionals
MINIMAL = {"train": ["some-model"], "compare": ["model-a", "model-b"]}


def subcommands() -> dict[str, argparse.ArgumentParser]:
    top = cli.parser()
    action = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def one_action_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help output of ``action`` alone, as ``format_help`` renders it (``%(default)s`` expanded), on one line."""
    formatter = parser._get_formatter()
    formatter.add_argument(action)
    return " ".join(formatter.format_help().split())


def test_every_subcommand_is_listed_with_help():
    top = cli.parser()
    action = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in action._choices_actions}
    assert set(helps) == set(action.choices)
    assert all(helps.values()), helps
    for name in action.choices:
        assert f"\n{name} " in top.description  # the module docstring's overview names every command, a line each


@pytest.mark.parametrize("command", sorted(subcommands()))
def test_every_argument_has_help(command):
    parser = subcommands()[command]
    parser.format_help()  # renders (a stray % in a help text would raise here)
    missing = [a.option_strings or a.dest for a in parser._actions if not a.help or a.help == argparse.SUPPRESS]
    assert not missing, f"{command}: no help for {missing}"


def untruthful(parser: argparse.ArgumentParser, effective: dict) -> list[str]:
    """The options of ``parser`` whose rendered help does not contain ``str`` of the value they take when left out
    (``effective``: the parsed namespace of a command line without them). Flags (store_true, help) and options
    without a value (None) are skipped; an option suppressed here takes the top level's default."""
    wrong = []
    for action in parser._actions:
        if not action.option_strings or isinstance(action, FLAGS):
            continue
        default = effective.get(action.dest) if action.default is argparse.SUPPRESS else action.default
        if default != effective.get(action.dest):
            wrong.append(
                f"{'/'.join(action.option_strings)}: declared default {default!r}, parses to "
                f"{effective.get(action.dest)!r}"
            )
        elif default is not None and str(default) not in one_action_help(parser, action):
            wrong.append(f"{'/'.join(action.option_strings)} (default {default!r}): {one_action_help(parser, action)}")
    return wrong


@pytest.mark.parametrize("command", sorted(subcommands()))
def test_every_option_states_its_real_default(command):
    effective = vars(cli.parser().parse_args([command, *MINIMAL.get(command, [])]))
    wrong = untruthful(subcommands()[command], effective)
    assert not wrong, f"{command}: help does not state the real default:\n" + "\n".join(wrong)


def test_the_check_catches_a_help_that_states_another_default():
    parser = argparse.ArgumentParser()
    parser.add_argument("--k", type=int, default=5000, help="samples (default 100)")  # a stale number
    parser.add_argument("--n", type=int, default=7, help="points (default %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="say less")
    wrong = untruthful(parser, vars(parser.parse_args([])))
    assert len(wrong) == 1 and wrong[0].startswith("--k (default 5000)")


def test_defaults_shown_in_the_rendered_help_of_each_subcommand():
    """The whole rendered help of eval and check carries their own K and test-point defaults."""
    helps = {name: " ".join(p.format_help().split()) for name, p in subcommands().items()}
    assert f"(default {cli.EVAL_DEFAULTS['k']})" in helps["eval"]
    assert f"(default {cli.CHECK_DEFAULTS['k']})" in helps["check"]
    assert f"(default {cli.CHECK_DEFAULTS['n_test']};" in helps["check"]
    assert "(default results" in helps["report"] and "(default results" in helps["compare"]
