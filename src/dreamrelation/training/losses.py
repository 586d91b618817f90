"""Losses: rectified-flow inputs/targets (per-backbone convention), hybrid mask loss, relational contrastive loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dreamrelation.core.flow import MOCHI_FLOW, FlowConvention
from dreamrelation.training.config import ContrastiveConfig


def shift_sigmas(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """The timestep shift of SD3 / Wan: ``shift * s / (1 + (shift - 1) * s)``; ``shift`` > 1 moves noise levels
    towards pure noise (3: the median of U(0, 1) becomes 0.75), 1 leaves them as they are."""
    return sigma if shift == 1.0 else shift * sigma / (1.0 + (shift - 1.0) * sigma)


def flow_matching_inputs(
    latents: torch.Tensor,
    generator: torch.Generator | None = None,
    flow: FlowConvention = MOCHI_FLOW,
    shift: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noisy input, model timestep, velocity target and noise level for clean ``latents`` (B, C, F, h, w).

    sigma ~ U(0, 1) per sample (then :func:`shift_sigmas`), ``z_sigma = (1 - sigma) z + sigma eps``. Mochi (default ``flow``): timestep
    ``(1 - sigma) * 1000`` and target ``v = z - eps``, the velocity towards the data, as
    ``FlowMatchEulerDiscreteScheduler(invert_sigmas=True)`` integrates it (``x += (s_next - s) * v`` with its
    ``s = 1 - sigma`` increasing from 0 at pure noise). Other backbones: see :class:`FlowConvention`.
    Random numbers are drawn on the CPU from ``generator`` so runs reproduce across devices.
    """
    b = latents.shape[0]
    sigma = shift_sigmas(torch.rand(b, generator=generator, dtype=torch.float32), shift)
    eps = torch.randn(latents.shape, generator=generator, dtype=torch.float32)
    sigma, eps = sigma.to(latents.device), eps.to(latents.device)
    z = latents.float()
    s = sigma.view(b, *([1] * (latents.ndim - 1)))
    noisy = (1.0 - s) * z + s * eps
    return noisy, flow.timestep(sigma), flow.target(z, eps), sigma


def condition_on_first_frames(
    latents: torch.Tensor, noisy: torch.Tensor, timestep: torch.Tensor, frames: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Image conditioning as Wan 2.2's image pipeline samples it: the first ``frames`` latent frames clean
    (the data itself) at timestep 0, the rest noised at ``timestep`` ``(B,)``; returns the input and the
    per-frame timesteps ``(B, F)``."""
    if not 0 < frames < latents.shape[2]:
        raise ValueError(f"{frames} conditioning frames of {latents.shape[2]} latent frames")
    noisy = torch.cat([latents[:, :, :frames].to(noisy.dtype), noisy[:, :, frames:]], dim=2)
    per_frame = timestep[:, None].expand(-1, latents.shape[2]).clone()
    per_frame[:, :frames] = 0.0
    return noisy, per_frame


def _broadcast_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if mask.ndim == like.ndim - 1:  # (B, F, h, w) -> (B, 1, F, h, w): same mask for every channel
        mask = mask.unsqueeze(1)
    return mask.to(device=like.device, dtype=torch.float32)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``mse(pred * M, target * M)``: mean over *all* elements (not only the masked ones), as the public code."""
    m = _broadcast_mask(mask, pred)
    return ((pred.float() - target.float()) * m).square().mean()


def hybrid_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, lambda_m: float
) -> torch.Tensor:
    """HMT loss: ``mse(pred, target) + lambda_m * mse(pred * M, target * M)``; M broadcast over channels."""
    return F.mse_loss(pred.float(), target.float()) + lambda_m * masked_mse(pred, target, mask)


def _bank_logits(anchors: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Cosine logits ``(B, F, P)`` of anchors ``(B, F, C)`` against bank differences ``(P, F, C)``; NaN slots
    (frame indices a conditioning frame touched) are ``-inf`` and pass no gradient."""
    missing = bank.isnan().any(dim=-1)  # (P, F)
    bank = F.normalize(bank.nan_to_num(0.0), dim=-1)
    logits = torch.einsum("bfc,pfc->bfp", anchors, bank)
    if bool(missing.any()):
        logits = logits.masked_fill(missing.T[None], float("-inf"))
    return logits


class RelationalContrastiveLoss:
    """Space-time relational contrastive loss with FIFO memory banks.

    For a prediction (B, C, F, h, w): pool over space -> (B, F, C). Anchors are consecutive temporal
    differences (B, F-1, C). Positives of anchor (b, f): up to ``n_pos`` difference vectors of earlier videos
    at the same frame index f (positive bank) and the differences of the other batch items at f. Negatives:
    the single-frame pooled vectors of this batch and up to ``n_neg`` from the negative bank. All vectors are
    L2-normalised; loss = logsumexp(all logits / T) - logsumexp(positive logits / T), mean over anchors.
    After the loss the detached current vectors are pushed into the banks.

    With no positive at all (empty bank and batch size 1, e.g. the first step) the loss is 0.
    """

    def __init__(
        self,
        temperature: float = 0.07,
        n_pos: int = 4,
        n_neg: int = 10,
        pos_bank: int = 10,
        neg_bank: int = 64,
    ) -> None:
        self.temperature = temperature
        self.n_pos, self.n_neg = n_pos, n_neg
        self.pos_bank_size, self.neg_bank_size = pos_bank, neg_bank
        self.pos: torch.Tensor | None = None  # (N, F-1, C) difference vectors of earlier videos
        self.neg: torch.Tensor | None = None  # (M, C) single-frame vectors of earlier videos

    @classmethod
    def from_config(cls, cfg: ContrastiveConfig) -> RelationalContrastiveLoss:
        """Build from a :class:`ContrastiveConfig`."""
        return cls(cfg.temperature, cfg.n_pos, cfg.n_neg, cfg.pos_bank, cfg.neg_bank)

    @staticmethod
    def _sample(bank: torch.Tensor | None, n: int, generator: torch.Generator | None) -> torch.Tensor | None:
        if bank is None or n <= 0 or len(bank) == 0:
            return None
        if len(bank) > n:
            bank = bank[torch.randperm(len(bank), generator=generator)[:n]]
        return bank

    def __call__(
        self, pred: torch.Tensor, generator: torch.Generator | None = None, first: int = 0
    ) -> torch.Tensor:
        """The loss for ``pred`` (B, C, F, h, w); then push this batch into the banks.

        ``first``: leading conditioning frames (an image-to-video step) that take no part: anchors and
        negatives come from the generated frames only, and the differences touching a conditioning frame are
        stored as NaN in the positive bank (no positive for that frame index later).
        """
        frames = pred.float().mean(dim=(3, 4)).transpose(1, 2)  # (B, F, C)
        diffs = frames[:, 1:] - frames[:, :-1]  # (B, F-1, C)
        if first:
            diffs = torch.cat([torch.full_like(diffs[:, :first], float("nan")), diffs[:, first:]], dim=1)
        if self.pos is not None and self.pos.shape[1:] != diffs.shape[1:]:
            raise ValueError(
                f"RCL bank holds {tuple(self.pos.shape[1:])} differences, got {tuple(diffs.shape[1:])}"
            )
        if first:  # no slicing otherwise: the same autograd graph as before image-to-video steps
            frames, generated = frames[:, first:], diffs[:, first:]
        else:
            generated = diffs
        loss = self._loss(frames, generated, generator, first)
        self._push(frames.detach(), diffs.detach())
        return loss

    def _loss(
        self, frames: torch.Tensor, diffs: torch.Tensor, generator: torch.Generator | None, first: int = 0
    ) -> torch.Tensor:
        b, f, c = frames.shape
        zero = frames.sum() * 0.0
        bank_pos = self._sample(self.pos, self.n_pos, generator)
        if diffs.shape[1] < 1 or (bank_pos is None and b < 2):
            return zero
        anchors = F.normalize(diffs, dim=-1)  # (B, F', C)
        pos_logits = []
        if bank_pos is not None:
            bank_pos = bank_pos[:, first:] if first else bank_pos
            pos_logits.append(_bank_logits(anchors, bank_pos.to(anchors.device)))
        if b > 1:
            others = torch.einsum("bfc,kfc->bfk", anchors, anchors)  # (B, F', B)
            self_pair = torch.eye(b, dtype=torch.bool, device=anchors.device)[:, None, :]
            pos_logits.append(others.masked_fill(self_pair, float("-inf")))
        negatives = [F.normalize(frames.reshape(b * f, c), dim=-1)]
        bank_neg = self._sample(self.neg, self.n_neg, generator)
        if bank_neg is not None:
            negatives.append(F.normalize(bank_neg.to(anchors.device), dim=-1))
        neg_logits = torch.einsum("bfc,nc->bfn", anchors, torch.cat(negatives))
        pos = torch.cat(pos_logits, dim=-1) / self.temperature
        every = torch.cat([pos, neg_logits / self.temperature], dim=-1)
        positive = torch.logsumexp(pos, dim=-1)
        terms = torch.logsumexp(every, dim=-1) - positive
        valid = torch.isfinite(positive)  # anchors with a positive (NaN bank slots are none)
        if bool(valid.all()):
            return terms.mean()
        return terms[valid].mean() if bool(valid.any()) else zero

    def _push(self, frames: torch.Tensor, diffs: torch.Tensor) -> None:
        b, f, c = frames.shape
        if diffs.shape[1] >= 1:
            pos = diffs if self.pos is None else torch.cat([self.pos.to(diffs.device), diffs])
            self.pos = pos[-self.pos_bank_size :] if self.pos_bank_size > 0 else pos[:0]
        neg = frames.reshape(b * f, c)
        neg = neg if self.neg is None else torch.cat([self.neg.to(neg.device), neg])
        self.neg = neg[-self.neg_bank_size :] if self.neg_bank_size > 0 else neg[:0]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Bank contents as CPU tensors (empty tensors for empty banks)."""
        empty = torch.zeros(0)
        return {
            "pos": empty if self.pos is None else self.pos.detach().cpu().contiguous(),
            "neg": empty if self.neg is None else self.neg.detach().cpu().contiguous(),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore banks written by :meth:`state_dict`."""
        self.pos = state["pos"].clone() if state["pos"].numel() else None
        self.neg = state["neg"].clone() if state["neg"].numel() else None
