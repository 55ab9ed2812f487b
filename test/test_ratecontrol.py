"""RateController with real x264: convergence after a scene cut, the hard cap, the floor."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from sac_ros.core import metrics
from sac_ros.core.codec import EncoderSettings, StreamEncoder, Vbv
from sac_ros.core.errors import SacError
from sac_ros.core.ratecontrol import RateController
from sac_ros.core.sac import SacEncoder

HEIGHT, WIDTH, FPS, GOP = 108, 192, 10, 10


@pytest.fixture(scope="module")
def scene_cut():
    """Real footage: 4 s of a 2x zoomed close-up, then 4 s of the whole scene 5x smaller.

    The whole scene costs about 1.7x the bytes at the same CRF: a cut to harder content.
    """
    from sac_ros.core.io import load_clip

    frames = load_clip("sample", 0, 40).frames
    close_up = [np.ascontiguousarray(np.repeat(np.repeat(f[280:334, 420:516], 2, 0), 2, 1))
                for f in frames]
    wide = [np.ascontiguousarray(f[::5, ::5]) for f in frames]
    return close_up + wide


def roi_blocks() -> np.ndarray:
    blocks = np.zeros((7, 12), bool)
    blocks[3:] = True
    return blocks


def run(frames, controller: RateController, mode: str):
    decision = controller.decision
    encoder = SacEncoder(WIDTH, HEIGHT, decision.roi_crf, decision.non_roi_crf,
                         EncoderSettings("h264", "veryfast", GOP, threads=1, fps=FPS), mode)
    decision.apply_to(encoder)
    packets = []
    try:
        for frame in frames:
            packets.append(encoder.encode(frame, roi_blocks()))
            new = controller.observe(packets[-1])
            if new is not None:
                new.apply_to(encoder)
    finally:
        encoder.close()
    return packets


def gop_bps(packets) -> list[float]:
    return [sum(p.num_bytes for p in packets[i:i + GOP]) * 8.0 * FPS / GOP
            for i in range(0, len(packets) - GOP + 1, GOP)]


@pytest.mark.parametrize("mode", ["roi_qp", "dual_crf", "uniform"])
def test_converges_after_a_scene_cut(scene_cut, mode):
    target = 100e3
    controller = RateController(target, FPS, GOP, mode, spread=9, vbv_buffer_s=0.3,
                                width=WIDTH, height=HEIGHT)
    packets = run(scene_cut, controller, mode)
    rates = np.array(gop_bps(packets)) / target
    assert len(rates) == 8  # 4 GOPs before the cut, 4 after
    before, after = rates[2:4], rates[6:]
    assert np.all(np.abs(before - 0.97) < 0.12), rates  # on target (3% margin) before the cut
    assert np.all(np.abs(after - 0.97) < 0.12), rates   # and again from the 2nd GOP after it
    # The controller, not only the VBV, reacted: CRFs about 4 higher after the cut.
    crf_before, crf_after = packets[3 * GOP].roi.crf, packets[-1].roi.crf
    assert crf_after > crf_before + 2.5, (crf_before, crf_after)
    # Hard cap (1.1 x target): no window of T s carries more than cap * (T + 0.3 s).
    for seconds in (0.5, 1.0, 2.0):
        windows = metrics.window_bitrates([p.num_bytes for p in packets], FPS, seconds)
        assert windows.max() * seconds <= 1.1 * target * (seconds + 0.3) * 1.03, (seconds,
                                                                                  windows.max())


def test_dual_crf_adapts_both_crfs_with_the_spread(scene_cut):
    controller = RateController(100e3, FPS, GOP, "dual_crf", spread=7, width=WIDTH,
                                height=HEIGHT)
    packets = run(scene_cut, controller, "dual_crf")
    pairs = {(p.roi.crf, p.non_roi.crf) for p in packets}
    assert len(pairs) >= 4  # changed GOP by GOP
    assert all(non == pytest.approx(roi + 7) for roi, non in pairs)
    for packet in packets:  # only at key frames
        if not packet.key_frame:
            previous = packets[packet.seq - 1]
            assert (packet.roi.crf, packet.non_roi.crf) == (previous.roi.crf,
                                                            previous.non_roi.crf)


def test_sheds_non_roi_quality_first(scene_cut):
    """With the ROI held at its floor (CRF 20 here), only the non-ROI CRF gives way."""
    controller = RateController(140e3, FPS, GOP, "roi_qp", spread=4, roi_crf_max=20,
                                width=WIDTH, height=HEIGHT)
    run(scene_cut[40:], controller, "roi_qp")
    last = controller.history[-1]
    assert last["next_roi_crf"] == 20
    assert last["next_non_roi_crf"] > 20 + 4 + 2  # well past the preferred spread
    assert controller.warning is None


def test_target_below_the_floor_warns_and_holds_the_cap(scene_cut, caplog):
    target = 8e3
    controller = RateController(target, FPS, GOP, "roi_qp", width=WIDTH, height=HEIGHT)
    with caplog.at_level(logging.WARNING, logger="sac_ros.ratecontrol"):
        packets = run(scene_cut[40:], controller, "roi_qp")
    assert controller.floor_bps > target
    assert controller.warning.startswith("target 0.008 Mbit/s is below the floor of ")
    assert f"{controller.floor_bps / 1e6:.3g} Mbit/s" in controller.warning
    assert sum("below the floor" in r.message for r in caplog.records) == 1  # once, not per GOP
    decision = controller.decision
    assert decision.non_roi_crf == 51 and decision.roi_crf > 36  # ROI let go, to hold the cap
    late = metrics.window_bitrates([p.num_bytes for p in packets[2 * GOP:]], FPS, 1.0)
    assert late.max() <= 1.1 * target * 1.3 * 1.5  # VBV cap * (1 s + 0.3 s); x264 at QP 51


def test_vbv_level_survives_a_reopen():
    """CRF changes reopen the encoder; the VBV must not start full again each time."""
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (64 * 3 // 2, 96), np.uint8) for _ in range(30)]
    vbv = Vbv(200, 60)
    encoder = StreamEncoder(96, 64, 12, EncoderSettings(gop=3, threads=1, fps=10), vbv=vbv)
    sizes = []
    for index, frame in enumerate(frames):
        if index % 3 == 1:
            encoder.set_crf(12 + index % 2)  # forces a reopen at every key frame
        sizes.append(len(encoder.encode(frame)[0]))
    windows = metrics.window_bitrates(sizes, 10, 1.0)
    # Leaky bucket: at most maxrate * 1 s + bufsize per second (a refilled buffer
    # every 3 frames would allow far more).
    assert windows.max() <= (200 + 60) * 1000 * 1.03, windows.max()


def test_observe_returns_a_decision_after_each_gop(scene_cut):
    controller = RateController(100e3, FPS, GOP, "roi_qp", width=WIDTH, height=HEIGHT)
    first = controller.decision
    encoder = SacEncoder(WIDTH, HEIGHT, first.roi_crf, first.non_roi_crf,
                         EncoderSettings("h264", gop=GOP, threads=1, fps=FPS), "roi_qp")
    results = [controller.observe(encoder.encode(f, roi_blocks())) for f in scene_cut[:25]]
    encoder.close()
    assert [r is not None for r in results] == [i % GOP == GOP - 1 for i in range(25)]
    assert controller.gops_observed == 2 and len(controller.history) == 2
    assert results[GOP - 1].qp_offset == pytest.approx(9)
    assert controller.decision is results[2 * GOP - 1]


def test_bad_input():
    with pytest.raises(SacError, match="target bitrate must be in"):
        RateController(0, 25, 25)
    with pytest.raises(SacError, match="target bitrate must be a number"):
        RateController("fast", 25, 25)
    with pytest.raises(SacError, match="target bitrate must be in"):
        RateController(float("nan"), 25, 25)
    with pytest.raises(SacError, match="fps must be in"):
        RateController(1e6, 0, 25)
    for gop in (0, 2.5, True):
        with pytest.raises(SacError, match="gop must be a whole number"):
            RateController(1e6, 25, gop)
    with pytest.raises(SacError, match="unknown rate-control mode 'vbr'"):
        RateController(1e6, 25, 25, "vbr")
    with pytest.raises(SacError, match="cap .* is below the target"):
        RateController(2e6, 25, 25, cap_bps=1e6)
    with pytest.raises(SacError, match="roi_crf_min 30 is above roi_crf_max 20"):
        RateController(1e6, 25, 25, roi_crf_min=30, roi_crf_max=20)
    with pytest.raises(SacError, match="margin must be in"):
        RateController(1e6, 25, 25, margin=0.9)
    with pytest.raises(SacError, match="spread .* must be in"):
        RateController(1e6, 25, 25, spread=-1)
    controller = RateController(1e6, 25, 1, "dual_crf")
    encoder = SacEncoder(48, 32, 23, 30, EncoderSettings(gop=1, threads=1), "roi_qp")
    packet = encoder.encode(np.zeros((32, 48, 3), np.uint8))
    with pytest.raises(SacError, match="is for dual_crf but the packet is roi_qp"):
        controller.observe(packet)
