"""RetinaFace, the face detector A1111's face restoration uses, as a torch module.

A1111 finds faces with facexlib's RetinaFace (ResNet-50 `detection_Resnet50_Final.pth`,
or the MobileNet-0.25 variant) and takes each face's five landmarks from it. The pack
cannot depend on facexlib (it pulls in OpenCV), so the network is written here with
the same parameter names, and the released weight files load unchanged:

    body.*          the backbone's trunk (torchvision ResNet-50 up to layer4, or MobileNet-0.25 stages 1-3)
    fpn.*           a three-level feature pyramid (output1-3 lateral 1x1 convs, merge1-2 3x3 convs)
    ssh1-3.*        one SSH context module per level (3x3, 5x5 and 7x7 receptive fields, concatenated)
    ClassHead.N.*   per level: 2 anchors x (background, face) logits
    BboxHead.N.*    per level: 2 anchors x 4 box offsets
    LandmarkHead.N.*  per level: 2 anchors x 10 landmark offsets (five x, y pairs)

`forward` returns raw offsets and face probabilities per prior box; `face_boxes`
turns them into boxes and landmarks.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

ANCHORS_PER_LOCATION = 2


@dataclass(frozen=True)
class DetectorConfig:
    """One RetinaFace variant: the facts its weight file was trained with."""

    name: str
    in_channel: int  # the first pyramid input's channels / 2
    out_channel: int  # the pyramid's and the heads' width
    min_sizes: tuple = ((16, 32), (64, 128), (256, 512))  # anchor sides per level, in pixels
    steps: tuple = (8, 16, 32)  # the levels' strides
    variances: tuple = (0.1, 0.2)  # centre and size scales of the offsets
    mean_bgr: tuple = (104.0, 117.0, 123.0)  # subtracted from the 0..255 BGR input

    @property
    def leaky(self) -> float:
        """The narrow variant's pyramid and SSH use LeakyReLU(0.1); the wide one plain ReLU."""
        return 0.1 if self.out_channel <= 64 else 0.0


RESNET50 = DetectorConfig("resnet50", in_channel=256, out_channel=256)
MOBILENET = DetectorConfig("mobilenet0.25", in_channel=32, out_channel=64)


def _conv_bn(inp: int, out: int, stride: int = 1, leaky: float = 0.0, kernel: int = 3, act: bool = True):
    layers = [nn.Conv2d(inp, out, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(out)]
    if act:
        layers.append(nn.LeakyReLU(negative_slope=leaky, inplace=True))
    return nn.Sequential(*layers)


def _conv_dw(inp: int, out: int, stride: int, leaky: float = 0.1):
    """A depthwise-separable block (MobileNet v1): keys .0/.1 depthwise, .3/.4 pointwise."""
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False), nn.BatchNorm2d(inp),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
        nn.Conv2d(inp, out, 1, 1, 0, bias=False), nn.BatchNorm2d(out),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
    )


class _MobileNetTrunk(nn.Module):
    """MobileNet-0.25's three stages (strides 8, 16, 32); the classifier is not part of the file."""

    def __init__(self):
        super().__init__()
        self.stage1 = nn.Sequential(
            _conv_bn(3, 8, 2, leaky=0.1), _conv_dw(8, 16, 1), _conv_dw(16, 32, 2), _conv_dw(32, 32, 1),
            _conv_dw(32, 64, 2), _conv_dw(64, 64, 1),
        )
        self.stage2 = nn.Sequential(_conv_dw(64, 128, 2), *[_conv_dw(128, 128, 1) for _ in range(5)])
        self.stage3 = nn.Sequential(_conv_dw(128, 256, 2), _conv_dw(256, 256, 1))

    def forward(self, x):
        c1 = self.stage1(x)
        c2 = self.stage2(c1)
        return [c1, c2, self.stage3(c2)]


class _ResNetTrunk(nn.Module):
    """torchvision's ResNet-50 up to layer4, children under their own names (conv1, bn1, layer1-4)."""

    RETURN = ("layer2", "layer3", "layer4")

    def __init__(self):
        super().__init__()
        from torchvision.models import resnet50

        for name, child in resnet50(weights=None).named_children():
            self.add_module(name, child)
            if name == "layer4":
                break

    def forward(self, x):
        outs = []
        for name, child in self.named_children():
            x = child(x)
            if name in self.RETURN:
                outs.append(x)
        return outs


class _FPN(nn.Module):
    def __init__(self, in_channels: list[int], out: int, leaky: float):
        super().__init__()
        self.output1 = _conv_bn(in_channels[0], out, leaky=leaky, kernel=1)
        self.output2 = _conv_bn(in_channels[1], out, leaky=leaky, kernel=1)
        self.output3 = _conv_bn(in_channels[2], out, leaky=leaky, kernel=1)
        self.merge1 = _conv_bn(out, out, leaky=leaky)
        self.merge2 = _conv_bn(out, out, leaky=leaky)

    def forward(self, feats):
        o1, o2, o3 = self.output1(feats[0]), self.output2(feats[1]), self.output3(feats[2])
        o2 = self.merge2(o2 + F.interpolate(o3, size=o2.shape[-2:], mode="nearest"))
        o1 = self.merge1(o1 + F.interpolate(o2, size=o1.shape[-2:], mode="nearest"))
        return [o1, o2, o3]


class _SSH(nn.Module):
    """Single Stage Headless context module: half the channels from a 3x3 conv, a quarter each
    from stacked 3x3 convs (5x5 and 7x7 receptive fields). The mixed-case names are the file's."""

    def __init__(self, channels: int, leaky: float):
        super().__init__()
        half, quarter = channels // 2, channels // 4
        self.conv3X3 = _conv_bn(channels, half, act=False)
        self.conv5X5_1 = _conv_bn(channels, quarter, leaky=leaky)
        self.conv5X5_2 = _conv_bn(quarter, quarter, act=False)
        self.conv7X7_2 = _conv_bn(quarter, quarter, leaky=leaky)
        self.conv7x7_3 = _conv_bn(quarter, quarter, act=False)

    def forward(self, x):
        c5_1 = self.conv5X5_1(x)
        c7_2 = self.conv7X7_2(c5_1)
        return F.relu(torch.cat([self.conv3X3(x), self.conv5X5_2(c5_1), self.conv7x7_3(c7_2)], dim=1))


class _Head(nn.Module):
    """A 1x1 conv predicting `values` numbers per anchor, flattened to [B, H*W*anchors, values]."""

    def __init__(self, channels: int, values: int):
        super().__init__()
        self.values = values
        self.conv1x1 = nn.Conv2d(channels, ANCHORS_PER_LOCATION * values, kernel_size=1)

    def forward(self, x):
        out = self.conv1x1(x).permute(0, 2, 3, 1)
        return out.reshape(out.shape[0], -1, self.values)


class RetinaFace(nn.Module):
    """The detector; `forward(bgr_minus_mean)` -> (box offsets, face probabilities, landmark offsets)."""

    def __init__(self, config: DetectorConfig = RESNET50):
        super().__init__()
        self.config = config
        self.body = _MobileNetTrunk() if config is MOBILENET else _ResNetTrunk()
        c = config.in_channel
        out = config.out_channel
        self.fpn = _FPN([c * 2, c * 4, c * 8], out, config.leaky)
        self.ssh1 = _SSH(out, config.leaky)
        self.ssh2 = _SSH(out, config.leaky)
        self.ssh3 = _SSH(out, config.leaky)
        self.ClassHead = nn.ModuleList([_Head(out, 2) for _ in range(3)])
        self.BboxHead = nn.ModuleList([_Head(out, 4) for _ in range(3)])
        self.LandmarkHead = nn.ModuleList([_Head(out, 10) for _ in range(3)])

    def forward(self, x):
        pyramid = self.fpn(self.body(x))
        feats = [self.ssh1(pyramid[0]), self.ssh2(pyramid[1]), self.ssh3(pyramid[2])]
        boxes = torch.cat([head(f) for head, f in zip(self.BboxHead, feats)], dim=1)
        logits = torch.cat([head(f) for head, f in zip(self.ClassHead, feats)], dim=1)
        landmarks = torch.cat([head(f) for head, f in zip(self.LandmarkHead, feats)], dim=1)
        return boxes, F.softmax(logits, dim=-1), landmarks


def config_of(state_dict: dict) -> DetectorConfig:
    """Which variant a state dict holds (by its backbone's keys); ValueError when it is no RetinaFace."""
    if "body.stage1.0.0.weight" in state_dict:
        return MOBILENET
    if "body.layer1.0.conv1.weight" in state_dict:
        return RESNET50
    raise ValueError(
        "face detector: the file is not a RetinaFace detector (no 'body.layer1.*' ResNet-50 or "
        "'body.stage1.*' MobileNet-0.25 keys); use facexlib's detection_Resnet50_Final.pth or "
        "detection_mobilenet0.25_Final.pth"
    )


def from_state_dict(state_dict: dict, name: str = "the file") -> RetinaFace:
    """A RetinaFace in eval mode holding `state_dict` (facexlib's layout; a 'module.' prefix is dropped)."""
    state_dict = {(k[7:] if k.startswith("module.") else k): v for k, v in state_dict.items()}
    model = RetinaFace(config_of(state_dict))
    result = model.load_state_dict(state_dict, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"face detector: {name} does not match RetinaFace {model.config.name}: "
            f"missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    return model.eval()


__all__ = ["DetectorConfig", "MOBILENET", "RESNET50", "RetinaFace", "config_of", "from_state_dict"]
