"""Networks: dense backbones (:mod:`~rca.models.backbones`, :mod:`~rca.models.resnet38`,
:mod:`~rca.models.efficientnet`), the CAM classifier with RCA heads
(:mod:`~rca.models.classifier`) and the DeepLab-v2 segmentation model (:mod:`~rca.models.deeplab`).

Every model keeps its pretrained feature extractor as the submodule ``model.backbone``; all other
parameters are new layers (trained with a larger learning rate).
"""

from rca.models.backbones import OUTPUT_STRIDES, build_backbone, freeze_bn, load_backbone_weights
from rca.models.classifier import RCAClassifier, build_classifier, rca_classification_loss
from rca.models.deeplab import ASPP, MSC, DeepLabV2, build_deeplab, deeplab_param_groups
from rca.models.resnet38 import ResNet38

__all__ = [
    "ASPP",
    "MSC",
    "OUTPUT_STRIDES",
    "DeepLabV2",
    "RCAClassifier",
    "ResNet38",
    "build_backbone",
    "build_classifier",
    "build_deeplab",
    "deeplab_param_groups",
    "freeze_bn",
    "load_backbone_weights",
    "rca_classification_loss",
]
