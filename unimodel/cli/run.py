"""``unimodel train``, ``eval``, ``generate``, ``distill`` and ``convert``: the commands that run models."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unimodel.errors import ConfigError, InputError

if TYPE_CHECKING:
    from unimodel.model import Model

from unimodel.cli.common import EXIT_OK, _out


# ------------------------------------------------------------------ train / eval
def _existing_file(path: str, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{what} {path!r} does not exist")
    if not p.is_file():
        raise ConfigError(f"{what} {path!r} is not a file")
    return p


def cmd_train(args: argparse.Namespace) -> int:
    _existing_file(args.config, "config file")
    from unimodel.training.config import load_run_config
    from unimodel.training.launch import cpu_worker_command

    # The whole run file, section.key=value overrides included, is checked against the config classes before
    # torch or any model code is imported: a misspelled key costs a fraction of a second.
    run = load_run_config(args.config, list(args.set))
    workers = cpu_worker_command(
        [
            "train",
            args.config,
            *(["--resume"] if args.resume else []),
            *(x for s in args.set for x in ("--set", s)),
            *(["--debug"] if args.debug else []),
        ]
    )
    if workers is not None:  # `accelerate launch --cpu --num_processes N`: start the N workers it did not
        import subprocess

        return subprocess.run(workers, check=False).returncode
    from unimodel.training.trainer import train

    train(run, resume=args.resume)  # the trainer reports progress itself
    return EXIT_OK


def cmd_eval(args: argparse.Namespace) -> int:
    from unimodel import training

    if not Path(args.checkpoint).exists():
        from unimodel.errors import CheckpointError

        raise CheckpointError(f"checkpoint {args.checkpoint!r} does not exist")
    if args.exact_match_examples is not None and args.exact_match_examples < 0:
        raise InputError(f"--exact-match-examples must be 0 or more, got {args.exact_match_examples}")
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be 1 or more, got {args.batch_size}")
    if args.max_batches is not None and args.max_batches < 1:
        raise InputError(
            f"--max-batches must be 1 or more (leave it out to evaluate every batch), got {args.max_batches}"
        )
    device, dtype = _device_and_dtype(args)
    result = training.evaluate(
        args.checkpoint,
        data=args.data,
        max_batches=args.max_batches,
        batch_size=args.batch_size,
        exact_match_examples=args.exact_match_examples,
        generate_options=_strategy_options(args),
        device=device,
        dtype=dtype,
    )
    _out(f"loss: {result.loss:.4f}")
    if result.loss_is_token_ce:  # exp(loss) is a perplexity only for a token cross-entropy
        _out(f"perplexity: {result.perplexity:.2f}")
    for name, value in result.metrics.items():  # the objective's own: accuracy, loss parts ...
        _out(f"{name}: {value:.4f}")
    if result.task_report is not None:  # the data kind's own metric: exact match for pairs
        _out(result.task_report)
    _out(f"({result.n_tokens:,} predicted tokens in {result.n_examples:,} {result.unit} of the {result.split} split)")
    return EXIT_OK


# ------------------------------------------------------------------ generate
#: the command line's spelling of generation options it takes
_GENERATE_FLAGS = {
    "max_new_tokens": "--max-new-tokens",
    "num_beams": "--num-beams",
    "temperature": "--temperature",
    "top_k": "--top-k",
    "top_p": "--top-p",
}


def _strategy_options(args: argparse.Namespace, model: Model | None = None) -> dict[str, Any]:
    """``--strategy`` and the ``--option key=value`` items, checked against the strategy (the one named, else
    ``model``'s default; with neither, ``generate`` checks them when it runs)."""
    from unimodel.generation.options import check_strategy_options, parse_option_items

    options = parse_option_items(args.option or [])
    strategy = args.strategy
    if strategy is None and model is not None and options:
        from unimodel.generation.settings import chosen_strategy, default_config

        strategy = chosen_strategy(model, default_config(model))
    if strategy is not None:
        check_strategy_options(strategy, options)
    return {"strategy": args.strategy, **options} if args.strategy else options


def cmd_generate(args: argparse.Namespace) -> int:
    from unimodel.generation import GenerationConfig

    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise InputError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    given = {"max_new_tokens": args.max_new_tokens, "num_beams": args.num_beams}
    given |= {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p}
    asked_to_sample = any(v is not None for v in (args.temperature, args.top_k, args.top_p, args.seed))
    # a sampling option given without --greedy or beams makes the run sample, whatever the model's kind
    given["do_sample"] = asked_to_sample and not args.greedy and args.num_beams in (None, 1)
    _flag_errors(lambda: GenerationConfig().with_options(given))  # the options' ranges, before the model loads
    if args.strategy is not None:
        _strategy_options(args)  # a strategy's own options too

    import unimodel as um
    from unimodel.generation import generate_text

    device, dtype = _device_and_dtype(args)
    model = um.load(args.checkpoint, device=device, dtype=dtype)
    if model.tokenizer is None:
        raise InputError(
            f"checkpoint {args.checkpoint!r} has no tokenizer.json, so the prompt cannot be encoded; "
            "save the model with its tokenizer (model.tokenizer = ...; model.save(path))"
        )
    if model.generation_config != GenerationConfig.from_special_tokens(model.special_tokens):
        options = _flags_over_stored_defaults(args, asked_to_sample)
    else:
        options = _command_line_defaults(model, args, asked_to_sample)
    if args.seed is not None:
        options["seed"] = args.seed
    options.update(_strategy_options(args, model))
    _flag_errors(lambda: generate_text(model, args.prompt, stream=sys.stdout, **options))
    sys.stdout.write("\n")
    sys.stdout.flush()
    return EXIT_OK


def _flags_over_stored_defaults(args: argparse.Namespace, asked_to_sample: bool) -> dict[str, Any]:
    """The options of a checkpoint that stores generation defaults of its own (a Hugging Face
    ``generation_config.json``, say): those defaults apply, and only the flags given replace them."""
    options: dict[str, Any] = {"max_new_tokens": args.max_new_tokens, "num_beams": args.num_beams}
    if args.greedy:
        options["do_sample"] = False
    elif asked_to_sample:
        options.update(do_sample=True, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    return {k: v for k, v in options.items() if v is not None}


def _command_line_defaults(model: Any, args: argparse.Namespace, asked_to_sample: bool) -> dict[str, Any]:
    """The options of a checkpoint without generation defaults of its own: 50 new tokens, and sampling
    unless the model was trained on pairs (which then translates greedily) or the flags say otherwise."""
    from unimodel.data.kinds import data_kind, data_kind_name

    num_beams = 1 if args.num_beams is None else args.num_beams
    max_new_tokens = 50 if args.max_new_tokens is None else args.max_new_tokens
    options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "num_beams": num_beams}
    greedy_kind = data_kind(data_kind_name(model.objective)).greedy_by_default
    if args.greedy or num_beams > 1 or (greedy_kind and not asked_to_sample):
        options["do_sample"] = False
    else:
        temperature = 1.0 if args.temperature is None else args.temperature
        options.update(do_sample=True, temperature=temperature, top_k=args.top_k, top_p=args.top_p)
    return options


#: what --device takes (and cuda:N)
DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
#: what --dtype takes
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16", "fp32", "bf16", "fp16")


def _device_and_dtype(args: argparse.Namespace) -> tuple[str, str | None]:
    """``--device`` and ``--dtype``, checked against their choices (before anything loads)."""
    device, dtype = args.device, args.dtype
    base, _, index = device.partition(":")
    if base not in DEVICE_CHOICES or (index and (base not in ("cuda", "mps") or not index.isdigit())):
        raise InputError(f"--device {device!r}: choose one of {', '.join(DEVICE_CHOICES)} (or cuda:N)")
    if dtype not in DTYPE_CHOICES:
        raise InputError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPE_CHOICES)} (auto keeps the saved one)")
    return device, None if dtype == "auto" else dtype


def _add_device_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default="auto",
        metavar="DEVICE",
        help=f"where to run: {', '.join(DEVICE_CHOICES)} or cuda:N (default auto: CUDA, then MPS, then the CPU)",
    )
    p.add_argument(
        "--dtype",
        default="auto",
        metavar="DTYPE",
        help=f"weights dtype: {', '.join(DTYPE_CHOICES)} (default auto: as saved)",
    )


def _flag_errors(run: Callable[[], Any]) -> Any:
    """``run()``, with a generation option's error naming the command-line flag that set it."""
    from unimodel.generation import GenerationOptionError

    try:
        return run()
    except GenerationOptionError as exc:
        flag = _GENERATE_FLAGS.get(exc.field)
        if flag is None:
            raise
        raise InputError(f"{flag} {exc.problem}") from None


# ------------------------------------------------------------------ distill
def cmd_distill(args: argparse.Namespace) -> int:
    from unimodel.generation.distill import distill, load_pairs, write_pairs

    for flag, value in (("--batch-size", args.batch_size), ("--num-beams", args.num_beams)):
        if value < 1:
            raise InputError(f"{flag} must be 1 or more, got {value}")
    if args.validation_out is not None:  # the references of the validation split, which a student run scores on
        pairs = load_pairs(args.data, split="validation")
        if not pairs:
            raise InputError(f"--validation-out: data {args.data!r} has no validation split")
        write_pairs(args.validation_out, pairs)
        _out(f"wrote {len(pairs):,} validation pairs (the references) to {args.validation_out}")
    result = distill(
        args.teacher,
        args.data,
        args.out,
        split=args.split,
        batch_size=args.batch_size,
        num_beams=args.num_beams,
        progress=args.progress,
    )
    resumed = f" ({result.resumed:,} already there)" if result.resumed else ""
    empty = f"; {result.empty} empty teacher outputs kept their reference" if result.empty else ""
    _out(f"wrote {result.written:,} distilled pairs to {result.path}{resumed}{empty}")
    return EXIT_OK


# ------------------------------------------------------------------ convert
def _folder_kind(src: Path) -> str:
    """'unimodel' or 'hf', from the folder's config.json."""
    from unimodel.errors import CheckpointError

    if not src.exists():
        raise CheckpointError(f"{str(src)!r} does not exist")
    config_path = src / "config.json"
    if not src.is_dir() or not config_path.is_file():
        raise CheckpointError(f"{str(src)!r} is not a model folder: it has no config.json")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{str(config_path)!r} is not valid JSON: {exc}") from None
    if isinstance(config, dict) and "model" in config:
        return "unimodel"
    if isinstance(config, dict) and "model_type" in config:
        return "hf"
    raise CheckpointError(
        f"{str(config_path)!r} is neither a unimodel checkpoint (no 'model' section) "
        "nor a Hugging Face folder (no 'model_type')"
    )


def cmd_convert(args: argparse.Namespace) -> int:
    from unimodel.errors import CheckpointError

    src, dst = Path(args.src), Path(args.dst)
    kind = _folder_kind(src)
    target = args.to or ("hf" if kind == "unimodel" else "unimodel")
    if target == kind:
        name = "a unimodel checkpoint" if kind == "unimodel" else "a Hugging Face folder"
        raise CheckpointError(
            f"{str(src)!r} is already {name}; nothing to convert (drop --to, or pick the other format)"
        )
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())) and not args.overwrite:
        raise CheckpointError(f"{str(dst)!r} already exists and is not empty; pass --overwrite to replace it")
    if dst.resolve() == src.resolve():
        raise CheckpointError("source and destination are the same folder; write the conversion somewhere else")

    import unimodel as um

    if target == "hf":
        model = um.load(src)
        um.to_hf(model, dst, overwrite=args.overwrite)
        _out(f"wrote Hugging Face folder {dst} (model {model.name!r})")
    else:
        model = um.from_hf(src)
        model.save(dst, overwrite=args.overwrite)
        _out(f"wrote unimodel checkpoint {dst} (model {model.name!r}, objective {model.objective_name!r})")
    return EXIT_OK
