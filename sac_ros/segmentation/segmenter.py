"""The segmenter interface: any RGB frame in, class map / ROI probability / block ROI out.

A ``Segmenter`` wraps one backend (ONNX Runtime, TensorRT or PyTorch) and does the
geometry around it:

- input: the frame is either padded (edge replication) to a multiple of the model's
  stride (``input_size: native``), which keeps the network's 16x16 cells exactly on the
  frame's macroblocks, or resized to a fixed ``[width, height]``;
- outputs at frame resolution: the class map (argmax of the bilinearly upsampled
  logits) and the ROI probability (softmax mass of the ROI classes);
- the per-block output: the model's block head when it has one (no upsampling at all),
  else the macroblock filter applied to the ROI pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from PIL import Image

from sac_ros.core.errors import SacError
from sac_ros.core.mask import BLOCK_SIZE, block_grid, block_mask, expand_blocks
from sac_ros.segmentation.backends.base import Backend
from sac_ros.segmentation.classmaps import ClassMapAdapter

CLASS_OUTPUT = "class_logits"
BLOCK_OUTPUT = "block_logits"
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def check_rgb(frame: np.ndarray) -> np.ndarray:
    """A frame must be H x W x 3 uint8 RGB; anything else is a clear error."""
    if not isinstance(frame, np.ndarray):
        raise SacError(f"a frame must be a numpy array, got {type(frame).__name__}")
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise SacError(f"the segmenter needs an RGB uint8 frame (H x W x 3); got shape "
                       f"{frame.shape} {frame.dtype}: convert it first (mono, RGBA and 16-bit "
                       "frames: sac_ros.core.frames.as_rgb; BGR: reverse the channels)")
    if frame.shape[0] < 16 or frame.shape[1] < 16:
        raise SacError(f"frame {frame.shape[1]}x{frame.shape[0]} is too small to segment")
    return frame


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # the tanh form cannot overflow


def _resize_plane(plane: np.ndarray, width: int, height: int,
                  box: tuple[float, float, float, float]) -> np.ndarray:
    """Bilinear resize of a float plane; ``box`` is the source region in plane pixels."""
    image = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32), mode="F")
    return np.array(image.resize((width, height), Image.Resampling.BILINEAR, box=box))


def _bilinear_taps(size: int, start: float, end: float, source_len: int):
    """Per output pixel on one axis: the two source samples and the second one's weight,
    for bilinear resampling of source span [start, end) onto ``size`` pixels (centres
    aligned, edges clamped, as PIL's BILINEAR upsampling)."""
    centre = start + (np.arange(size) + 0.5) * ((end - start) / size) - 0.5
    low = np.floor(centre)
    weight = (centre - low).astype(np.float32)
    low = low.astype(np.intp)
    high = np.clip(low + 1, 0, source_len - 1)
    low = np.clip(low, 0, source_len - 1)
    return low, high, np.where(low == high, np.float32(0.0), weight)


def argmax_of_upsampled_planes(logits: np.ndarray, width: int, height: int,
                               box: tuple[float, float, float, float]) -> np.ndarray:
    """The plain way: every class plane upsampled, then the argmax. ``upsampled_argmax``
    gives the same map faster; this is its reference in the tests and the benchmark."""
    return _argmax_of(_resize_plane(plane, width, height, box) for plane in logits)


def _argmax_of(planes) -> np.ndarray:
    """The argmax over equally shaped float planes, taken one plane at a time (so C
    frame-sized planes are never held at once); ties keep the lower id, as np.argmax."""
    planes = iter(planes)
    best = np.array(next(planes), dtype=np.float32)
    ids = np.zeros(best.shape, np.uint8)
    for channel, plane in enumerate(planes, start=1):
        ids[plane > best] = channel
        np.maximum(best, plane, out=best)
    return ids


def upsampled_argmax(logits: np.ndarray, width: int, height: int,
                     box: tuple[float, float, float, float]) -> np.ndarray:
    """The argmax of the C x h x w logits bilinearly upsampled to ``height`` x ``width``.

    Exact without upsampling all C planes: an upsampled pixel is a convex mix of its
    2 x 2 source samples, so where all four share one argmax that is the pixel's argmax.
    Only pixels near a class boundary are interpolated, channel by channel.
    """
    channels, rows, cols = logits.shape
    x_low, x_high, x_weight = _bilinear_taps(width, box[0], box[2], cols)
    y_low, y_high, y_weight = _bilinear_taps(height, box[1], box[3], rows)
    low_res = logits.argmax(axis=0).astype(np.uint8 if channels <= 128 else np.uint16)
    # a source cell (r, c) is settled when it and its right, lower and lower-right
    # neighbours (edge-clamped) share one class
    right = np.concatenate([low_res[:, 1:], low_res[:, -1:]], axis=1)
    settled = (low_res == right)
    settled[:-1] &= (low_res[:-1] == low_res[1:]) & (low_res[:-1] == right[1:])
    # one gather for both: the class in the low bits, "near a boundary" in the top bit
    flag = np.uint8(128) if channels <= 128 else np.uint16(1 << 15)
    coded = np.where(settled, low_res, low_res.astype(flag.dtype) | flag)
    ids = np.take(np.take(coded, y_low, axis=0), x_low, axis=1)
    open_rows, open_cols = np.nonzero(ids >= flag)
    ids = (ids & ~flag).astype(np.uint8, copy=False)
    if open_rows.size:
        ys, yh, fy = y_low[open_rows], y_high[open_rows], y_weight[open_rows]
        xs, xh, fx = x_low[open_cols], x_high[open_cols], x_weight[open_cols]

        def interpolated(plane: np.ndarray) -> np.ndarray:
            top = plane[ys, xs] + fx * (plane[ys, xh] - plane[ys, xs])
            bottom = plane[yh, xs] + fx * (plane[yh, xh] - plane[yh, xs])
            return top + fy * (bottom - top)

        ids[open_rows, open_cols] = _argmax_of(interpolated(plane) for plane in logits)
    return ids


@dataclass
class _Geometry:
    """How frames of one size map onto the network input, with the reused input buffer."""

    height: int
    width: int
    net_height: int
    net_width: int
    padded: bool           # True: pad only (cells sit on frame macroblocks); False: resize
    buffer: np.ndarray     # 1 x 3 x net_height x net_width float32

    def valid_box(self, out_height: int, out_width: int) -> tuple[float, float, float, float]:
        """The part of an output map (at its own stride) that covers the frame."""
        if not self.padded:
            return (0.0, 0.0, float(out_width), float(out_height))
        return (0.0, 0.0, self.width * out_width / self.net_width,
                self.height * out_height / self.net_height)

    @cached_property
    def block_sources(self) -> tuple[np.ndarray, np.ndarray]:
        """For a resized input: per frame block row/column, the network cells it overlaps.

        Returns (rows, cols), each of shape (span, n): cell indices to take the max over.
        """
        rows, cols = block_grid(self.height, self.width)
        return (_overlap(rows, self.height, self.net_height),
                _overlap(cols, self.width, self.net_width))


def _overlap(blocks: int, frame_len: int, net_len: int) -> np.ndarray:
    scale = net_len / frame_len
    cells = -(-net_len // BLOCK_SIZE)
    starts = np.arange(blocks) * BLOCK_SIZE
    ends = np.minimum(starts + BLOCK_SIZE, frame_len)
    lo = np.floor(starts * scale / BLOCK_SIZE).astype(int)
    hi = np.maximum(lo, np.ceil(ends * scale / BLOCK_SIZE).astype(int) - 1)
    lo, hi = np.clip(lo, 0, cells - 1), np.clip(hi, 0, cells - 1)
    span = int((hi - lo).max()) + 1
    return np.stack([np.minimum(lo + k, hi) for k in range(span)])


class Prediction:
    """One network run on one frame; every output is computed on first use."""

    def __init__(self, segmenter: Segmenter, geometry: _Geometry, outputs: dict[str, np.ndarray]):
        self._seg = segmenter
        self._geo = geometry
        # own float32 copies: a backend may reuse its output buffers (TensorRT's pinned
        # memory) for the next frame, and FP16 outputs need converting anyway (these are
        # the small low-resolution maps, not frame-sized)
        self._outputs = {name: np.array(value, dtype=np.float32)
                         for name, value in outputs.items()}

    @cached_property
    def _class_logits(self) -> np.ndarray:
        # C x h x w logits, or h x w for models that output class ids
        return self._outputs[self._seg.class_output][0]

    @cached_property
    def class_map(self) -> np.ndarray:
        """H x W uint8 ids of the model's class map."""
        logits = self._class_logits
        geo = self._geo
        if logits.ndim == 2:  # the model already outputs class ids
            ids = Image.fromarray(logits.astype(np.uint8))
            box = geo.valid_box(*logits.shape)
            return np.asarray(ids.resize((geo.width, geo.height), Image.Resampling.NEAREST,
                                         box=box))
        if logits.shape[0] == 1:  # one ROI logit (binary class map: 1 = ROI)
            return (self.roi_probability >= 0.5).astype(np.uint8)
        return upsampled_argmax(logits, geo.width, geo.height,
                                geo.valid_box(*logits.shape[1:]))

    @cached_property
    def roi_probability(self) -> np.ndarray:
        """H x W float32 in [0, 1]: probability that the pixel is ROI."""
        logits = self._class_logits
        geo = self._geo
        if logits.ndim == 2:
            return self._seg.class_adapter.roi(self.class_map).astype(np.float32)
        if logits.shape[0] == 1:
            low = _sigmoid(logits[0])
        else:
            shifted = np.exp(logits - logits.max(axis=0, keepdims=True))
            low = shifted[self._seg.roi_channels].sum(axis=0) / shifted.sum(axis=0)
        return np.clip(_resize_plane(low, geo.width, geo.height,
                                     geo.valid_box(*low.shape)), 0.0, 1.0)

    @cached_property
    def roi(self) -> np.ndarray:
        """H x W bool ROI pixels (probability >= roi_threshold)."""
        return self.roi_probability >= self._seg.roi_threshold

    @cached_property
    def block_probability(self) -> np.ndarray | None:
        """(rows, cols) float32 from the block head, or None when the model has none."""
        if self._seg.block_output is None:
            return None
        cells = _sigmoid(self._outputs[self._seg.block_output][0, 0])
        geo = self._geo
        rows, cols = block_grid(geo.height, geo.width)
        if geo.padded:
            return cells[:rows, :cols]
        # Resized input: a frame block is ROI if any network cell it overlaps is.
        row_src, col_src = geo.block_sources
        by_row = cells[row_src].max(axis=0)
        return by_row[:, col_src].max(axis=1)

    @cached_property
    def block_roi(self) -> np.ndarray:
        """(ceil(H/16), ceil(W/16)) bool: the macroblock mask."""
        probability = self.block_probability
        if probability is None:
            return block_mask(self.roi)
        return probability >= self._seg.block_threshold


class Segmenter:
    """A segmentation model behind one backend, with the frame geometry around it."""

    def __init__(self, backend: Backend, class_adapter: ClassMapAdapter,
                 input_size: str | tuple[int, int] = "native", roi_threshold: float = 0.5,
                 block_threshold: float = 0.5, normalize: tuple | None = None,
                 on_size_mismatch: str = "resize", stride: int | None = None):
        self.backend = backend
        self.class_adapter = class_adapter
        self.roi_threshold = float(roi_threshold)
        self.block_threshold = float(block_threshold)
        self.on_size_mismatch = on_size_mismatch
        # native input: pad to the model's stride (sac metadata), else to 32
        self.stride = int(stride or backend.metadata.get("sac_stride", 32))
        if input_size != "native":
            width, height = (int(v) for v in input_size)
            if width % self.stride or height % self.stride or width <= 0 or height <= 0:
                raise SacError(f"input size {width}x{height} must be positive multiples of "
                               f"{self.stride}")
            input_size = (width, height)
        self.input_size = input_size
        if normalize is not None:
            mean, std = (np.asarray(v, np.float32).reshape(3, 1, 1) for v in normalize)
            self._mean, self._inv_std = mean, 1.0 / std
        else:
            self._mean = self._inv_std = None
        names = backend.output_names
        self.class_output = CLASS_OUTPUT if CLASS_OUTPUT in names else names[0]
        self.block_output = BLOCK_OUTPUT if BLOCK_OUTPUT in names else None
        self.roi_channels = class_adapter.roi_channels()
        self._channels_checked = False
        channels = backend.output_channels(self.class_output)
        if channels is not None:
            self._check_channels(channels)
        self._geometries: dict[tuple[int, int], _Geometry] = {}

    @property
    def name(self) -> str:
        return f"{self.backend.model_path.name} on {self.backend.name}"

    def set_non_roi_ids(self, non_roi_ids) -> None:
        """Override which of the model's classes are non-ROI (sac.yaml non_roi_classes)."""
        self.class_adapter = ClassMapAdapter(self.class_adapter.name, non_roi_ids)
        self.roi_channels = self.class_adapter.roi_channels()

    def _check_channels(self, channels: int) -> None:
        self.class_adapter.check_channels(channels, str(self.backend.model_path))
        self._channels_checked = True

    # ------------------------------------------------------------------ geometry

    def _geometry(self, height: int, width: int) -> _Geometry:
        geometry = self._geometries.get((height, width))
        if geometry is not None:
            return geometry
        spec = self.backend.input_spec
        if spec.fixed is not None:
            net_h, net_w = spec.fixed
        elif self.input_size == "native":
            net_h = math.ceil(height / self.stride) * self.stride
            net_w = math.ceil(width / self.stride) * self.stride
        else:
            net_w, net_h = self.input_size
        if not spec.accepts(net_h, net_w):
            if self.on_size_mismatch != "resize":
                raise SacError(f"a {width}x{height} frame needs a {net_w}x{net_h} input, outside "
                               f"the model's input profile ({spec.describe()}); set input_size "
                               "inside it, set on_size_mismatch: resize, or rebuild the engine "
                               "with `sac export --min-shape/--max-shape`")
            net_h, net_w = spec.opt_hw or spec.max_hw or spec.min_hw
        padded = net_h >= height and net_w >= width and (
            self.input_size == "native" or (net_h, net_w) == (height, width)) and (
            net_h - height < self.stride and net_w - width < self.stride)
        geometry = _Geometry(height, width, net_h, net_w, padded,
                             np.empty((1, 3, net_h, net_w), np.float32))
        self._geometries[(height, width)] = geometry
        return geometry

    def _fill_input(self, rgb: np.ndarray, geo: _Geometry) -> np.ndarray:
        buffer = geo.buffer
        if geo.padded:
            height, width = geo.height, geo.width
            np.copyto(buffer[0, :, :height, :width], rgb.transpose(2, 0, 1))
            buffer[0, :, height:, :width] = buffer[0, :, height - 1:height, :width]
            buffer[0, :, :, width:] = buffer[0, :, :, width - 1:width]
        else:
            resized = Image.fromarray(rgb).resize((geo.net_width, geo.net_height),
                                                  Image.Resampling.BILINEAR)
            np.copyto(buffer[0], np.asarray(resized).transpose(2, 0, 1))
        if self._mean is not None:
            buffer[0] -= self._mean
            buffer[0] *= self._inv_std
        return buffer

    # ------------------------------------------------------------------ interface

    def input_tensor(self, rgb: np.ndarray) -> np.ndarray:
        """The 1 x 3 x H x W float32 tensor the network gets for this frame (a copy):
        padding or resizing and normalisation as in ``predict`` (INT8 calibration)."""
        rgb = check_rgb(rgb)
        return self._fill_input(rgb, self._geometry(rgb.shape[0], rgb.shape[1])).copy()

    def predict(self, rgb: np.ndarray) -> Prediction:
        rgb = check_rgb(rgb)
        geo = self._geometry(rgb.shape[0], rgb.shape[1])
        outputs = self.backend.infer(self._fill_input(rgb, geo))
        if self.class_output not in outputs:
            raise SacError(f"{self.backend.model_path} produced no output '{self.class_output}'")
        if not self._channels_checked:
            logits = outputs[self.class_output]
            if logits.ndim == 4:
                self._check_channels(logits.shape[1])
            elif logits.ndim != 3:
                raise SacError(f"{self.backend.model_path}: class output has shape "
                               f"{logits.shape}; expected N x C x h x w logits or N x h x w ids")
            self._channels_checked = True
        return Prediction(self, geo, outputs)

    def class_map(self, rgb: np.ndarray) -> np.ndarray:
        """H x W uint8 class ids (the model's class map) at frame resolution."""
        return self.predict(rgb).class_map

    def roi_probability(self, rgb: np.ndarray) -> np.ndarray:
        """H x W float32 ROI probability at frame resolution."""
        return self.predict(rgb).roi_probability

    def block_roi(self, rgb: np.ndarray) -> np.ndarray:
        """(ceil(H/16), ceil(W/16)) bool macroblock mask, from the block head when present."""
        return self.predict(rgb).block_roi

    def mask_source(self) -> SegmenterMaskSource:
        return SegmenterMaskSource(self)

    def close(self) -> None:
        self.backend.close()


class SegmenterMaskSource:
    """The ``MaskSource`` protocol of ``sac_ros.core.mask`` backed by a segmenter.

    It returns the block mask expanded to pixels, so ``block_mask`` of the result is
    exactly the segmenter's block decision (the block head's, when the model has one).
    """

    def __init__(self, segmenter: Segmenter):
        self.segmenter = segmenter

    def roi_pixels(self, index: int, rgb: np.ndarray, name: str | None = None) -> np.ndarray:
        blocks = self.segmenter.block_roi(rgb)
        return expand_blocks(blocks, rgb.shape[0], rgb.shape[1])
