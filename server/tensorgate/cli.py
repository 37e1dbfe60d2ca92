"""Command line: `tensorgate serve --model-repository DIR ...`, also `python -m tensorgate`."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

from tensorgate import __version__
from tensorgate.settings import HELP, Settings, build_settings
from tensorgate.triton_flags import translate


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tensorgate", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve a model repository")
    for f in dataclasses.fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        kind = str(f.type)
        help_text = HELP[f.name] + f" (env TENSORGATE_{f.name.upper()})"
        if "bool" in kind:
            serve.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        elif "list" in kind:
            serve.add_argument(flag, action="append", default=None, help=help_text)
        else:
            convert = {"int": int, "float": float}.get(kind, str)
            serve.add_argument(flag, type=convert, default=None, help=help_text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `tensorgate` command."""
    given = list(sys.argv[1:] if argv is None else argv)
    if given[:1] == ["serve"]:
        try:
            given = ["serve", *translate(given[1:])]
        except ValueError as exc:
            print(f"tensorgate: {exc}", file=sys.stderr)
            return 2
    args = _parser().parse_args(given)
    overrides = {k: v for k, v in vars(args).items() if k != "command"}
    try:
        settings = build_settings(overrides)
    except (ValueError, OSError) as exc:
        print(f"tensorgate: {exc}", file=sys.stderr)
        return 2
    from tensorgate.app import run  # grpc and the backends load only when serving

    return run(settings)
