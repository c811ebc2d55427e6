"""The ``unimodel`` command.

``list`` (and ``doctor --no-import``) read only the registry's metadata, so
they answer without importing torch or any model code. Everything heavy is
imported inside the command that needs it.

User errors (every :class:`~unimodel.errors.UnimodelError`, and files that are
missing or unreadable) print one ``error: ...`` line on stderr and exit with
status 2; ``--debug`` adds the traceback. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from unimodel.errors import ConfigError, InputError, PluginError, UnimodelError

if TYPE_CHECKING:
    from unimodel.model import Model
    from unimodel.registry import Component, Registry

EXIT_OK = 0
EXIT_BROKEN = 1  # doctor found a problem; a bug (uncaught exception) also exits 1
EXIT_USAGE = 2  # a user error, as argparse uses for bad arguments

_GLOB_CHARS = set("*?[")


# ------------------------------------------------------------------ helpers
def _out(text: str = "", stream: TextIO | None = None) -> None:
    print(text, file=stream or sys.stdout)


def _registry() -> Registry:
    from unimodel.registry import get_registry

    return get_registry()


def _table(rows: Sequence[Sequence[str]], indent: str = "  ", gap: str = "  ") -> list[str]:
    """Left-aligned columns; the last column is not padded."""
    if not rows:
        return []
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for r in rows:
        cells = [c.ljust(w) for c, w in zip(r, widths)] + [r[-1]]
        lines.append((indent + gap.join(cells)).rstrip())
    return lines


def _fmt(value: Any) -> str:
    """A config value as the user writes it in TOML."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value == "(required)" else json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def _warn_registry_problems(reg: Registry, stream: TextIO) -> None:
    """One line per broken plugin or name clash, so ``list`` never hides them silently."""
    for rec in reg.failed_plugins:
        _out(f"warning: plugin {rec.name!r} ({rec.source}) failed to load: {rec.error}; run `unimodel doctor`", stream)
    for (kind, name), comps in sorted(reg.conflicts.items()):
        _out(f"warning: {_clash(kind, name, comps)}", stream)


def _clash(kind: str, name: str, comps: Sequence[Component]) -> str:
    who = " and ".join(repr(c.plugin) for c in comps)
    choices = ", ".join(repr(c.qualified_name) for c in comps)
    return f"{kind} {name!r} is registered by plugins {who}; a plain {name!r} is ambiguous, use {choices}"


# ------------------------------------------------------------------ list
def cmd_list(args: argparse.Namespace) -> int:
    reg = _registry()
    pattern = args.pattern
    kind = args.kind
    plugins = set(args.plugin or ())
    unknown = sorted(plugins - set(reg.plugins))
    if unknown:
        from unimodel.errors import ComponentNotFoundError, did_you_mean

        raise ComponentNotFoundError(
            f"--plugin {unknown[0]!r}: no such plugin.{did_you_mean(unknown[0], reg.plugins)} "
            f"Plugins: {', '.join(sorted(reg.plugins))}"
        )
    if kind is None and pattern in _kinds() and not any(reg.names(None, f"*{pattern}*").values()):
        kind, pattern = pattern, None  # `unimodel list corpus`: a kind's name, matching no component
    if pattern is not None and not (_GLOB_CHARS & set(pattern)):
        pattern = f"*{pattern}*"  # a bare word matches anywhere in the name
    listed: dict[str, list[Component]] = {}
    for k, names in reg.names(kind, pattern).items():
        comps = [reg.get(k, n) for n in names]
        listed[k] = [c for c in comps if not plugins or c.plugin in plugins]
    if args.json:
        data = {
            k: [{"name": reg.display_name(c), "summary": c.summary, "plugin": c.plugin, "base": c.base} for c in comps]
            for k, comps in listed.items()
        }
        _out(json.dumps(data, indent=2))
        _warn_registry_problems(reg, sys.stderr)
        return EXIT_OK
    shown = 0
    clashes = []
    for k, comps in listed.items():
        if not comps:
            continue
        if shown:
            _out()
        _out(f"{k}:")
        rows = []
        for c in comps:
            summary = c.summary or "(no summary)"
            if c.base is not None:
                summary += f" [preset of {c.base}]"
            rows.append((reg.display_name(c), summary, f"({c.plugin})"))
            if (k, c.name) in reg.conflicts and (k, c.name) not in clashes:
                clashes.append((k, c.name))
        for line in _table(rows):
            _out(line)
        shown += len(comps)
    if clashes:
        _out()
        for k, n in clashes:
            _out(f"conflict: {_clash(k, n, reg.conflicts[(k, n)])}")
    if not shown:
        what = f"{args.kind}s" if args.kind else "components"
        where = f" of plugin(s) {', '.join(sorted(plugins))}" if plugins else ""
        if args.pattern:
            _out(f"no {what}{where} match {args.pattern!r}", sys.stderr)
        else:
            _out(f"no {what}{where} are registered", sys.stderr)
    _warn_registry_problems(reg, sys.stderr)
    return EXIT_OK


# ------------------------------------------------------------------ info
_INFO_ORDER = ("model", "objective", "encoder", "decoder", "decoding", "hf_converter", "corpus")


def _pick_kind(reg: Registry, name: str, kind: str | None) -> str:
    if kind is not None:
        reg.get(kind, name)  # raises a helpful not-found error
        return kind
    kinds = [k for k in _INFO_ORDER if reg.has(k, name)]
    if kinds:
        return kinds[0]
    from unimodel.errors import ComponentNotFoundError, did_you_mean

    every = sorted({n for names in reg.names().values() for n in names})
    msg = f"no component named {name!r}"
    if reg.failed_plugins:
        msg += ": " + "; ".join(f"plugin {p.name!r} failed to load ({p.error})" for p in reg.failed_plugins)
        msg += " and may have provided it; run `unimodel doctor`"
    msg += f".{did_you_mean(name, every)} See `unimodel list` for what is registered."
    raise ComponentNotFoundError(msg)


def _config_rows(config_class: Any, values: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows = []
    for field_name, type_name, default, doc in config_class.describe():
        shown = _fmt(values[field_name]) + " *" if field_name in values else _fmt(default)
        rows.append((field_name, type_name, shown, doc))
    return rows


def _print_fields(title: str, config_class: Any, values: dict[str, Any]) -> None:
    _out(f"{title}:")
    rows = _config_rows(config_class, values)
    if not rows:
        _out("  (no fields)")
        return
    for line in _table([("field", "type", "default", "doc"), *rows]):
        _out(line)
    if values:
        _out("  (* set by the preset)")


def _models_with(reg: Registry, objective: str) -> list[str]:
    from unimodel.model import compatible_objectives

    shown = reg.display_name(reg.get("objective", objective))
    out = []
    for comp in reg.components("model"):
        name = reg.display_name(comp)
        try:
            if shown in compatible_objectives(name, registry=reg):
                out.append(name)
        except UnimodelError:  # a preset whose base is missing is reported by doctor
            continue
    return out


def _header(c: Component, reg: Registry) -> None:
    source = reg.plugins[c.plugin].source if c.plugin in reg.plugins else "?"
    _out(f"{c.name} ({c.kind}) from plugin {c.plugin!r} [{source}]")
    if c.summary:
        _out(f"  {c.summary}")


def cmd_info(args: argparse.Namespace) -> int:
    reg = _registry()
    kind = _pick_kind(reg, args.name, args.kind)
    comp = reg.get(kind, args.name)
    _header(comp, reg)
    also = [k for k in _INFO_ORDER if k != kind and reg.has(k, args.name)]
    if also:
        _out(f"  (also a {', '.join(also)}: `unimodel info {args.name} --kind {also[0]}`)")
    _out()
    if kind == "model":
        from unimodel.model import compatible_objectives

        family, preset_values = reg.resolve_model(comp.name)
        if comp.base is not None:
            chain = [comp.name]
            c = comp
            while c.base is not None:
                c = reg.get("model", c.base)
                chain.append(c.name)
            _out(f"preset chain: {' -> '.join(chain)}")
        _out(f"capabilities: {', '.join(sorted(family.provides)) or '(none)'}")
        default = family.default_objective
        if default is not None and reg.has("objective", default):
            default = reg.display_name(reg.get("objective", default))
        _out(f"default objective: {default or '(none)'}")
        compatible = compatible_objectives(comp.qualified_name, registry=reg)
        _out(f"compatible objectives: {', '.join(compatible) or '(none)'}")
        _out()
        cls = family.load()
        _print_fields(f"config fields of {family.name!r}", cls.config_class, preset_values)
    elif kind == "objective":
        cls = comp.load()
        _out(f"requires: {', '.join(sorted(comp.requires)) or '(nothing)'}")
        roles = getattr(cls, "special_tokens", ())
        _out(f"tokenizer roles needed: {', '.join(roles) or '(none)'}")
        _out(f"works with models: {', '.join(_models_with(reg, comp.qualified_name)) or '(none registered)'}")
        _out()
        _print_fields("config fields", cls.config_class, {})
    else:
        meta = {
            "target": comp.target,
            "provides": ", ".join(comp.provides),
            "requires": ", ".join(comp.requires),
            "model types": ", ".join(comp.model_types),
        }
        for key, value in comp.display_items().items():
            meta[key] = _fmt(value) if not isinstance(value, str) else value
        for line in _table([(f"{k}:", v) for k, v in meta.items() if v]):
            _out(line.strip())
        if kind in ("encoder", "decoder"):
            cls = comp.load()
            config_class = getattr(cls, "config_class", None)
            if config_class is not None:
                _out()
                _print_fields("config fields", config_class, {})
    return EXIT_OK


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
    from unimodel import training

    workers = training.cpu_worker_command(
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
    # The trainer reports progress itself; section.key=value overrides are parsed (and checked) there.
    training.train(args.config, resume=args.resume, overrides=list(args.set))
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


# ------------------------------------------------------------------ doctor
_VERSIONED = ("torch", "accelerate", "transformers", "tokenizers", "safetensors", "pluggy")


def _dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cmd_doctor(args: argparse.Namespace) -> int:
    from unimodel import __version__
    from unimodel.hookspecs import PLUGIN_API_VERSION

    verbose = args.verbose or args.debug
    problems = 0
    _out(f"unimodel {__version__} (plugin API {PLUGIN_API_VERSION})")
    _out(f"python {platform.python_version()} ({sys.executable})")
    for dist in _VERSIONED:
        _out(f"{dist} {_dist_version(dist)}")
    _out()

    reg = _registry()
    _out("plugins:")
    rows = []
    for rec in sorted(reg.plugins.values(), key=lambda r: r.name):
        api = str(rec.api_version) if rec.api_version is not None else "-"
        status = "OK" if rec.ok else "FAILED"
        source = f"{rec.source} {rec.version}" if rec.version else rec.source
        rows.append((rec.name, source, f"api {api}", f"{len(rec.components)} components", status))
    for line in _table([("name", "distribution", "api", "components", "status"), *rows]):
        _out(line)
    if not reg.plugins:
        _out("  (none: is unimodel installed? `pip install -e .` registers the entry points)")

    for rec in reg.failed_plugins:
        problems += 1
        _out()
        _out(f"FAILED plugin {rec.name!r} ({rec.source}): {rec.error}")
        if verbose and rec.traceback:
            _out(_indent(rec.traceback.rstrip()))
        elif rec.traceback:
            _out("  (run `unimodel doctor -v` for the traceback)")

    clashes = sorted(reg.conflicts.items())
    for (kind, name), comps in clashes:
        who = " and ".join(f"{c.plugin!r} ({reg.plugins[c.plugin].source})" for c in comps if c.plugin in reg.plugins)
        choices = " or ".join(repr(c.qualified_name) for c in comps)
        _out()
        _out(
            f"CONFLICT {kind} {name!r} is registered by plugins {who}; a plain {name!r} is an error, "
            f"name {choices} (or uninstall one, or ask its author to rename it)"
        )

    unversioned = [rec.name for rec in reg.plugins.values() if rec.ok and rec.api_version is None]
    if unversioned:
        _out()
        _out(
            f"warning: plugin(s) {', '.join(sorted(unversioned))} do not declare the plugin API they target; "
            f"implement the unimodel_api_version hook (returning {PLUGIN_API_VERSION})"
        )

    if not args.no_import:
        problems += _doctor_imports(reg, verbose)

    _out()
    # a name clash breaks nothing that names its components qualified, so it is reported, not counted as broken
    clash_note = f"; {len(clashes)} name conflict(s): use qualified names (plugin:name)" if clashes else ""
    if problems:
        _out(f"{problems} problem(s) found{clash_note}", sys.stderr)
        return EXIT_BROKEN
    _out(f"no problems found{clash_note}")
    return EXIT_OK


def _doctor_imports(reg: Registry, verbose: bool) -> int:
    """Import every component's target: a typo there otherwise surfaces only on first use."""
    failures: list[tuple[str, str]] = []
    imported = 0
    start = time.perf_counter()
    for comp in reg.components():
        if comp.base is not None:  # a preset has no target; its base must exist
            if not reg.has("model", comp.base):
                failures.append(
                    (
                        f"model preset {comp.name!r} from plugin {comp.plugin!r}: "
                        f"its base {comp.base!r} is not registered",
                        "",
                    )
                )
            continue
        imported += 1
        try:
            comp.load()
        except UnimodelError as exc:
            failures.append((str(exc), traceback.format_exc()))
    _out()
    _out(
        f"component imports: {imported - sum(1 for _, tb in failures if tb)} of {imported} OK "
        f"({time.perf_counter() - start:.1f}s)"
    )
    for msg, tb in failures:
        _out(f"FAILED {msg}")
        if verbose and tb:
            _out(_indent(tb.rstrip()))
    return len(failures)


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


# ------------------------------------------------------------------ parser
def _kinds() -> tuple[str, ...]:
    from unimodel.registry import KINDS

    return KINDS


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


def _user_error_message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc) or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UnimodelError, OSError) as exc:
        if isinstance(exc, BrokenPipeError):  # `unimodel list | head`: the reader left, nothing to report
            _silence_stdout()
            return EXIT_OK
        if args.debug:
            traceback.print_exc()
        print(f"error: {_user_error_message(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _silence_stdout() -> None:
    # Python flushes stdout at exit; with the pipe gone that would raise again.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def __getattr__(name: str) -> Any:
    if name == "TextStreamer":  # it moved to unimodel.generation.text; imported on use (torch)
        from unimodel.generation.text import TextStreamer

        return TextStreamer
    raise AttributeError(f"module 'unimodel.cli' has no attribute {name!r}")


__all__ = ["build_parser", "main"]
