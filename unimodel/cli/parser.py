"""The command line's argument parser: every command, its flags, and the commands plugins add."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from unimodel.cli.common import _kinds
from unimodel.cli.inspect import cmd_doctor, cmd_info, cmd_list
from unimodel.cli.run import _add_device_flags, cmd_convert, cmd_distill, cmd_eval, cmd_generate, cmd_train
from unimodel.errors import PluginError


# ------------------------------------------------------------------ parser
def _strategy_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--strategy",
        metavar="NAME",
        help="a decoding strategy (see `unimodel list --kind decoding`); default: the one the model's objective names",
    )
    p.add_argument(
        "--option",
        action="append",
        metavar="KEY=VALUE",
        help="an option of the strategy, e.g. --option iterations=4 (repeatable; values are TOML: 4, true, [3, 4])",
    )


def build_parser() -> argparse.ArgumentParser:
    from unimodel import __version__

    parser = argparse.ArgumentParser(
        prog="unimodel",
        description="One modeling API over the transformer family. Every model and objective is a plugin.",
    )
    parser.add_argument("--version", action="version", version=f"unimodel {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    kinds = _kinds()
    # --debug is accepted after the command too; SUPPRESS keeps the global value unless it is given there
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks for errors")

    p = sub.add_parser("list", parents=[common], help="list registered components by kind")
    p.add_argument(
        "pattern",
        nargs="?",
        metavar="PATTERN",
        help="shell glob on the name ('gpt2*'); a plain word matches anywhere in the name",
    )
    p.add_argument("--kind", choices=kinds, help="only this kind")
    p.add_argument(
        "--plugin",
        action="append",
        metavar="NAME",
        help="only components of this plugin (its entry-point name, as `unimodel doctor` shows it; repeatable)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser(
        "info", parents=[common], help="details of one component: config fields, capabilities, compatible objectives"
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--kind", choices=kinds, help="which kind NAME is (needed when a name is several kinds)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "train", parents=[common], help="train from a TOML config ([model], [objective], [data], [train])"
    )
    p.add_argument("config", metavar="CONFIG", help="path to a .toml or .json run config")
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value, e.g. --set train.max_steps=100 (repeatable)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "generate", parents=[common], help="generate text from a checkpoint, streaming tokens as they come"
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    p.add_argument("--prompt", required=True, metavar="TEXT")
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        metavar="N",
        help="tokens to generate (default: the checkpoint's generation defaults, else 50)",
    )
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature (default 1.0)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument(
        "--num-beams",
        type=int,
        default=None,
        help="beam search when > 1 (output printed at the end); default: the checkpoint's generation defaults, else 1",
    )
    p.add_argument(
        "--greedy",
        action="store_true",
        help="argmax decoding instead of sampling (the default for a model trained on pairs, e.g. seq2seq, "
        "unless --temperature, --top-k, --top-p or --seed asks for sampling)",
    )
    p.add_argument("--seed", type=int, default=None, help="make sampling reproducible")
    _strategy_arguments(p)
    _add_device_flags(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "eval", parents=[common], help="loss and perplexity of a checkpoint on held-out data (and exact match on pairs)"
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    p.add_argument(
        "--data",
        metavar="SPEC",
        help="a corpus name (see `unimodel list --kind corpus`), a text, JSONL or TSV file, folder or glob, or a "
        "run config file; default: the validation split of the run that produced CHECKPOINT",
    )
    p.add_argument("--max-batches", type=int, default=None, metavar="N", help="stop after N batches")
    p.add_argument("--batch-size", type=int, default=16, metavar="N", help="blocks (or pairs) per batch")
    p.add_argument(
        "--exact-match-examples",
        type=int,
        default=500,
        metavar="N",
        help="pair data (seq2seq): greedy-decode the first N pairs and report the exact match (0: skip; default 500)",
    )
    _strategy_arguments(p)
    _add_device_flags(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "distill",
        parents=[common],
        help="decode every source of pair data with an autoregressive teacher into a pair file (for cmlm)",
    )
    p.add_argument("teacher", metavar="TEACHER", help="a seq2seq checkpoint folder")
    p.add_argument(
        "--data",
        required=True,
        metavar="SPEC",
        help="a pair corpus name, a JSONL or TSV pair file, or a run config file (its [data] table)",
    )
    p.add_argument("--out", required=True, metavar="FILE", help="the JSONL pair file; an existing one is resumed")
    p.add_argument("--split", choices=["train", "validation"], default="train", help="the split of a corpus or run")
    p.add_argument("--num-beams", type=int, default=1, metavar="N", help="beam search when > 1 (default greedy)")
    p.add_argument("--batch-size", type=int, default=64, metavar="N", help="sources decoded at once")
    p.add_argument(
        "--validation-out",
        metavar="FILE",
        help="also write the data's validation pairs, unchanged, to FILE (the references a student run scores on)",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser(
        "convert", parents=[common], help="convert between unimodel checkpoints and Hugging Face folders"
    )
    p.add_argument("src", metavar="SRC")
    p.add_argument("dst", metavar="DST")
    p.add_argument(
        "--to",
        choices=("hf", "unimodel"),
        help="target format (default: the other one than SRC's, read from its config.json)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("doctor", parents=[common], help="check the installation: versions, plugins, conflicts, imports")
    p.add_argument("-v", "--verbose", action="store_true", help="show tracebacks of failures")
    p.add_argument(
        "--no-import", action="store_true", help="skip importing every component (faster; misses broken import paths)"
    )
    p.set_defaults(func=cmd_doctor)
    _add_plugin_commands(sub, common)
    return parser


def _add_plugin_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """The commands plugins add (``unimodel_cli_commands``); a taken name is left out with a warning."""
    from unimodel.registry import get_registry

    for plugin, command in get_registry().cli_commands():
        if command.name in sub.choices:
            print(
                f"warning: plugin {plugin!r} adds command {command.name!r}, which is taken; it is left out",
                file=sys.stderr,
            )
            continue
        p = sub.add_parser(command.name, parents=[common], help=f"{command.help} (plugin {plugin})")
        command.arguments(p)
        p.set_defaults(func=_plugin_command(plugin, command.target))


def _plugin_command(plugin: str, target: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        import importlib

        module, _, attr = target.partition(":")
        try:
            func = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise PluginError(f"plugin {plugin!r}: its command's code {target!r} cannot be imported: {exc}") from None
        return int(func(args) or 0)

    return run
