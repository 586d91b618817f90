"""The ``dreamrelation`` command line.

Every command takes an optional YAML config and ``key.path=value`` overrides; bad input ends with one
line naming the problem and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from dreamrelation.errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Relation-centric video customization (DreamRelation) on Mochi-architecture video models.\n\n"
    "Start with `dreamrelation demo`: it learns a relation from toy exemplar videos and generates new "
    "subjects doing it, on a CPU in minutes.",
)
toy_app = typer.Typer(no_args_is_help=True, help="The toy world: rendered relation videos and a small Mochi.")
app.add_typer(toy_app, name="toy")

OVERRIDES_HELP = "Config overrides such as train_steps=200 or seeds=[0,1]."


@app.command()
def demo(
    overrides: list[str] = typer.Argument(None, help=OVERRIDES_HELP),
    config: Path = typer.Option(None, "--config", "-c", help="YAML file with DemoConfig fields."),
    out: Path = typer.Option(None, "--out", help="Output folder (default runs/demo)."),
) -> None:
    """Learn a held-out toy relation from person exemplars; compare DreamRelation, direct LoRA, untuned."""
    from dreamrelation.config import load_config
    from dreamrelation.demo import DemoConfig, run_demo

    cfg = load_config(DemoConfig, config, overrides)
    if out is not None:
        cfg.out_dir = str(out)
    run_demo(cfg)


@app.command()
def train(
    data: Path = typer.Argument(..., help="Folder of exemplar videos (.mp4 + same-name .txt captions) and masks/."),
    overrides: list[str] = typer.Argument(None, help="Trainer overrides such as optim.steps=500."),
    model: Path = typer.Option(None, "--model", "-m", help="diffusers-format Mochi directory (default: toy bundle)."),
    method: str = typer.Option("dreamrelation", help="Method or ablation preset (e.g. direct_lora, wo_hmt)."),
    config: Path = typer.Option(None, "--config", "-c", help="YAML file with TrainConfig fields."),
    out: Path = typer.Option(Path("runs/train"), "--out", help="Run folder: checkpoints, adapters, loss.csv."),
    resume: bool = typer.Option(False, help="Continue from the latest checkpoint in --out."),
) -> None:
    """Train relation adapters on a folder of exemplar videos with colour-coded masks."""
    from dreamrelation.config import load_config
    from dreamrelation.data.folder import load_exemplar_folder
    from dreamrelation.data.prepare import prepare_samples
    from dreamrelation.sampling.generate import load_pipeline
    from dreamrelation.training.config import PRESET_NAMES, preset
    from dreamrelation.training.trainer import train_adapters

    if method not in PRESET_NAMES:
        raise UserError(f"--method {method!r}: unknown preset; choose one of {', '.join(PRESET_NAMES)}")
    cfg = load_config(preset(method), config, overrides)
    videos, captions, masks, names = load_exemplar_folder(data)  # check the user's data before the model
    pipe = load_pipeline(model)
    samples = prepare_samples(pipe, videos, captions, masks, names)
    result = train_adapters(pipe.transformer, samples, cfg, out, resume=resume)
    typer.echo(f"adapters: {result.adapter_dir}")


@toy_app.command("pretrain")
def toy_pretrain(
    out: Path = typer.Option(None, "--out", help="Bundle directory (default: the packaged toy bundle)."),
    stage: list[str] = typer.Option(["vae", "transformer"], help="Stages to run: vae, transformer."),
    overrides: list[str] = typer.Argument(None, help="PretrainConfig overrides such as transformer_steps=1000."),
    work_dir: Path = typer.Option(Path("runs/toy-pretrain"), help="Where stage results are kept."),
) -> None:
    """Pretrain the toy Mochi (VAE on random shapes, transformer on base relations only); seeded."""
    from dreamrelation.config import load_config
    from dreamrelation.sampling.generate import TOY_BUNDLE
    from dreamrelation.toy.pretrain import PretrainConfig, pretrain

    unknown = sorted(set(stage) - {"vae", "transformer"})
    if unknown:
        raise UserError(f"--stage {unknown[0]!r}: choose vae and/or transformer")
    cfg = load_config(PretrainConfig, None, overrides)
    bundle = pretrain(out or TOY_BUNDLE, cfg, tuple(stage), work_dir=work_dir)
    typer.echo(f"bundle: {bundle}" if bundle else f"stage results in {work_dir}; run the other stage to finish")


@toy_app.command("render")
def toy_render(
    out: Path = typer.Argument(..., help="Output folder: videos/*.mp4 + .txt captions, masks/<name>/*.png."),
    relation: str = typer.Option("high_fiving", help="Relation name (see `dreamrelation toy relations`)."),
    num: int = typer.Option(16, help="Number of videos."),
    seed: int = typer.Option(0, help="Random seed."),
    person_prob: float = typer.Option(1.0, help="Probability that a subject is a person."),
) -> None:
    """Render toy relation videos with captions and paper-format subject masks."""
    from dreamrelation.demo import DemoConfig, render_exemplars
    from dreamrelation.toy import world

    world.get_relation(relation)
    cfg = DemoConfig(relation=relation, num_exemplars=num, exemplar_seed=seed)
    if person_prob != 1.0:
        raise UserError("--person-prob: only person exemplars (1.0) are supported by `toy render` for now")
    render_exemplars(cfg, out)
    typer.echo(f"{num} videos in {out}")


@toy_app.command("relations")
def toy_relations() -> None:
    """List the toy relations (base ones are used in pretraining; held-out ones are customization targets)."""
    from dreamrelation.toy import world

    for rel in world.RELATIONS.values():
        typer.echo(f"{rel.name:20s} {'held-out' if rel.held_out else 'base    '}  {world.caption_template(rel)}")


def main() -> None:
    """Entry point: run the app, turning user errors into one line and exit code 2."""
    try:
        app()
    except UserError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
