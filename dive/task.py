"""The training step as an ``nn.Module``: student + frozen teacher + EMA centre → named loss terms.

One module serves every method (``dive``, ``flyp``, ``flyp_replay``, ``snd``, ``ft``, ``lpft``); the training loop
does not branch on the method. State lives here and nowhere else: the centre m is a buffer (checkpointed with the
task), the loss weights come from the config.

Batch keys (tensors; images already preprocessed to float, texts tokenised):
``id_image`` (B,3,H,W), ``id_text`` (B,L) class prompts, ``id_label`` (B,), ``ref_image`` (B',3,H,W),
``ref_text`` (B',L) captions, and optionally ``ref_teacher_image`` / ``ref_teacher_text`` (B',D): cached,
L2-normalised teacher embeddings of the reference batch, used instead of running the teacher.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from dive import losses
from dive.config import USES_HEAD, USES_REFERENCE, USES_TEACHER, LossSettings, Method
from dive.distributed import gather_cat
from dive.models import logit_scale


class DiveTask(nn.Module):
    """Holds the student, the frozen teacher (or ``None`` with cached embeddings) and the EMA centre."""

    center: torch.Tensor

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        loss_cfg: LossSettings,
        embed_dim: int,
        head_weights: torch.Tensor | None = None,
        freeze_batchnorm: bool = True,
    ) -> None:
        super().__init__()
        self.cfg = loss_cfg
        self.freeze_batchnorm = freeze_batchnorm
        self.method = Method(loss_cfg.method)
        self.student = student
        self.teacher = teacher
        if teacher is not None:
            teacher.eval()
            teacher.requires_grad_(False)
        # m₀ = 0; a buffer, not a parameter: it is checkpointed but never receives gradient.
        self.register_buffer("center", torch.zeros(embed_dim))
        self.head: nn.Linear | None = None
        if self.method in USES_HEAD:
            if head_weights is None:
                raise ValueError(f"method {self.method.value} needs head_weights (the zero-shot head, C×D)")
            self.head = _head_from_zeroshot(head_weights, student)
            # FT/LP-FT train the image tower and the head only; freezing the rest up front keeps DDP from
            # waiting for gradients that never come.
            student.requires_grad_(False)
            student.visual.requires_grad_(True)
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []

    # ---------------------------------------------------------------------------------------------- modes
    def train(self, mode: bool = True) -> DiveTask:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # the teacher never leaves eval mode
        if self.freeze_batchnorm:  # ModelSettings.freeze_batchnorm: keep the pre-trained running statistics
            for module in self.student.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    @property
    def student_model(self) -> nn.Module:
        """The bare student (unwrapped from DDP / torch.compile), e.g. for export."""
        model = self.student
        model = getattr(model, "module", model)
        return getattr(model, "_orig_mod", model)

    def in_linear_probe(self, step: int) -> bool:
        return self.method is Method.lpft and step < self.cfg.lp_steps

    # ---------------------------------------------------------------------------------------------- step
    def forward(self, batch: Mapping[str, torch.Tensor], step: int = 0) -> dict[str, torch.Tensor]:
        """Loss terms of one (micro-)batch. ``loss`` is the total to back-propagate; the rest are for logging."""
        if self.method in USES_HEAD:
            return self._classification_step(batch, step)
        return self._contrastive_step(batch)

    def _classification_step(self, batch: Mapping[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        assert self.head is not None
        if self.in_linear_probe(step):
            with torch.no_grad():
                features = self.student(image=batch["id_image"])["image_features"]
        else:
            features = self.student(image=batch["id_image"])["image_features"]
        loss = losses.cross_entropy(self.head(features), batch["id_label"])
        return {"loss": loss, "loss_ce": loss.detach()}

    def _contrastive_step(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        method = self.method
        n_id = batch["id_image"].shape[0]
        images, texts = batch["id_image"], batch["id_text"]
        if method in USES_REFERENCE:
            # One student pass over ID and reference samples: a single DDP forward, one gradient sync.
            images = torch.cat([images, batch["ref_image"]])
            if method is not Method.snd:  # SnD constrains the image tower only
                texts = torch.cat([texts, batch["ref_text"]])
        out = self.student(images, texts)
        img, txt, scale = out["image_features"], out["text_features"], out["logit_scale"]
        loss_cl = losses.contrastive(img[:n_id], txt[:n_id], scale)
        terms: dict[str, torch.Tensor] = {"loss_cl": loss_cl.detach(), "temperature": (1.0 / scale).detach()}
        total = loss_cl

        if method is Method.flyp_replay:
            loss_replay = losses.replay(img[n_id:], txt[n_id:], scale)
            terms["loss_replay"] = loss_replay.detach()
            total = total + self.cfg.lambda_replay * loss_replay
        elif method in USES_TEACHER:
            t_img, t_txt = self._teacher_reference(batch, need_text=method is Method.dive)
            if method is Method.snd:
                loss_snd = losses.snd(img[n_id:], t_img)
                terms["loss_snd"] = loss_snd.detach()
                total = total + self.cfg.lambda_snd * loss_snd
            else:
                u = img[n_id:] - t_img  # image difference vectors
                v = txt[n_id:] - t_txt  # text difference vectors
                loss_avl = losses.avl(u, v, self.center)
                loss_pvl = losses.pvl(u, v)
                terms.update(
                    loss_avl=loss_avl.detach(),
                    loss_pvl=loss_pvl.detach(),
                    u_norm=u.detach().norm(dim=-1).mean(),
                    v_norm=v.detach().norm(dim=-1).mean(),
                )
                total = total + self.cfg.lambda_avl * loss_avl + self.cfg.lambda_pvl * loss_pvl
                if self.training:
                    self._pending.append((u.detach(), v.detach()))
        terms["loss"] = total
        return terms

    @torch.no_grad()
    def _teacher_reference(
        self, batch: Mapping[str, torch.Tensor], need_text: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Teacher embeddings of the reference batch: cached columns when given, else a frozen forward pass."""
        if "ref_teacher_image" in batch and (not need_text or "ref_teacher_text" in batch):
            t_txt = batch["ref_teacher_text"] if need_text else None
            return batch["ref_teacher_image"], t_txt
        if self.teacher is None:
            raise ValueError(
                f"method {self.method.value} needs the frozen teacher or cached teacher embeddings "
                "(batch keys ref_teacher_image / ref_teacher_text) — neither was given"
            )
        out = self.teacher(batch["ref_image"], batch["ref_text"] if need_text else None)
        return out["image_features"], out["text_features"]

    # ---------------------------------------------------------------------------------------------- centre
    def discard_pending(self) -> None:
        """Forget this step's difference vectors: a skipped step must not move the centre."""
        self._pending.clear()

    @torch.no_grad()
    def update_center(self) -> None:
        """EMA update of m from the vectors of this step's forward passes; call after the optimiser step.

        Vectors are gathered from all ranks first, so every rank ends the step with the same centre.
        """
        if not self._pending:
            return
        u = gather_cat(torch.cat([p[0] for p in self._pending]))
        v = gather_cat(torch.cat([p[1] for p in self._pending]))
        self._pending.clear()
        self.center.copy_(losses.ema_center(self.center, u, v, self.cfg.ema_momentum))


def _head_from_zeroshot(head_weights: torch.Tensor, model: nn.Module) -> nn.Linear:
    """Linear head on normalised image features, initialised to logit_scale × zero-shot weights (WiSE-FT's FT)."""
    num_classes, dim = head_weights.shape
    head = nn.Linear(dim, num_classes)
    with torch.no_grad():
        head.weight.copy_(logit_scale(model).exp() * F.normalize(head_weights, dim=-1))
        head.bias.zero_()
    return head
