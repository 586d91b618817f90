"""Training monitor: scalars to TensorBoard / W&B and validation samples every N steps.

It plugs into :func:`~dreamrelation.training.trainer.train_adapters` as its per-step ``callback``, so the
training loop stays as it is. Validation switches to the inference adapters, generates, and leaves the
adapter choice to the trainer's next step (which sets it anew every step).
"""

from __future__ import annotations

from pathlib import Path

from dreamrelation.adapters.triplet import set_active_roles
from dreamrelation.backbones.registry import model_profile
from dreamrelation.errors import UserError
from dreamrelation.inference.generate import Sampling, generate_videos
from dreamrelation.training.config import TrainConfig
from dreamrelation.training.memory import frozen_parts_on
from dreamrelation.training.trainer import lr_at
from dreamrelation.utils.extras import require
from dreamrelation.utils.media import contact_sheet, save_png, write_video


class TrainingMonitor:
    """Callable ``(step, loss)``: logs scalars and writes validation videos as configured in ``cfg.monitor``."""

    def __init__(self, cfg: TrainConfig, out_dir: str | Path, pipe=None, rank: int = 0):
        self.cfg, self.out, self.pipe, self.rank = cfg, Path(out_dir), pipe, rank
        mon = cfg.monitor
        if mon.validate_every and not mon.prompts:
            raise UserError(
                "monitor.validate_every is set but monitor.prompts is empty; add prompts to validate"
            )
        if mon.validate_every and pipe is None:
            raise UserError(
                "validation needs the pipeline's VAE and text encoder; train from videos, not a cache"
            )
        self.writer = self.run = None
        if rank != 0:
            return
        if mon.tensorboard:
            tensorboard = require(
                "torch.utils.tensorboard",
                "monitor.tensorboard needs the tensorboard package: pip install tensorboard",
            )
            self.writer = tensorboard.SummaryWriter(str(self.out / "tensorboard"))
        if mon.wandb:
            wandb = require("wandb", "monitor.wandb needs the wandb package: pip install wandb")
            self.run = wandb.init(
                project=mon.wandb_project,
                mode=mon.wandb_mode,
                dir=str(self.out),
                config={"method": cfg.method},
            )

    def __call__(self, step: int, loss: float) -> None:
        if self.rank != 0:
            return
        lr = lr_at(step - 1, self.cfg.optim)
        if self.writer is not None:
            self.writer.add_scalar("train/loss", loss, step)
            self.writer.add_scalar("train/lr", lr, step)
        if self.run is not None:
            self.run.log({"train/loss": loss, "train/lr": lr}, step=step)
        every = self.cfg.monitor.validate_every
        if every and (step % every == 0 or step == self.cfg.optim.steps):
            self.validate(step)

    def validate(self, step: int) -> Path:
        """Generate the validation prompts with the inference adapters into ``validation/step_N``."""

        mon = self.cfg.monitor
        jobs = [(p, s) for p in mon.prompts for s in mon.seeds]
        set_active_roles(self.pipe.transformer, self.cfg.adapter.inference_roles, trainable=False)
        device = next(self.pipe.transformer.parameters()).device
        with frozen_parts_on(self.pipe, device):  # parked on the CPU by memory.offload_frozen
            videos = generate_videos(
                self.pipe,
                [j[0] for j in jobs],
                [j[1] for j in jobs],
                Sampling(
                    mon.num_inference_steps,
                    mon.guidance_scale,
                    num_frames=mon.num_frames,
                    height=mon.height,
                    width=mon.width,
                ),
            )
        folder = self.out / "validation" / f"step_{step:06d}"
        fps = model_profile(self.pipe).sampling_defaults[2]
        for i, video in enumerate(videos):
            write_video(folder / f"{i:02d}_seed{jobs[i][1]}.mp4", video, fps=fps)
        save_png(folder / "contact_sheet.png", contact_sheet([videos], col_labels=[j[0] for j in jobs]))
        if self.writer is not None:
            import numpy as np
            import torch

            grid = torch.from_numpy(np.stack(videos)).permute(0, 1, 4, 2, 3)  # (N, T, C, H, W) uint8
            self.writer.add_video("validation", grid, step, fps=fps)
        return folder

    def close(self) -> None:
        """Flush and close the loggers."""
        if self.writer is not None:
            self.writer.close()
        if self.run is not None:
            self.run.finish()
