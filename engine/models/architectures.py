"""The torchvision architectures of the zoo: names, tasks and descriptions, without torch.

`engine.models.zoo` lists and resolves names from this table without importing torch;
`engine.models.torchvision_models` builds the networks.
"""

from __future__ import annotations

from typing import NamedTuple

from engine.models.base import Task

__all__ = ["ARCHITECTURES", "ZOO_PREFIX", "Architecture"]

#: Prefix of the zoo names of torchvision architectures.
ZOO_PREFIX = "torchvision/"


class Architecture(NamedTuple):
    """A torchvision architecture the zoo offers.

    Attributes:
        task: What the network predicts.
        description: One line for `tessera models`.

    """

    task: Task
    description: str


#: Every torchvision architecture Tessera wraps, by torchvision's builder name.
ARCHITECTURES: dict[str, Architecture] = {
    "fasterrcnn_resnet50_fpn_v2": Architecture(
        "detection", "Faster R-CNN, ResNet-50 FPN v2 backbone, COCO (91 labels)"
    ),
    "fasterrcnn_mobilenet_v3_large_fpn": Architecture(
        "detection", "Faster R-CNN, MobileNetV3-Large FPN backbone, COCO (fast on CPU)"
    ),
    "retinanet_resnet50_fpn_v2": Architecture(
        "detection", "RetinaNet, ResNet-50 FPN v2 backbone, COCO"
    ),
    "fcos_resnet50_fpn": Architecture("detection", "FCOS, ResNet-50 FPN backbone, COCO"),
    "ssdlite320_mobilenet_v3_large": Architecture(
        "detection", "SSDlite 320x320, MobileNetV3-Large backbone, COCO (fastest)"
    ),
    "maskrcnn_resnet50_fpn_v2": Architecture(
        "instance_segmentation", "Mask R-CNN, ResNet-50 FPN v2 backbone, COCO masks"
    ),
    "keypointrcnn_resnet50_fpn": Architecture(
        "keypoints", "Keypoint R-CNN, ResNet-50 FPN, COCO person with 17 keypoints"
    ),
    "resnet18": Architecture("classification", "ResNet-18, ImageNet-1k"),
    "resnet50": Architecture("classification", "ResNet-50, ImageNet-1k"),
    "efficientnet_b0": Architecture("classification", "EfficientNet-B0, ImageNet-1k"),
    "mobilenet_v3_small": Architecture("classification", "MobileNetV3-Small, ImageNet-1k"),
    "mobilenet_v3_large": Architecture("classification", "MobileNetV3-Large, ImageNet-1k"),
}
