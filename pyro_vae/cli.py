"""Command-line entry points. They parse flags into a config and call the library;
user errors print one line and exit 2."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pyro_vae.config import DEVICES, TrainConfig
from pyro_vae.errors import ConfigError, OneLineParser, PyroVAEError, as_flags, stdout_gone
from pyro_vae.files import read_settings_file


def _int(text: str) -> int:
    """An integer flag value; ``1e6`` is taken as 1000000 (a whole number written as a float)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if not math.isfinite(value) or value != int(value):
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r} (a whole number is needed)")
    return int(value)


def _given_only(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Show each default in --help, then suppress it, so parse_args returns only the flags given:
    the defaults come from TrainConfig, under a --config file, under the flags."""
    for action in parser._actions:
        if action.dest == "help":
            continue
        if action.help and "%(default)s" in action.help:
            action.help = action.help.replace("%(default)s", str(action.default))
        action.default = argparse.SUPPRESS
    return parser


def train_parser() -> argparse.ArgumentParser:
    """``pyro-vae-train``'s flags: one per :class:`TrainConfig` field, with the field's own help text."""
    p = OneLineParser(
        prog="pyro-vae-train",
        description="Train a Pyro VAE with SVI on MNIST, Fashion-MNIST, binarized MNIST, CIFAR-10 or your images.",
    )
    a = p.add_argument
    a("--config", metavar="FILE", help="JSON file of settings (a run's config.json works); flags override it")
    a("--resume", metavar="RUN_DIR", default=None, help="continue RUN_DIR from its last checkpoint (with --epochs)")
    for f in dataclasses.fields(TrainConfig):
        _setting_flag(a, f)
    _dist_flag(a)
    return _given_only(p)


# settings that are on by default: their flag turns them off
_OFF_FLAGS = {"download": "--no-download", "progress": "--no-progress"}


def _setting_flag(add: Callable[..., Any], f: dataclasses.Field) -> None:
    """The flag of one setting, from its type, default, help and choices."""
    text, choices, kind = as_flags(f.metadata["help"]), f.metadata["choices"], str(f.type)
    if f.name in _OFF_FLAGS:
        add(_OFF_FLAGS[f.name], dest=f.name, action="store_false", help=text)
        return
    if kind == "bool":
        add(_flag(f.name), action="store_true", help=text)
        return
    default = list(f.default) if isinstance(f.default, tuple) else f.default
    kw: dict[str, Any] = {"default": default, "help": text}
    if default is not None and "(default" not in text:
        kw["help"] = f"{text} (default %(default)s)"
    if kind.startswith("tuple"):
        kw.update(type=_int, nargs="+")
    elif kind.startswith("int"):
        kw["type"] = _int
    elif kind.startswith("float"):
        kw["type"] = float
    if choices is not None:
        kw["choices"] = choices
    add(_flag(f.name), **kw)


def _dist_flag(add: Callable[..., Any]) -> None:
    add(
        "--dist-timeout",
        type=float,
        default=600.0,
        help="under torchrun: seconds a rank waits for the others before the job fails (default %(default)s)",
    )


def _distributed(fn: Callable[[], None], device: str, timeout: float | None) -> Callable[[], None]:
    """``fn`` inside the process group when torchrun launched this process (one device per rank)."""

    def go() -> None:
        from pyro_vae import distributed

        distributed.check_timeout(600.0 if timeout is None else timeout)
        if not distributed.launched():
            fn()
            return
        distributed.init(device, 600.0 if timeout is None else timeout)
        try:
            fn()
        finally:
            distributed.shutdown()

    return go


def _run(fn: Callable[[], None], aliases: dict[str, str] | None = None) -> int:
    """Run ``fn``; a user error is one line on stderr and exit 2, its settings spelled as flags
    (``aliases``: settings whose flag is named otherwise). A closed standard output ends it quietly, exit 1.
    Warnings from torch, Pyro and torchvision are held back: shown after a run that succeeds, dropped
    around a one-line error."""
    from pyro_vae.distributed import RankFailure, main_process
    from pyro_vae.training import Interrupted

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        try:
            fn()
            sys.stdout.flush()  # a reader that left (`| head`) shows up here, not in the interpreter's exit
        except BrokenPipeError:
            stdout_gone()
            return 1
        except Interrupted as exc:
            if main_process():  # under torchrun every rank stopped at the same step; rank 0 says so
                print(str(exc), file=sys.stderr)
            return exc.exit_code
        except RankFailure as exc:
            if not exc.quiet:
                print(f"error: {as_flags(str(exc), aliases)}", file=sys.stderr)
            return 2
        except PyroVAEError as exc:
            if main_process():
                print(f"error: {as_flags(str(exc), aliases)}", file=sys.stderr)
            return 2
    for w in caught:
        warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return 0


def train_main(argv: Sequence[str] | None = None) -> int:
    """``pyro-vae-train``: parse flags, train, print where the run went."""
    parser = train_parser()
    given = vars(parser.parse_args(argv))
    resume_dir = given.pop("resume", None)
    config_file = given.pop("config", None)
    timeout = given.pop("dist_timeout", None)
    if resume_dir is not None:
        extra = [_flag(k) for k in given if k not in ("epochs", "progress", "time_limit")]
        extra += ["--config"] if config_file else []
        if extra:
            may = "only --epochs, --time-limit and --no-progress may change"
            parser.error(f"--resume takes the run's own settings; drop {', '.join(extra)} ({may})")

    def go() -> None:
        from pyro_vae.training import resume, train

        if resume_dir is not None:
            result = resume(
                resume_dir,
                epochs=given.get("epochs"),
                progress=given.get("progress"),
                time_limit=given.get("time_limit", "keep"),
            )
        else:
            settings = TrainConfig().to_dict()
            source = "flags"
            if config_file is not None:
                settings.update(read_settings_file(config_file))
                source = f"--config {config_file} with the flags"
            settings.update(given)
            result = train(TrainConfig.from_dict(settings, source=source))
        from pyro_vae.distributed import world

        last = result.metrics[-1]
        if world().main:
            print(
                f"done: {result.run_dir}  epoch {last['epoch']:.0f}  "
                f"test loss {last['test_loss']:.2f} nats/image  ({result.config.elbo} ELBO, {result.config.device})"
            )

    return _run(_distributed(go, _run_device(resume_dir, given, config_file), timeout))


def _run_device(resume_dir: str | None, given: dict[str, Any], config_file: str | None) -> str:
    """The --device a run will use, known before its process group starts (NCCL or gloo)."""
    if "device" in given:
        return given["device"]
    for path in (Path(resume_dir, "config.json") if resume_dir else None, config_file):
        try:
            return str(json.loads(Path(path).read_text())["device"]) if path else "auto"
        except (OSError, ValueError, KeyError, TypeError):
            pass  # the run itself reports an unreadable file
    return "auto"


def _flag(dest: str) -> str:
    return "--" + ("no-progress" if dest == "progress" else "no-download" if dest == "download" else dest).replace(
        "_", "-"
    )


def _fields_parser(cls: type, prog: str, description: str) -> argparse.ArgumentParser:
    """A command whose flags are the fields of the settings dataclass ``cls``; ``run_dir`` is positional."""
    p = OneLineParser(prog=prog, description=description)
    for f in dataclasses.fields(cls):
        if f.name == "run_dir":  # optional where the command can score something else (--pretrained)
            optional = any(g.name == "pretrained" for g in dataclasses.fields(cls))
            p.add_argument("run_dir", help=f.metadata["help"], **({"nargs": "?", "default": ""} if optional else {}))
        else:
            _setting_flag(p.add_argument, f)
    return p


def evaluate_parser() -> argparse.ArgumentParser:
    """``pyro-vae-evaluate``'s flags: one per :class:`pyro_vae.evaluate.EvalConfig` field."""
    from pyro_vae.evaluate import EvalConfig

    p = _fields_parser(
        EvalConfig,
        "pyro-vae-evaluate",
        "Held-out ELBO (both KL estimators) and importance-sampled log-likelihood of a trained run.",
    )
    _dist_flag(p.add_argument)
    return p


def pictures_parser() -> argparse.ArgumentParser:
    """``pyro-vae-pictures``'s flags: one per :class:`pyro_vae.pictures.PicturesConfig` field."""
    from pyro_vae.pictures import PicturesConfig

    return _fields_parser(
        PicturesConfig,
        "pyro-vae-pictures",
        "Draw a trained run: samples, reconstructions, the latent plane, interpolations, the test encodings "
        "coloured by label, and the KL and activity of every latent unit, as PNG files.",
    )


def pictures_main(argv: Sequence[str] | None = None) -> int:
    """``pyro-vae-pictures``: the pictures of a run, written beside it (or to ``--out``)."""
    args = vars(pictures_parser().parse_args(argv))

    def go() -> None:
        from pyro_vae.pictures import PicturesConfig, draw_pictures

        paths = draw_pictures(PicturesConfig(**args))
        print(f"wrote {len(paths)} pictures to {paths[0].parent}: {', '.join(p.name for p in paths)}")

    return _run(go)


def evaluate_main(argv: Sequence[str] | None = None) -> int:
    """``pyro-vae-evaluate``: score a run on held-out data, print a table, add it to eval.json."""
    args = vars(evaluate_parser().parse_args(argv))
    timeout = args.pop("dist_timeout")

    def go() -> None:
        from pyro_vae.evaluate import EvalConfig, evaluate_run

        config = EvalConfig(**args).validate()
        if config.pretrained is not None:
            from pyro_vae.distributed import device_for, resolve_device, world
            from pyro_vae.pretrained import evaluate_pretrained
            from pyro_vae.resources import set_threads

            if world().distributed:
                raise ConfigError("shipped weights are scored by one process; run it without torchrun")
            set_threads(config.threads)
            evaluate_pretrained(
                config.pretrained,
                data_dir=config.data_dir,
                k=config.k if config.k != EvalConfig.k else None,
                limit=config.limit,
                seed=config.seed,
                batch_size=config.batch_size,
                device=device_for(resolve_device(config.device)),
                out=config.out,
                say=lambda line: print(line, flush=True),
            )
            return
        evaluate_run(config, say=lambda line: print(line, flush=True))

    # evaluate() names K `ks`; the flag is --k
    return _run(_distributed(go, args["device"], timeout), aliases={"ks": "k"})


def benchmark_parser() -> argparse.ArgumentParser:
    """``pyro-vae-benchmark``'s flags, one per :class:`pyro_vae.benchmark.BenchmarkConfig` field, and more."""
    from pyro_vae.benchmark import PATH_NOTES, BenchmarkConfig

    d = BenchmarkConfig()
    p = OneLineParser(
        prog="pyro-vae-benchmark",
        description="Time pyro_vae's training path against the conventional Pyro loop and plain PyTorch, "
        "and batched against per-image held-out evaluation.",
    )
    a = p.add_argument
    a("--data-dir", default=d.data_dir, help="root holding MNIST/raw (default %(default)s)")
    a("--device", choices=DEVICES, default=d.device, help="default %(default)s")
    a("--batch-size", type=_int, default=d.batch_size, help="default %(default)s")
    a("--steps", type=int, default=d.steps, help="steps per timed repeat (default: one epoch)")
    a("--warmup-steps", type=int, default=d.warmup_steps, help="untimed steps first (default %(default)s)")
    a("--repeats", type=int, default=d.repeats, help="timed repeats; the median is shown (default %(default)s)")
    a("--limit-train", type=_int, default=d.limit_train, help="use only the first N training images")
    a("--limit-test", type=_int, default=d.limit_test, help="score only the first N test images")
    a("--num-workers", type=int, default=d.num_workers, help="conventional loop's DataLoader workers (default 1)")
    a("--paths", nargs="+", choices=list(PATH_NOTES), default=list(d.paths), help="rows to time")
    a("--eval-k", type=int, default=d.eval_k, help="importance samples per image (default %(default)s)")
    a("--eval-images", type=int, default=d.eval_images, help="images for batched evaluation (default %(default)s)")
    a("--eval-loop-images", type=int, default=d.eval_loop_images, help="images for the per-image loop (default 20)")
    a("--seed", type=_int, default=d.seed, help="default %(default)s")
    a("--load", type=int, default=d.load, help="competing single-thread processes to run beside it (default 0)")
    a("--threads", type=_int, default=d.threads, help="torch threads in every row (default: torch's, every core)")
    a("--breakdown", action="store_true", help="only time one step's layers beyond the PyTorch floor (CPU)")
    a("--out", default="benchmark.json", help="JSON file to write (default %(default)s)")
    return p


def benchmark_main(argv: Sequence[str] | None = None) -> int:
    """``pyro-vae-benchmark``: time the training paths and the evaluation, print a table, write JSON."""
    from pyro_vae.benchmark import BenchmarkConfig

    p = benchmark_parser()
    args = vars(p.parse_args(argv))
    out = args.pop("out")
    breakdown = args.pop("breakdown")
    args["paths"] = tuple(args["paths"])
    cfg = BenchmarkConfig(**args)

    def go() -> None:
        from pyro_vae.benchmark import format_breakdown, format_results, run_benchmark, save, step_breakdown
        from pyro_vae.files import check_writable_file

        cfg.validate()
        check_writable_file(out, example="benchmark.json")  # before the work, not after
        if breakdown:
            result = step_breakdown(cfg, progress=True)
            print(format_breakdown(result), flush=True)
        else:
            result = run_benchmark(cfg)
            print(format_results(result), flush=True)  # on screen even if the file write fails after all
        try:
            save(result, out)
        except OSError as exc:
            raise ConfigError(f"could not write {out} ({exc.strerror or exc}); the figures are printed above") from None
        print(f"wrote {out}")

    return _run(go)


def reproduce_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="pyro-vae-reproduce",
        description="Train a published recipe and score it with the paper's protocol: one row beside the "
        "paper's number. Running it again on the same --out resumes or re-scores the run.",
    )
    a = p.add_argument
    a(
        "names",
        nargs="*",
        metavar="NAME",
        help="recipe names (see --list); 'families' means every model family, 'm2-mnist' every label count",
    )
    a("--list", action="store_true", help="show every recipe with its reference number and exit")
    a("--minutes", type=float, default=None, help="training budget of this call, wall-clock minutes (default: none)")
    a("--data-dir", default=None, help="the dataset's root (default: the run's, or ./data)")
    a("--no-download", dest="download", action="store_false", help="fail instead of downloading missing files")
    a("--out", default=None, help="run folder, for one NAME (default runs/reproduce-NAME)")
    a("--no-train", dest="train", action="store_false", help="score the run in --out as it stands")
    a("--device", choices=DEVICES, default="auto", help="default %(default)s")
    a("--no-progress", dest="progress", action="store_false", help="no progress bars")
    a("--table", default=None, help="also write the rows to this JSON file")
    return p


def reproduce_main(argv: Sequence[str] | None = None) -> int:
    """``pyro-vae-reproduce``: recipes to results-table rows."""
    parser = reproduce_parser()
    args = parser.parse_args(argv)

    def go() -> None:
        from dataclasses import asdict

        from pyro_vae.files import check_writable_file, write_atomic
        from pyro_vae.recipes import expand_names
        from pyro_vae.recipes.reproduce import format_list, format_rows, reproduce

        if args.list:
            print(format_list())
            return
        if not args.names:
            raise ConfigError("name a recipe (python -m pyro_vae reproduce --list shows them), e.g. vae-static-mnist")
        names: list[str] = []
        for name in args.names:
            names += [n for n in expand_names(name) if n not in names]
        if args.out is not None and len(names) > 1:
            raise ConfigError(f"--out names one run folder; drop it to run {len(names)} recipes in runs/reproduce-NAME")
        if args.table is not None:
            check_writable_file(args.table, flag="--table", example="results.json")
        rows = []
        for name in names:
            rows.append(
                reproduce(
                    name,
                    minutes=args.minutes,
                    data_dir=args.data_dir,
                    download=args.download,
                    out=args.out,
                    device=args.device,
                    train=args.train,
                    progress=args.progress,
                )
            )
            print(format_rows(rows[-1:]), flush=True)
        if len(rows) > 1:
            print(format_rows(rows))
        if args.table is not None:
            text = json.dumps([asdict(r) for r in rows], indent=2) + "\n"
            write_atomic(args.table, lambda f: f.write(text.encode()))

    return _run(go)
