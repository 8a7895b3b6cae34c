"""The CAM classifier of RCA: coarse CAM head, region embeddings, memory and semantic aggregation.

Zhou et al., "Regional Semantic Contrast and Aggregation for Weakly Supervised Semantic
Segmentation", CVPR 2022, arXiv:2203.09653 (released code: maeve07/RCA ``models/rca.py``)::

    images ─ backbone ─ X (B, C, h, w) ─┬─ coarse head (1x1) ─ M^c ─ GAP ─ scores_coarse
                                        ├─ embedding head ─ F (B, D, h, w)
                                        │     ├─ region embeddings (masked pooling, Sec. 3.1)
                                        │     │     ─► semantic contrast (trainer) / memory push
                                        │     └─ pixel queries ─ attention over memory centres
                                        │                        ─ context (B, D, h, w)  (Sec. 3.3)
                                        └─ concat[X, context] ─ fine head (1x1) ─ M^f ─ GAP
                                                                                 ─ scores

``M^f`` are the CAMs used downstream. The paper and the released code put a 1x1 fuse convolution
(``C + D -> C``) before the 1x1 classifier; with nothing between them the pair is one linear map,
which this module learns as one 1x1 convolution (see :meth:`RCAClassifier.fine_cams`).
``method="cam"`` switches every RCA part off (no embedding head, memory or aggregation): a plain CAM
classifier whose CAMs are ``M^c``, for ablation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rca.kmeans import kmeans
from rca.memory import RegionalMemory
from rca.models import backbones
from rca.models.backbones import build_backbone

METHODS = ("rca", "cam")
AGGREGATIONS = ("cosine", "learnable", "scaled", "unnormalised", "none")
EMBED_HIDDEN_CHANNELS = 512  # width of the embedding head's 3x3 conv (released code: 512)


def region_masks(cams: torch.Tensor, image_index: torch.Tensor,
                 labels: torch.Tensor) -> torch.Tensor:
    """Object region of each (image, class) pair, from the coarse CAMs (released code's rule).

    The region of class ``c`` in image ``b`` is where the softmax of ``cams[b]`` over classes, at
    ``c``, is above its own spatial mean. A map with no pixel above its mean (a constant map) gives
    the whole image. CAMs are detached: the masks carry no gradient.

    Args:
        cams: ``(B, K, h, w)`` float class maps (raw scores).
        image_index: ``(N,)`` int64 image of each region, in ``[0, B)``.
        labels: ``(N,)`` int64 class of each region, in ``[0, K)``.

    Returns:
        ``(N, h, w)`` bool masks.
    """
    probs = cams.detach().softmax(1)[image_index, labels]  # (N, h, w)
    masks = probs > probs.mean((1, 2), keepdim=True)
    return masks | ~masks.flatten(1).any(1)[:, None, None]


class RCAClassifier(nn.Module):
    """Multi-label CAM classifier with regional semantic contrast and aggregation.

    Submodules: ``backbone`` (pretrained; the trainer gives every other parameter ``head_lr_mult``
    times its learning rate), ``coarse_head``; for ``method="rca"`` also ``embed_head``,
    ``fine_head`` (1x1, ``C + D -> K``, no bias, as ``coarse_head``) and ``memory`` (a
    :class:`~rca.memory.RegionalMemory`, buffers only), and the
    buffers ``centres`` ``(K * num_centres, D)`` (unit-norm), ``centre_labels``
    ``(K * num_centres,)`` int64 and ``centre_valid`` ``(K * num_centres,)`` bool, refreshed by
    :meth:`update_centres`.

    New layers are initialised as in the released code: conv weights ~ N(0, 0.01), biases 0,
    BatchNorm weight 1 and bias 0.

    Args:
        backbone: module mapping ``(B, 3, H, W)`` images to ``(B, C, h, w)`` features, with an
            ``out_channels`` attribute (see :func:`rca.models.backbones.build_backbone`).
        num_classes: K, the number of foreground classes (length of the tag vector).
        method: ``"rca"`` or ``"cam"``.
        embed_dim: D, dimension of region and pixel embeddings.
        memory_size, memory_mode, memory_momentum: see :class:`~rca.memory.RegionalMemory`.
        num_centres: k-means centres per class for semantic aggregation (released code: 10).
        aggregation: how pixel queries attend to the centres (see :meth:`aggregate`).
        aggregation_temperature: ``tau > 0`` of the ``"cosine"`` attention, or the initial value
            of the learned one (``"learnable"``); ignored otherwise.

    Raises:
        ValueError: on an unknown method or aggregation, a non-positive temperature, or a backbone
            without ``out_channels``.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, method: str = "rca",
                 embed_dim: int = 128, memory_size: int = 500, memory_mode: str = "fifo",
                 memory_momentum: float = 0.99, num_centres: int = 10,
                 aggregation: str = "cosine", aggregation_temperature: float = 0.1):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"classifier method must be one of {METHODS}, got {method!r} "
                             f"(config key cls.method)")
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r} "
                             f"(config key cls.aggregation)")
        if not aggregation_temperature > 0:
            raise ValueError(f"aggregation_temperature must be > 0, got {aggregation_temperature} "
                             f"(config key cls.aggregation_temperature)")
        channels = getattr(backbone, "out_channels", None)
        if not isinstance(channels, int):
            raise ValueError(f"backbone {type(backbone).__name__} needs an integer `out_channels`")
        self.num_classes, self.method = num_classes, method
        self.backbone = backbone
        self.coarse_head = nn.Conv2d(channels, num_classes, 1, bias=False)
        if method == "rca":
            self.embed_dim, self.num_centres, self.aggregation = embed_dim, num_centres, aggregation
            self.embed_head = nn.Sequential(
                nn.Conv2d(channels, EMBED_HIDDEN_CHANNELS, 3, padding=1, bias=False),
                nn.BatchNorm2d(EMBED_HIDDEN_CHANNELS),
                nn.ReLU(inplace=True),
                nn.Conv2d(EMBED_HIDDEN_CHANNELS, embed_dim, 1),
            )
            self.fine_head = nn.Conv2d(channels + embed_dim, num_classes, 1, bias=False)
            self.memory = RegionalMemory(num_classes, memory_size, embed_dim, memory_mode,
                                         memory_momentum)
            num = num_classes * num_centres
            self.register_buffer("centres", torch.zeros(num, embed_dim))
            self.register_buffer("centre_labels",
                                 torch.arange(num_classes).repeat_interleave(num_centres))
            self.register_buffer("centre_valid", torch.zeros(num, dtype=torch.bool))
            log_temperature = torch.tensor(math.log(aggregation_temperature))
            if aggregation == "learnable":
                self.log_temperature = nn.Parameter(log_temperature)  # a head parameter
            else:
                self.register_buffer("log_temperature", log_temperature)
        else:
            self.memory = None
        for name, module in self.named_modules():
            if name.startswith("backbone"):
                continue
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.01)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor, tags: torch.Tensor | None = None) -> dict:
        """Class scores and CAMs; with ``tags`` (method ``"rca"``), the region embeddings too.

        Args:
            images: ``(B, 3, H, W)`` float, ImageNet-normalised.
            tags: optional ``(B, K)`` multi-hot image-level labels (0/1, any dtype).

        Returns:
            dict with ``scores`` ``(B, K)`` logits (GAP of ``cams``), ``scores_coarse`` ``(B, K)``
            (GAP of the coarse CAMs; ``None`` for method ``"cam"``), ``cams`` ``(B, K, h, w)`` raw
            (pre-ReLU) CAMs, for method ``"rca"`` ``attention`` (the second output of
            :meth:`aggregate`, for :func:`attention_statistics`), and, when ``tags`` is given and
            method is ``"rca"``, ``region_embeddings`` ``(N, D)`` (L2-normalised, with grad),
            ``region_labels`` ``(N,)`` int64 and ``region_images`` ``(N,)`` int64, one region per
            tagged class of each image, ordered by image then class.

        Raises:
            ValueError: if ``tags`` is not ``(B, K)``.
        """
        x = self.backbone(images)
        cams_coarse = self.coarse_head(x)
        if self.method == "cam":
            return {"scores": cams_coarse.mean((2, 3)), "scores_coarse": None, "cams": cams_coarse}
        features = self.embed_head(x)
        context, attention = self.aggregate(features)
        cams = self.fine_cams(x, context.to(x.dtype))
        outputs = {"scores": cams.mean((2, 3)), "scores_coarse": cams_coarse.mean((2, 3)),
                   "cams": cams, "attention": attention}
        if tags is not None:
            embeddings, labels, image_index = self.region_embeddings(features, cams_coarse, tags)
            outputs.update(region_embeddings=embeddings, region_labels=labels,
                           region_images=image_index)
        return outputs

    def fine_cams(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The fine CAMs: one 1x1 convolution of ``concat[x, context]`` (RCA, Sec. 3.3).

        The paper and the released code compute ``classifier(fuse(concat[x, context]))`` with two
        1x1 convolutions and nothing between them, a linear map of rank <= K learned as the product
        of two factors. From their N(0, 0.01) initialisation the gradient of each factor is scaled
        by the other: the pair's first SGD steps move the scores about 10 times less than a single
        layer's (``tests/test_classifier.py``), so the fine head lags on a small budget. Learning
        the same map as one convolution ``(K, C + D)`` (the function class is unchanged) raised
        RCA's MSRC seed from 48.46 to 50.79 and its pseudo label from 49.18 to 54.15 (means of
        seeds 0-2, README *Results*).

        Args:
            x: ``(B, C, h, w)`` backbone features; context: ``(B, D, h, w)``, same dtype.

        Returns:
            ``(B, K, h, w)`` raw fine CAMs.
        """
        return self.fine_head(torch.cat([x, context], 1))

    def region_embeddings(self, features: torch.Tensor, cams_coarse: torch.Tensor,
                          tags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Masked average of the embeddings over each tagged class's region (Sec. 3.1).

        Args:
            features: ``(B, D, h, w)`` embedding map F (gradients flow to it).
            cams_coarse: ``(B, K, h, w)`` coarse CAMs (used detached, via :func:`region_masks`).
            tags: ``(B, K)`` multi-hot image-level labels.

        Returns:
            ``embeddings`` ``(N, D)`` L2-normalised, ``labels`` ``(N,)`` int64 and
            ``image_index`` ``(N,)`` int64, N = number of nonzero tags.

        Raises:
            ValueError: if ``tags`` is not ``(B, K)``.
        """
        if tags.shape != cams_coarse.shape[:2]:
            raise ValueError(f"tags must have shape (B, K) = {tuple(cams_coarse.shape[:2])}, got "
                             f"{tuple(tags.shape)}")
        image_index, labels = (tags != 0).nonzero(as_tuple=True)
        masks = region_masks(cams_coarse, image_index, labels).flatten(1).to(features.dtype)
        pooled = torch.bmm(features.flatten(2)[image_index], masks[:, :, None]).squeeze(2)
        embeddings = pooled / masks.sum(1, keepdim=True)
        return F.normalize(embeddings, dim=1), labels, image_index

    @property
    def aggregation_temperature(self) -> float:
        """Current temperature of the ``"cosine"``/``"learnable"`` attention (a float)."""
        return float(self.log_temperature.detach().exp())

    def aggregate(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Semantic aggregation: each pixel gathers memory centres by attention (Sec. 3.3).

        Keys and values are the M valid centres ``c`` (unit-norm, no grad). The paper computes
        ``S = softmax(F Q^T)`` with pixel features ``F`` and centroids ``Q`` in one space (RCA, Zhou
        et al., CVPR 2022, arXiv:2203.09653, Sec. 3.3) and the context ``S Q``. Attention:

        * ``"cosine"`` (default): the paper's form on L2-normalised queries ``q`` and centres, with
          a temperature, ``softmax(q c^T / tau)``, ``tau = aggregation_temperature``. On unit
          vectors the logits lie in ``[-1/tau, 1/tau]``: without the temperature (or with the
          ``1/sqrt(D)`` of ``"scaled"``) the weights stay close to uniform ``1/M`` and the context is
          the mean centre whatever the pixel. The default ``tau`` was chosen on the demo (README,
          *Semantic aggregation*).
        * ``"learnable"``: as ``"cosine"`` with ``tau = exp(log_temperature)`` learned (initialised
          at ``aggregation_temperature``), as CLIP learns its logit scale.
        * ``"scaled"``: ``softmax(f c^T / sqrt(D))`` on the raw pixel embeddings ``f``, the
          transformer's scaled dot product; measured nearly uniform on the demo (kept for ablation).
        * ``"unnormalised"``: the released code's expression ``q c^T / num_centres * K`` on
          L2-normalised queries ``q``, with no softmax (``sim = matmul(query, key) / self.cluter_num
          * 20``; its queries, keys and values pass through learned 1x1/linear projections, left out
          here). The weights are signed and unnormalised: the context is a linear map of ``q`` onto
          the centres' span.
        * ``"none"``: no aggregation (the context is zero), the ablation that keeps every other
          part of RCA.

        Args:
            features: ``(B, D, h, w)`` embedding map F.

        Returns:
            ``context`` ``(B, D, h, w)`` and ``attention`` ``(B, h*w, M)`` over the M valid
            centres (in ``centres`` order; rows sum to 1 except for ``"unnormalised"``); before any
            centre exists (M = 0) or for ``"none"``, zeros and ``None``.
        """
        b, d, h, w = features.shape
        centres = self.centres[self.centre_valid]
        if centres.shape[0] == 0 or self.aggregation == "none":
            return features.new_zeros(b, d, h, w), None
        queries = features.flatten(2).transpose(1, 2)  # (B, hw, D)
        centres = centres.to(queries.dtype)
        if self.aggregation in ("cosine", "learnable"):
            logits = F.normalize(queries, dim=2) @ centres.t() / self.log_temperature.exp().to(queries.dtype)
            attention = logits.softmax(2)  # (B, hw, M)
        elif self.aggregation == "scaled":
            attention = (queries @ centres.t() / math.sqrt(d)).softmax(2)
        else:
            attention = (F.normalize(queries, dim=2) @ centres.t()) * (self.num_classes / self.num_centres)
        context = attention @ centres  # (B, hw, D)
        return context.transpose(1, 2).reshape(b, d, h, w), attention

    @torch.no_grad()
    def update_centres(self, seed: int = 0) -> None:
        """Recompute the per-class k-means centres from the memory (call once per epoch).

        For each class, :func:`rca.kmeans.kmeans` with ``k = num_centres`` over the class's memory
        entries (all of them if fewer than ``k``); classes without entries get no valid centre.
        Deterministic given the memory and ``seed``, so ranks with identical banks (see
        :meth:`rca.memory.RegionalMemory.push`) compute identical centres.

        Raises:
            RuntimeError: for method ``"cam"`` (no memory).
        """
        if self.memory is None:
            raise RuntimeError("update_centres needs method='rca' (method 'cam' has no memory)")
        keys, labels = self.memory.keys()
        generator = torch.Generator(device=keys.device).manual_seed(seed)
        self.centres.zero_()
        self.centre_valid.zero_()
        for c in range(self.num_classes):
            class_keys = keys[labels == c]
            if class_keys.shape[0] == 0:
                continue
            centres, _ = kmeans(class_keys, self.num_centres, generator=generator)
            start = c * self.num_centres
            self.centres[start:start + centres.shape[0]] = centres
            self.centre_valid[start:start + centres.shape[0]] = True

    @torch.no_grad()
    def memory_candidates(self, outputs: dict,
                          threshold: float = 0.7) -> tuple[torch.Tensor, torch.Tensor]:
        """Regions to write into the memory: those whose class probability exceeds ``threshold``.

        The released code enqueues a region of tagged class ``c`` in image ``b`` only if
        ``sigmoid(scores[b, c]) > 0.7`` (``scores`` = the fine scores).

        Args:
            outputs: the dict of :meth:`forward` called with tags.
            threshold: probability threshold in [0, 1] (config key ``cls.write_threshold``).

        Returns:
            ``embeddings`` ``(N', D)`` detached and ``labels`` ``(N',)`` int64, for
            :meth:`rca.memory.RegionalMemory.push`.

        Raises:
            KeyError: if ``outputs`` has no region embeddings (forward without tags, or method
                ``"cam"``).
        """
        if "region_embeddings" not in outputs:
            raise KeyError("memory_candidates needs the outputs of forward(images, tags) with "
                           "method='rca' (no 'region_embeddings' key)")
        images, labels = outputs["region_images"], outputs["region_labels"]
        keep = outputs["scores"][images, labels].sigmoid() > threshold
        return outputs["region_embeddings"].detach()[keep], labels[keep]


@torch.no_grad()
def attention_statistics(attention: torch.Tensor | None) -> dict[str, float]:
    """How selective the semantic aggregation is: mean entropy and mean largest weight.

    For logging per epoch (issue: a nearly uniform attention makes aggregation a no-op). Uniform
    attention over M centres has entropy ``log M`` and largest weight ``1/M``; one-hot has 0 and 1.

    Args:
        attention: ``(B, P, M)`` rows that are distributions over M centres (the ``"attention"``
            output of :meth:`RCAClassifier.forward` for ``"cosine"``, ``"learnable"`` and
            ``"scaled"``), or ``None`` (no centres yet, method ``"cam"``, aggregation ``"none"``).

    Returns:
        ``{}`` for ``None`` or rows that are not distributions (``"unnormalised"``); else
        ``attention_entropy`` (mean over rows, nats), ``attention_entropy_ratio`` (that divided by
        ``log M``, in [0, 1]; 1 when M = 1), ``attention_max_weight`` (mean over rows) and
        ``attention_centres`` (M).
    """
    if attention is None:
        return {}
    attention = attention.float()
    if attention.min() < 0 or not torch.allclose(attention.sum(-1), attention.new_ones(()), atol=1e-2):
        return {}
    m = attention.shape[-1]
    entropy = -(attention * attention.clamp_min(1e-12).log()).sum(-1).mean().item()
    return {"attention_entropy": entropy,
            "attention_entropy_ratio": entropy / math.log(m) if m > 1 else 1.0,
            "attention_max_weight": attention.amax(-1).mean().item(),
            "attention_centres": m}


def rca_classification_loss(outputs: dict, tags: torch.Tensor,
                            coarse_weight: float = 0.4) -> torch.Tensor:
    """Multi-label soft-margin loss on the fine scores plus ``coarse_weight`` x on the coarse ones.

    The classification part of RCA's objective (the semantic contrast term is added by the
    trainer). For method ``"cam"`` (``scores_coarse`` is ``None``) only the first term.

    Args:
        outputs: the dict of :meth:`RCAClassifier.forward`.
        tags: ``(B, K)`` multi-hot image-level labels.
        coarse_weight: weight of the coarse term (config key ``cls.coarse_weight``).

    Returns:
        Scalar float tensor.
    """
    tags = tags.to(outputs["scores"].dtype)
    loss = F.multilabel_soft_margin_loss(outputs["scores"], tags)
    if outputs.get("scores_coarse") is not None:
        loss = loss + coarse_weight * F.multilabel_soft_margin_loss(outputs["scores_coarse"], tags)
    return loss


def classifier_args(cfg, num_classes: int) -> dict:
    """Keyword arguments of :func:`build_classifier` from a ``cls`` config section
    (:class:`rca.config.ClsConfig`); checkpoints store them as ``model_args``."""
    return dict(
        num_classes=num_classes, backbone=cfg.backbone, output_stride=cfg.output_stride,
        pretrained=cfg.pretrained, method=cfg.method, embed_dim=cfg.embed_dim,
        memory_size=cfg.memory_size, memory_mode=cfg.memory_mode, memory_momentum=cfg.memory_momentum,
        num_centres=cfg.num_centres, aggregation=cfg.aggregation,
        aggregation_temperature=cfg.aggregation_temperature, freeze_bn=cfg.freeze_bn,
        frozen_stages=cfg.frozen_stages,
    )


def build_classifier(num_classes: int, backbone: str = "resnet50", output_stride: int = 16,
                     pretrained: str = "none", method: str = "rca", embed_dim: int = 128,
                     memory_size: int = 500, memory_mode: str = "fifo",
                     memory_momentum: float = 0.99, num_centres: int = 10,
                     aggregation: str = "cosine", aggregation_temperature: float = 0.1,
                     freeze_bn: bool = False, frozen_stages: int = 0) -> RCAClassifier:
    """Build an :class:`RCAClassifier` on ``build_backbone(backbone, output_stride, pretrained,
    frozen_stages)``; with ``freeze_bn`` the backbone's batch norms keep their pretrained
    statistics (:func:`rca.models.backbones.freeze_bn`; IRN does so for its ResNet-50, which
    suits the small batches of a CPU). The heads' own batch norm always trains.

    Args mirror the ``cls`` section of the config (see :class:`RCAClassifier` for their meaning).
    """
    net = build_backbone(backbone, output_stride=output_stride, pretrained=pretrained, frozen_stages=frozen_stages)
    return RCAClassifier(backbones.freeze_bn(net) if freeze_bn else net,
                         num_classes, method=method, embed_dim=embed_dim, memory_size=memory_size,
                         memory_mode=memory_mode, memory_momentum=memory_momentum,
                         num_centres=num_centres, aggregation=aggregation,
                         aggregation_temperature=aggregation_temperature)
