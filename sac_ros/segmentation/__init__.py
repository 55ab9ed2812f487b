"""S1 of the method: semantic segmentation into ROI / non-ROI, on swappable backends.

- ``Segmenter`` (``segmenter.py``): RGB frame -> class map, ROI probability, and the
  per-16x16-block ROI mask; ``SegmenterMaskSource`` plugs it into ``sac_ros.core``.
- backends (``backends/``): ONNX Runtime (CPU, CUDA), TensorRT engines, PyTorch.
- ``load_segmenter`` (``loader.py``): picks the backend from the file or the config;
  ``default`` is the ONNX model shipped in ``models/``.
- training (``train.py``, needs torch), export to ONNX / TensorRT (``export.py``), and the
  hand-labelled evaluation set (``evalset.py``, ``scoring.py``).

Importing this package needs neither torch nor TensorRT.
"""

from sac_ros.segmentation.classmaps import ClassMapAdapter
from sac_ros.segmentation.loader import DEFAULT_MODEL, load_segmenter
from sac_ros.segmentation.segmenter import Segmenter, SegmenterMaskSource

__all__ = ["DEFAULT_MODEL", "ClassMapAdapter", "Segmenter", "SegmenterMaskSource",
           "load_segmenter"]
