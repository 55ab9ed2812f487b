"""The ECU's reconstruction re-encoded to one standard stream, for viewers and bags.

A dual_crf packet carries two streams that only sac_ros can put back together. To offer
what Foxglove, Lichtblick or any H.264 decoder plays (``foxglove_msgs/CompressedVideo``),
the ECU codes its reconstructed frames again, with the one encoder wrapper
(``codec.StreamEncoder``) at a high-quality CRF.

Key frames follow the sensor's: the GOP is learned from the spacing of the packets' key
frames (or given), and where a sensor key frame meets an encoder in mid-GOP (after lost
packets, or before the GOP was known) the encoder restarts there, so a viewer joining
either stream waits no longer than the sensor's GOP.

The frame is padded (edge rows and columns repeated) to a multiple of 4 only, which the
packed I420 arrays need; x264 and x265 pad internally to their block size and signal the
crop in the SPS, so decoders show the camera's size (1920x1080, 1280x720, 1024x512
exactly; 962x541 as 964x544).
"""

from __future__ import annotations

import time

import numpy as np

from sac_ros.core.codec import EncoderSettings, StreamEncoder, check_crf
from sac_ros.core.frames import PlaneLayout

PAD = 4  # the padding grid: packed I420 (U, V rows of a full row each) needs height % 4


class Reencoder:
    """RGB frames with their sensor sequence numbers and key-frame flags -> Annex-B."""

    def __init__(self, crf: float = 18.0, preset: str = "veryfast", gop: int = 0,
                 codec: str = "h264", threads: int = 0, fps: int = 30,
                 fallback_gop: int = 30):
        self.crf = check_crf(crf, "reencode_crf")
        self.fixed_gop = int(gop)  # 0 = follow the sensor's key frames
        self.fallback_gop = int(fallback_gop)
        self._settings = EncoderSettings(codec, preset, max(self.fixed_gop, 1), threads, fps)
        self.codec = self._settings.codec
        self._encoder: StreamEncoder | None = None
        self._layout: PlaneLayout | None = None
        self.sensor_gop: int | None = None  # learned from contiguous key-frame spacing
        self._last_key_seq: int | None = None
        self._seen_since_key = 0
        self.frames = 0     # frames encoded in all
        self.restarts = 0   # encoder (re)starts
        self.encode_ms = 0.0  # the last frame's conversion + encode

    @property
    def active(self) -> bool:
        return self._encoder is not None

    @property
    def gop(self) -> int:
        """The GOP a (re)started encoder gets."""
        if self.fixed_gop:
            return self.fixed_gop
        return self.sensor_gop or self.fallback_gop

    def observe(self, seq: int, key_frame: bool) -> None:
        """Learn the sensor's GOP from a delivered frame (cheap: call it for every frame)."""
        if key_frame:
            if (self._last_key_seq is not None and seq > self._last_key_seq
                    and seq - self._last_key_seq == self._seen_since_key):
                self.sensor_gop = seq - self._last_key_seq  # no frame missing in between
            self._last_key_seq, self._seen_since_key = seq, 0
        self._seen_since_key += 1

    def encode(self, rgb: np.ndarray, seq: int, key_frame: bool) -> bytes:
        """One frame's access unit (the first after a (re)start is a key frame)."""
        start = time.perf_counter()
        self.observe(seq, key_frame)
        height, width = rgb.shape[:2]
        encoder = self._encoder
        if (encoder is None or (self._layout.width, self._layout.height) != (width, height)
                or (key_frame and not encoder.next_is_key)
                or (key_frame and encoder.settings.gop != self.gop)):
            encoder = self._restart(width, height)
        data, _key = encoder.encode(self._layout.rgb_to_i420(rgb))
        self.frames += 1
        self.encode_ms = (time.perf_counter() - start) * 1e3
        return data

    def _restart(self, width: int, height: int) -> StreamEncoder:
        if self._layout is None or (self._layout.width, self._layout.height) != (width, height):
            self._layout = PlaneLayout(height, width, PAD)
        settings = EncoderSettings(self.codec, self._settings.preset, self.gop,
                                   self._settings.threads, self._settings.fps)
        self._encoder = StreamEncoder(self._layout.padded_width, self._layout.padded_height,
                                      self.crf, settings)
        self.restarts += 1
        return self._encoder

    def stop(self) -> None:
        """Drop the encoder (nobody watches); the next ``encode`` starts a fresh one."""
        self._encoder = None
