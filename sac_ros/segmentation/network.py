"""SacRoiNet: a small real-time segmenter with a per-16x16-block ROI head.

Fast-SCNN-style layout, sized for a 2-core CPU and for TensorRT:

- the input is first averaged 2x2 (the ROI boundary is only needed to 16 px), then a
  learning-to-downsample stem of one full conv and two depthwise-separable convs runs to
  stride 16;
- a context branch of inverted residuals runs down to stride 64, plus a global-pooling term;
- fusion at stride 16 -> ``block_logits`` (1 x H/16 x W/16): "this 16x16 block holds ROI",
  the S2 macroblock filter learnt directly, so the block mask needs no upsampling;
- fusion at stride 8 -> ``class_logits`` (C x H/8 x W/8), upsampled by the caller.

The input is raw RGB in 0-255 (N x 3 x H x W, float); normalisation is part of the graph so
every backend (ONNX Runtime, TensorRT, PyTorch) feeds the same tensor. H and W must be
multiples of 64. Needs torch; import it only where torch is wanted.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sac_ros.segmentation.network_meta import NETWORK_STRIDE

STRIDE = NETWORK_STRIDE  # input H and W must be multiples of this
BLOCK_STRIDE = 16
CLASS_STRIDE = 8
INPUT_NAME = "rgb"
CLASS_OUTPUT = "class_logits"
BLOCK_OUTPUT = "block_logits"


def conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1,
            act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class DepthwiseSeparable(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__(conv_bn(cin, cin, 3, stride, groups=cin), conv_bn(cin, cout, 1))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1, expand: int = 4):
        super().__init__()
        hidden = cin * expand
        self.body = nn.Sequential(conv_bn(cin, hidden, 1),
                                  conv_bn(hidden, hidden, 3, stride, groups=hidden),
                                  conv_bn(hidden, cout, 1, act=False))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.residual else out


class SacRoiNet(nn.Module):
    """Class logits at stride 8 and block-ROI logits at stride 16.

    ``width`` scales the channel counts and ``depth`` adds that many inverted residuals at
    strides 16 and 32 (more context for the cost of low-resolution layers); the shipped
    defaults are in segmentation.yaml.
    """

    def __init__(self, num_classes: int = 4, width: float = 1.0, depth: int = 0):
        super().__init__()
        c = [max(8, int(round(n * width / 8)) * 8) for n in (16, 24, 32, 48, 64)]
        self.num_classes = num_classes
        self.width = width
        self.depth = depth
        # 0-255 RGB -> roughly zero-mean unit-range input
        self.register_buffer("scale", torch.full((1, 3, 1, 1), 1.0 / 128.0))
        self.register_buffer("shift", torch.full((1, 3, 1, 1), -1.0))
        self.stem8 = nn.Sequential(nn.AvgPool2d(2),                        # stride 2
                                   conv_bn(3, c[0], 3, 2),                 # stride 4
                                   DepthwiseSeparable(c[0], c[1], 2))      # stride 8
        self.stem16 = DepthwiseSeparable(c[1], c[2], 2)                    # stride 16
        self.refine16 = nn.Sequential(*[InvertedResidual(c[2], c[2]) for _ in range(depth)])
        self.down32 = nn.Sequential(InvertedResidual(c[2], c[3], 2),
                                    InvertedResidual(c[3], c[3]))          # stride 32
        self.refine32 = nn.Sequential(*[InvertedResidual(c[3], c[3]) for _ in range(depth)])
        self.down64 = nn.Sequential(InvertedResidual(c[3], c[4], 2),
                                    InvertedResidual(c[4], c[4]),
                                    InvertedResidual(c[4], c[4]))          # stride 64
        self.context = conv_bn(c[4], c[4], 1)                             # global pooling term
        self.up64 = conv_bn(c[4], c[3], 1, act=False)
        self.fuse32 = nn.Sequential(nn.ReLU(inplace=True), DepthwiseSeparable(c[3], c[3]))
        self.up32 = conv_bn(c[3], c[2], 1, act=False)
        self.fuse16 = nn.Sequential(nn.ReLU(inplace=True), DepthwiseSeparable(c[2], c[2]))
        self.block_head = nn.Conv2d(c[2], 1, 1)
        self.up16 = conv_bn(c[2], c[1], 1, act=False)
        self.fuse8 = nn.Sequential(nn.ReLU(inplace=True), DepthwiseSeparable(c[1], c[1]))
        self.class_head = nn.Conv2d(c[1], num_classes, 1)

    @staticmethod
    def _up(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)

    def forward(self, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x8 = self.stem8(rgb * self.scale + self.shift)
        x16 = self.refine16(self.stem16(x8))
        x32 = self.refine32(self.down32(x16))
        x64 = self.down64(x32)
        x64 = x64 + self.context(x64.mean(dim=(2, 3), keepdim=True))
        f32 = self.fuse32(x32 + self._up(self.up64(x64)))
        f16 = self.fuse16(x16 + self._up(self.up32(f32)))
        f8 = self.fuse8(x8 + self._up(self.up16(f16)))
        return self.class_head(f8), self.block_head(f16)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
