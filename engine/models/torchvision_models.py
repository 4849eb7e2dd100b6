"""Adapters for torchvision's detection, segmentation, keypoint and classification models.

One adapter class per task family; each takes the torchvision architecture name and where
its weights come from (torchvision's pretrained weights, a local file, or random). Class
names come from the weights enum's metadata, which torchvision ships (no download), and
torchvision's label integers index straight into them: for the COCO detectors that list
starts with ``"__background__"`` and holds ``"N/A"`` gaps, exactly as torchvision has it.

Example:
    >>> model = TorchvisionDetector("fasterrcnn_mobilenet_v3_large_fpn")  # doctest: +SKIP
    >>> model.load("cpu"); model.infer([image], conf=0.5)[0].xyxy  # doctest: +SKIP

"""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import numpy as np
import torch

from engine.detections import Detections
from engine.masks import encode_masks
from engine.models.architectures import ARCHITECTURES, ZOO_PREFIX
from engine.models.base import ModelAdapter
from engine.models.checkpoint import read_weights

#: Seconds `TorchvisionAdapter.check_ready` waits to reach the weights' host.
PROBE_TIMEOUT_S = 3.0
#: Background class name of torchvision detectors; label 0.
BACKGROUND = "__background__"


# Architectures that resize inside the network to min_size/max_size (GeneralizedRCNNTransform
# with configurable sizes); SSD fixes its own size.
_RESIZING = {
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "retinanet_resnet50_fpn_v2",
    "fcos_resnet50_fpn",
    "maskrcnn_resnet50_fpn_v2",
    "keypointrcnn_resnet50_fpn",
}


# ---------------------------------------------------------------------- conversions
def images_to_tensors(
    images: Sequence[np.ndarray], device: torch.device | str
) -> list[torch.Tensor]:
    """Turn HWC RGB uint8 images into float CHW tensors in [0, 1] on ``device``.

    Grayscale (HW) images are repeated to three channels; an alpha channel is dropped.

    Example:
        >>> images_to_tensors([np.zeros((4, 5, 3), np.uint8)], "cpu")[0].shape
        torch.Size([3, 4, 5])

    """
    return [_uint8_chw(image, device).float().div_(255.0) for image in images]


def detections_from_output(
    output: Mapping[str, torch.Tensor], mask_threshold: float = 0.5
) -> Detections:
    """Convert one image's torchvision detection output into `Detections`.

    Reads ``boxes``, ``scores`` and ``labels``, and when present ``masks`` ((N, 1, H, W)
    probabilities, thresholded at ``mask_threshold`` and stored as RLE) and ``keypoints``
    ((N, K, 3); the score of each keypoint is ``sigmoid(keypoints_scores)`` when the
    output has ``keypoints_scores``, else the visibility flag).

    Args:
        output: One dict of a torchvision detector's output list.
        mask_threshold: Probability above which a pixel belongs to a mask.

    Returns:
        The objects, with ``class_idxs`` = torchvision's labels.

    Example:
        >>> out = {"boxes": torch.tensor([[1.0, 2, 3, 4]]), "scores": torch.tensor([0.9]),
        ...        "labels": torch.tensor([1])}
        >>> detections_from_output(out).class_idxs.tolist()
        [1]

    """
    boxes = output["boxes"].detach().float().cpu().numpy().reshape(-1, 4)
    masks_rle = None
    if "masks" in output:
        masks = output["masks"].detach()
        masks = (masks[:, 0] if masks.ndim == 4 else masks) > mask_threshold
        masks_rle = encode_masks(masks.cpu().numpy())
    keypoints = None
    if "keypoints" in output:
        keypoints = output["keypoints"].detach().float().clone()
        if "keypoints_scores" in output:
            keypoints[..., 2] = output["keypoints_scores"].detach().float().sigmoid()
        keypoints = keypoints.cpu().numpy()
    return Detections(
        xyxy=boxes,
        scores=output["scores"].detach().float().cpu().numpy(),
        class_idxs=output["labels"].detach().cpu().numpy().astype(np.int64),
        masks_rle=masks_rle,
        keypoints=keypoints,
    )


def detections_from_logits(logits: torch.Tensor, images: Sequence[np.ndarray]) -> list[Detections]:
    """Turn classifier logits into one full-image detection per image.

    Each image gets one box [0, 0, W, H] whose score is the top-1 softmax probability and
    whose class index is the top-1 class.

    Args:
        logits: (N, C) scores of N images.
        images: The N images, for their sizes.

    Example:
        >>> d = detections_from_logits(torch.tensor([[0.0, 5.0]]), [np.zeros((4, 6, 3))])
        >>> d[0].xyxy.tolist(), d[0].class_idxs.tolist()
        ([[0.0, 0.0, 6.0, 4.0]], [1])

    """
    probs = logits.detach().float().softmax(dim=1)
    top_scores, top_idxs = probs.max(dim=1)
    scores, idxs = top_scores.cpu().tolist(), top_idxs.cpu().tolist()
    out = []
    for image, score, idx in zip(images, scores, idxs, strict=True):
        h, w = image.shape[:2]
        out.append(Detections(np.array([[0, 0, w, h]], np.float32), [score], [idx]))
    return out


@dataclass(frozen=True)
class ClassifierPreprocess:
    """The resize, center crop and normalisation of torchvision's classification weights.

    It does what ``weights.transforms()`` does to one image, with torch ops on ``device``:
    resize the shorter side to ``resize_size`` (antialiased), center-crop ``crop_size``,
    scale to [0, 1] and normalise with ``mean`` and ``std``; the crops form one batch.

    Attributes:
        resize_size: Shorter side after resizing, in pixels.
        crop_size: Side of the square center crop.
        mean: Per-channel mean subtracted after scaling to [0, 1].
        std: Per-channel standard deviation divided by.
        interpolation: "bilinear" or "bicubic".

    Example:
        >>> prep = ClassifierPreprocess(256, 224)
        >>> prep([np.zeros((300, 400, 3), np.uint8)], "cpu").shape
        torch.Size([1, 3, 224, 224])

    """

    resize_size: int
    crop_size: int
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"

    @classmethod
    def from_weights(cls, weights: Any) -> ClassifierPreprocess:
        """Read the preprocessing of a torchvision classification weights enum member."""
        transform = weights.transforms()
        return cls(
            resize_size=int(transform.resize_size[0]),
            crop_size=int(transform.crop_size[0]),
            mean=tuple(float(v) for v in transform.mean),
            std=tuple(float(v) for v in transform.std),
            interpolation=transform.interpolation.value,
        )

    def __call__(self, images: Sequence[np.ndarray], device: torch.device | str) -> torch.Tensor:
        """Return the (N, 3, crop_size, crop_size) float batch of ``images``."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as F

        mode = InterpolationMode(self.interpolation)
        crops = []
        for image in images:
            tensor = _uint8_chw(image, device)
            tensor = F.resize(tensor, [self.resize_size], interpolation=mode, antialias=True)
            crops.append(F.center_crop(tensor, [self.crop_size]))
        batch = torch.stack(crops).float().div_(255.0)
        return F.normalize(batch, mean=list(self.mean), std=list(self.std))


# ---------------------------------------------------------------------- adapters
class TorchvisionAdapter(ModelAdapter):
    """What every torchvision adapter shares: naming, classes and reading weights.

    Args:
        architecture: torchvision's builder name, e.g. ``"resnet50"`` (a ``"torchvision/"``
            prefix is accepted).
        pretrained: Use torchvision's pretrained weights (from torchvision's cache, else a
            download) when no ``weights`` file is given; False builds random weights.
        weights: A local file: a plain state dict or a Tessera checkpoint. When it is a
            checkpoint and ``classes`` is None, the checkpoint's classes are used.
        classes: Class names; a count different from the pretrained one builds a head of
            that size (needs ``weights`` or ``pretrained=False``).

    Attributes:
        architecture: The torchvision builder name.
        network: The loaded ``torch.nn.Module`` (None before `load`).
        device: The device given to `load` (None before).

    """

    families: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        architecture: str,
        pretrained: bool = True,
        weights: str | Path | None = None,
        classes: list[str] | None = None,
    ) -> None:
        architecture = architecture.removeprefix(ZOO_PREFIX)
        if architecture not in self.families:
            raise ValueError(
                f"{type(self).__name__} does not support {architecture!r}; it supports: "
                f"{', '.join(sorted(self.families))}"
            )
        self.architecture = architecture
        self.name = ZOO_PREFIX + architecture
        self.task = ARCHITECTURES[architecture].task
        self.pretrained = bool(pretrained)
        self.weights = Path(weights).expanduser().resolve() if weights is not None else None
        default_classes = list(self._default_weights().meta["categories"])
        self._classes_given = classes is not None
        self.classes = self._check_classes(classes) if classes is not None else default_classes
        if self.pretrained and self.weights is None and len(self.classes) != len(default_classes):
            raise ValueError(
                f"{self.name}: {len(self.classes)} classes given but the pretrained weights "
                f"predict {len(default_classes)}; pass weights=PATH trained for these classes, "
                "or pretrained=False for a random head"
            )
        self.network: torch.nn.Module | None = None
        self.device: torch.device | None = None

    # -------------------------------------------------------------- loading
    def load(self, device: str) -> None:
        """Build the network and read its weights onto ``device``.

        Raises:
            RuntimeError: The pretrained weights could not be fetched, or the weights file
                does not fit the architecture and classes.
            ValueError: The weights file is not a weights file, or a checkpoint of another
                architecture.

        """
        # 1) read a weights file first: a checkpoint may bring the class list
        state_dict = None
        if self.weights is not None:
            found = read_weights(self.weights)
            if found.architecture is not None:
                stored = found.architecture.removeprefix(ZOO_PREFIX)
                if stored != self.architecture:
                    raise ValueError(
                        f"{self.weights}: is a checkpoint of {found.architecture!r}, "
                        f"not of {self.name!r}"
                    )
            if found.classes is not None and not self._classes_given:
                self.classes = self._check_classes(found.classes)
            state_dict = found.state_dict
        # 2) build the network, pretrained or empty
        num_classes = len(self.classes)
        if state_dict is None and self.pretrained:
            network = self._build_pretrained(num_classes)
        else:
            network = self._build(weights=None, num_classes=num_classes)
        # 3) load the file's weights, then move to the device
        if state_dict is not None:
            try:
                network.load_state_dict(state_dict)
            except RuntimeError as exc:
                detail = str(exc).splitlines()[1:4]
                raise RuntimeError(
                    f"{self.weights}: the weights do not fit {self.name} with {num_classes} "
                    f"classes (pass classes= matching the file): {' '.join(detail).strip()}"
                ) from exc
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()

    def check_ready(self) -> None:
        """Fail at once when pretrained weights are neither in torch's cache nor reachable.

        Raises:
            RuntimeError: One line naming the weights file and the URL, and saying to pass
                ``pretrained=False`` or ``weights=PATH``.
        """
        if not self.pretrained or self.weights is not None:
            return
        url = self.pretrained_url()
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlsplit(url).path).name
        if cached.is_file():
            return
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            with socket.create_connection((parts.hostname, port), timeout=PROBE_TIMEOUT_S):
                return
        except OSError as exc:
            raise RuntimeError(
                f"{self.name}: the pretrained weights are not in torch's cache ({cached}) "
                f"and {parts.hostname} cannot be reached to download them ({exc}); pass "
                "pretrained=False for random weights or weights=PATH for a local file "
                "(tessera: --no-pretrained, --weights FILE)"
            ) from None

    def pretrained_url(self) -> str:
        """Where torchvision downloads the default weights from."""
        return str(self._default_weights().url)

    def _default_weights(self) -> Any:
        import torchvision

        return torchvision.models.get_model_weights(self.architecture).DEFAULT

    def _builder_kwargs(self) -> dict[str, Any]:
        return {}

    def _build(self, weights: Any, num_classes: int) -> torch.nn.Module:
        import torchvision

        builder = torchvision.models.get_model_builder(self.architecture)
        return builder(weights=weights, num_classes=num_classes, **self._builder_kwargs())

    def _build_pretrained(self, num_classes: int) -> torch.nn.Module:
        weights = self._default_weights()
        try:
            return self._build(weights=weights, num_classes=num_classes)
        except OSError as exc:
            raise RuntimeError(
                f"{self.name}: the pretrained weights {weights} could not be fetched from "
                f"torchvision's cache or {weights.url} ({exc}); pass pretrained=False for "
                "random weights or weights=PATH for a local file"
            ) from exc

    def _check_classes(self, classes: Sequence[str]) -> list[str]:
        if isinstance(classes, str) or not all(isinstance(c, str) for c in classes):
            raise ValueError(f"{self.name}: classes must be a list of strings")
        if len(classes) < 2 and self.task != "classification":
            raise ValueError(f"{self.name}: classes must hold {BACKGROUND!r} and a class")
        return list(classes)

    def _require_network(self) -> torch.nn.Module:
        if self.network is None:
            raise RuntimeError(f"{self.name}: call load(device) before infer()")
        return self.network


class TorchvisionDetector(TorchvisionAdapter):
    """A torchvision box detector: Faster R-CNN, RetinaNet, FCOS or SSDlite.

    Class names index by torchvision's labels: index 0 is the background (never predicted;
    ``"__background__"``, or ``"no person"`` for Keypoint R-CNN), so custom ``classes``
    must start with it (``num_classes`` = len(classes)).
    `infer` lowers the network's own score threshold to ``conf``, so a low ``conf`` returns
    low-scoring boxes too (up to the architecture's per-image limit).

    Args:
        architecture: One of the detection builders, e.g. ``"fasterrcnn_resnet50_fpn_v2"``.
        pretrained: See `TorchvisionAdapter`.
        weights: See `TorchvisionAdapter`.
        classes: See `TorchvisionAdapter`; must start with the background class.
        min_size: Shorter side the network resizes each image to inside (torchvision's
            default 800); not for SSDlite, which always works at 320x320.
        max_size: Longer-side limit of that resize (torchvision's default 1333).

    Example:
        >>> det = TorchvisionDetector("ssdlite320_mobilenet_v3_large")  # doctest: +SKIP
        >>> det.load("cpu"); det.infer([image], 0.5)[0]  # doctest: +SKIP

    """

    families = frozenset(
        {
            "fasterrcnn_resnet50_fpn_v2",
            "fasterrcnn_mobilenet_v3_large_fpn",
            "retinanet_resnet50_fpn_v2",
            "fcos_resnet50_fpn",
            "ssdlite320_mobilenet_v3_large",
        }
    )
    default_conf = 0.5

    def __init__(
        self,
        architecture: str,
        pretrained: bool = True,
        weights: str | Path | None = None,
        classes: list[str] | None = None,
        *,
        min_size: int | None = None,
        max_size: int | None = None,
    ) -> None:
        super().__init__(architecture, pretrained, weights, classes)
        if (min_size or max_size) and self.architecture not in _RESIZING:
            raise ValueError(f"{self.name} has a fixed input size; min_size/max_size do not apply")
        self.min_size = min_size
        self.max_size = max_size
        if self.architecture.startswith("ssdlite320"):
            self.input_size = (320, 320)
        else:
            self.input_size = (min_size or 800, min_size or 800)

    def _check_classes(self, classes: Sequence[str]) -> list[str]:
        checked = super()._check_classes(classes)
        background = self._default_weights().meta["categories"][0]
        if checked[0] not in (BACKGROUND, background):
            raise ValueError(
                f"{self.name}: classes must start with {background!r} (torchvision's label 0, "
                f"the background), e.g. {[background, *checked[:2]]}"
            )
        return checked

    def _builder_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"weights_backbone": None}
        if self.min_size:
            kwargs["min_size"] = self.min_size
        if self.max_size:
            kwargs["max_size"] = self.max_size
        return kwargs

    def infer(self, images: list[np.ndarray], conf: float) -> list[Detections]:
        """Detect objects in every image with one forward call over the batch."""
        network = self._require_network()
        if not images:
            return []
        self._set_score_threshold(conf)
        with torch.inference_mode():
            outputs = network(images_to_tensors(images, self.device))
        return [self._to_detections(output) for output in outputs]

    def use_nms(self, iou: float | None, max_det: int | None) -> bool:
        """Set the network's own NMS IoU (``nms_thresh``) and object cap (``detections_per_img``).

        Faster/Mask/Keypoint R-CNN hold both on ``roi_heads``; RetinaNet, FCOS and SSD on
        the network. None restores the value the network was built with.
        """
        holder = getattr(self._require_network(), "roi_heads", self.network)
        if not hasattr(holder, "nms_thresh"):
            return False
        built = getattr(holder, "tessera_built_nms", None)
        if built is None:  # what the network was built with, kept on it for "None"
            built = (holder.nms_thresh, getattr(holder, "detections_per_img", None))
            holder.tessera_built_nms = built
        holder.nms_thresh = built[0] if iou is None else float(iou)
        if built[1] is not None:
            holder.detections_per_img = built[1] if max_det is None else max(built[1], max_det)
        return True

    def _set_score_threshold(self, conf: float) -> None:
        threshold = float(min(max(conf, 0.0), 1.0))
        holder = getattr(self.network, "roi_heads", self.network)
        holder.score_thresh = threshold

    def _to_detections(self, output: Mapping[str, torch.Tensor]) -> Detections:
        return detections_from_output(output)


class TorchvisionSegmenter(TorchvisionDetector):
    """torchvision's Mask R-CNN: boxes plus instance masks.

    Masks are the network's (N, 1, H, W) probabilities thresholded at ``mask_threshold``
    (0.5), stored as COCO RLE of the image's size and aligned with the boxes. Everything
    else is as in `TorchvisionDetector`.

    Example:
        >>> seg = TorchvisionSegmenter("maskrcnn_resnet50_fpn_v2")  # doctest: +SKIP
        >>> seg.load("cpu"); seg.infer([image], 0.5)[0].masks(*image.shape[:2])  # doctest: +SKIP

    """

    families = frozenset({"maskrcnn_resnet50_fpn_v2"})
    mask_threshold = 0.5

    def _to_detections(self, output: Mapping[str, torch.Tensor]) -> Detections:
        return detections_from_output(output, mask_threshold=self.mask_threshold)


class TorchvisionKeypointDetector(TorchvisionDetector):
    """torchvision's Keypoint R-CNN: person boxes with 17 COCO keypoints each.

    Keypoints are (N, 17, 3): x, y in image pixels and score = sigmoid of the network's
    keypoint logit. Everything else is as in `TorchvisionDetector`.

    Attributes:
        keypoint_names: The names of the 17 keypoints, from the weights metadata.

    Example:
        >>> kp = TorchvisionKeypointDetector("keypointrcnn_resnet50_fpn")  # doctest: +SKIP
        >>> kp.keypoint_names[:3]  # doctest: +SKIP
        ['nose', 'left_eye', 'right_eye']

    """

    families = frozenset({"keypointrcnn_resnet50_fpn"})

    def __init__(
        self,
        architecture: str,
        pretrained: bool = True,
        weights: str | Path | None = None,
        classes: list[str] | None = None,
        *,
        min_size: int | None = None,
        max_size: int | None = None,
    ) -> None:
        super().__init__(
            architecture, pretrained, weights, classes, min_size=min_size, max_size=max_size
        )
        self.keypoint_names: list[str] = list(self._default_weights().meta["keypoint_names"])


class TorchvisionClassifier(TorchvisionAdapter):
    """A torchvision ImageNet classifier, e.g. ResNet-50, EfficientNet-B0, MobileNetV3.

    Output convention: ONE detection per image, whose box is the whole image
    [0, 0, W, H], whose score is the top-1 softmax probability and whose class index is the
    top-1 class (an index into the ImageNet category names from the weights metadata).
    Images are preprocessed as the weights' own transforms do (see `ClassifierPreprocess`).

    Example:
        >>> clf = TorchvisionClassifier("resnet50")  # doctest: +SKIP
        >>> clf.load("cpu"); d = clf.infer([image], 0.0)[0]  # doctest: +SKIP
        >>> clf.classes[d.class_idxs[0]], d.scores[0]  # doctest: +SKIP
        ('tabby', 0.83)

    """

    families = frozenset(
        name for name, arch in ARCHITECTURES.items() if arch.task == "classification"
    )
    default_conf = 0.0

    def __init__(
        self,
        architecture: str,
        pretrained: bool = True,
        weights: str | Path | None = None,
        classes: list[str] | None = None,
    ) -> None:
        super().__init__(architecture, pretrained, weights, classes)
        self.preprocess = ClassifierPreprocess.from_weights(self._default_weights())
        self.input_size = (self.preprocess.crop_size, self.preprocess.crop_size)

    def infer(self, images: list[np.ndarray], conf: float) -> list[Detections]:
        """Classify every image; one full-image detection each (see the class docstring)."""
        network = self._require_network()
        if not images:
            return []
        with torch.inference_mode():
            logits = network(self.preprocess(images, self.device))
        return detections_from_logits(logits, images)


def torchvision_adapter_class(architecture: str) -> type[TorchvisionAdapter]:
    """Return the adapter class that handles a torchvision architecture.

    Example:
        >>> torchvision_adapter_class("resnet50").__name__
        'TorchvisionClassifier'

    """
    architecture = architecture.removeprefix(ZOO_PREFIX)
    for cls in (
        TorchvisionDetector,
        TorchvisionSegmenter,
        TorchvisionKeypointDetector,
        TorchvisionClassifier,
    ):
        if architecture in cls.families:
            return cls
    raise ValueError(
        f"unknown torchvision architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}"
    )


def _uint8_chw(image: np.ndarray, device: torch.device | str) -> torch.Tensor:
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    elif array.ndim == 3 and array.shape[2] == 4:
        array = array[..., :3]
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an HWC RGB image, got shape {array.shape}")
    if array.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {array.dtype}")
    return torch.from_numpy(np.ascontiguousarray(array)).to(device).permute(2, 0, 1)
