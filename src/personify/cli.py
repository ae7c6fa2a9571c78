"""`personify` command line: a thin dispatcher. Every flag comes from a config dataclass.

    personify generate "a photo of a dog" [--model PATH] [--concept ART ...] [--n 4] [--out DIR]
    personify train --method dreambooth --images DIR --class-word dog [--config FILE]
    personify methods
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import warnings
from typing import Any

from .errors import PersonifyError


def _parser() -> argparse.ArgumentParser:
    from .generate import GenerateConfig
    from .config import add_arguments

    p = argparse.ArgumentParser(prog="personify", description="Teach a text-to-image model your subject.")
    p.add_argument("--version", action="version", version=f"personify {__import__('personify').__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate images from a prompt")
    g.add_argument("prompt", help="text prompt")
    g.add_argument("--config", help="YAML/TOML file with a 'generate:' section")
    add_arguments(g, GenerateConfig, skip=("prompt",))
    # In-context generation (SuTI): `--demos DIR` switches to the apprentice; its extra flags.
    from .incontext.generate import DemosConfig

    shared = {f.name for f in dataclasses.fields(GenerateConfig)}
    add_arguments(g, DemosConfig, skip=tuple(shared))
    t = sub.add_parser("train", help="train a concept (see 'personify methods')", add_help=False)
    t.add_argument("--method", required=True)
    t.add_argument("--config", help="YAML/TOML file with 'train:' and 'method:' sections")
    t.add_argument("-h", "--help", action="store_true")
    sub.add_parser("methods", help="list the registered methods")
    m = sub.add_parser("mini", help="the embedded mini model: pretraining stages and export").add_subparsers(dest="subcommand", required=True)
    mt = m.add_parser("train", help="train one stage (clip, vae, unet, evaluators); rerun to resume", add_help=False)
    mt.add_argument("--stage", required=True, choices=("clip", "vae", "unet", "evaluators"))
    mt.add_argument("-h", "--help", action="store_true")
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, (help_, cfg_path, _) in SIMPLE.items():
        if " " in name:  # "world build" -> `personify world build`
            group, leaf = name.split(" ", 1)
            if group not in groups:
                groups[group] = sub.add_parser(group, help=f"{group} commands").add_subparsers(dest="subcommand", required=True)
            sp = groups[group].add_parser(leaf, help=help_)
        else:
            sp = sub.add_parser(name, help=help_)
        sp.add_argument("--config", help=f"YAML/TOML file with a '{name.replace(' ', '_')}:' section")
        add_arguments(sp, _import(cfg_path))
    return p


# Commands that are one config dataclass and one function: "name": (help, "module:Config", "module:function").
SIMPLE = {
    "eval": ("score concepts or a method with the DreamBench protocol (HTML report)",
             "personify.evaluation.run:EvalConfig", "personify.evaluation.run:run_eval"),
    "export": ("write a concept in another tool's format (kohya/A1111 LoRA, A1111/diffusers embeddings)",
               "personify.export:ExportConfig", "personify.export:main"),
    "merge": ("merge separately trained Custom Diffusion concepts in closed form (Kumari et al. 2023, Eq. 4)",
              "personify.methods.custom_diffusion:MergeConfig", "personify.methods.custom_diffusion:main"),
    "seedselect": ("optimize initial noise toward 3-5 reference images (SeedSelect); writes images + latents",
                   "personify.seedselect:SeedSelectConfig", "personify.seedselect:main"),
    "incontext train": ("train the in-context apprentice (SuTI) on subject clusters of the mini world",
                        "personify.incontext.train:ApprenticeTrainConfig", "personify.incontext.train:main"),
    "incontext experts": ("train a LoRA expert per subject with Ray and write CLIP-filtered (demos, prompt, image) shards for the apprentice",
                          "personify.incontext.experts:ExpertsConfig", "personify.incontext.fanout:main"),
    "world build": ("fetch the emoji packages (npm) and render the mini model's scenes (one-time)",
                    "personify.world:WorldConfig", "personify.world:main"),
}


def _import(path: str):
    import importlib

    mod, attr = path.split(":")
    return getattr(importlib.import_module(mod), attr)


def cmd_simple(name: str, args: argparse.Namespace) -> int:
    from .config import load_file

    _, cfg_path, fn_path = SIMPLE[name]
    section = load_file(args.config).get(name.replace(" ", "_"), {}) if args.config else {}
    result = _import(fn_path)(_layered(_import(cfg_path), section, args, args.config or "command line"))
    if isinstance(result, int):
        return result
    if isinstance(result, (str, os.PathLike)):  # other results (e.g. SeedSelectResult) were summarised by the command
        print(f"{name}: wrote {result}")
    return 0


def _layered(cls, file_section: dict[str, Any], args: argparse.Namespace, source: str, extra: dict[str, Any] | None = None):
    """defaults < config file < CLI flags."""
    from .config import build
    import dataclasses

    names = {f.name for f in dataclasses.fields(cls)}
    values = dict(file_section)
    values.update({k: v for k, v in vars(args).items() if k in names})
    values.update(extra or {})
    return build(cls, values, source)


def cmd_generate(args: argparse.Namespace) -> int:
    from .config import load_file
    from .generate import GenerateConfig, run_generate

    section = load_file(args.config).get("generate", {}) if args.config else {}
    if getattr(args, "demos", None):
        from .incontext.generate import DemosConfig, main as demos_main

        cfg = _layered(DemosConfig, section, args, args.config or "command line", {"prompt": args.prompt})
        paths = demos_main(cfg)
        print(f"wrote {len(paths)} image(s) to {paths[0].parent}")
        return 0
    keep = {f.name for f in dataclasses.fields(GenerateConfig)}
    args = argparse.Namespace(**{k: v for k, v in vars(args).items() if k in keep or k in ("config", "prompt", "command")})
    cfg = _layered(GenerateConfig, section, args, args.config or "command line", {"prompt": args.prompt})
    paths = run_generate(cfg)
    print(f"wrote {len(paths)} image(s) and contact_sheet.png to {paths[0].parent}")
    return 0


def cmd_train(args: argparse.Namespace, rest: list[str]) -> int:
    from .config import add_arguments, load_file
    from .methods import get_method
    from .training.config import TrainConfig
    from .training.loop import Trainer

    cls = get_method(args.method)
    p = argparse.ArgumentParser(prog=f"personify train --method {cls.name}")
    add_arguments(p, TrainConfig)
    add_arguments(p, cls.Config)
    if args.help:
        p.print_help()
        return 0
    ns = p.parse_args(rest)
    data = load_file(args.config) if args.config else {}
    src = args.config or "command line"
    tcfg = _layered(TrainConfig, data.get("train", {}), ns, src)
    mcfg = _layered(cls.Config, data.get("method", {}), ns, src)
    artifact = Trainer(cls.name, mcfg, tcfg).run()
    print(f"concept saved: {artifact}")
    return 0


def cmd_mini_train(args: argparse.Namespace, rest: list[str]) -> int:
    import json

    from .config import add_arguments, build
    from .mini.config import STAGES
    from .mini.train import main as train_stage

    cls = STAGES[args.stage]
    p = argparse.ArgumentParser(prog=f"personify mini train --stage {args.stage}")
    add_arguments(p, cls, skip=("stage",))
    if args.help:
        p.print_help()
        return 0
    status = train_stage(build(cls, vars(p.parse_args(rest)), "command line"))
    print(json.dumps(status, indent=1, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    warnings.simplefilter("default")
    warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"
    try:
        parser = _parser()
        args, rest = parser.parse_known_args(argv)
        if args.command == "train":
            return cmd_train(args, rest)
        if args.command == "mini" and args.subcommand == "train":
            return cmd_mini_train(args, rest)
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        if args.command == "generate":
            return cmd_generate(args)
        name = f"{args.command} {args.subcommand}" if getattr(args, "subcommand", None) else args.command
        if name in SIMPLE:
            return cmd_simple(name, args)
        if args.command == "methods":
            from .methods import METHODS, available

            for name in available():
                print(f"{name:20s} {((METHODS[name].__doc__ or '').strip().splitlines() or [''])[0]}")
            return 0
    except PersonifyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
