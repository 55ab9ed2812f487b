"""The runner's summary listener measures a frame whatever order its three messages
(camera original, sensor packet, ECU image) reach its one executor thread in."""

from __future__ import annotations

import itertools

import pytest
import ros_helpers as rh
from ros_helpers import HEIGHT, WIDTH, frame
from std_msgs.msg import Header

from sac_ros.core.codec import EncoderSettings
from sac_ros.core.sac import SacEncoder
from sac_ros.nodes.messages import packet_to_msg, rgb_to_image
from sac_ros.nodes.summary import SummaryCollector


@pytest.mark.parametrize("order", list(itertools.permutations(("raw", "packet", "output"))))
def test_a_frame_is_measured_in_any_arrival_order(order):
    import rclpy

    rgb = frame(3)
    encoder = SacEncoder(WIDTH, HEIGHT, 20.0, 34.0, EncoderSettings("h264", "veryfast", 5))
    try:
        packet = encoder.encode(rgb, rh.polygon_blocks(rgb))
    finally:
        encoder.close()
    header = Header(frame_id="cam")
    header.stamp.sec, header.stamp.nanosec = 12, 345
    output = rgb.copy()
    output[::2] ^= 3  # a reconstruction with a known, finite error
    namespace = rh.unique_ids()[1]
    rclpy.init()
    try:
        collector = SummaryCollector([namespace])
        calls = {"raw": lambda: collector._on_raw(namespace, rgb_to_image(rgb, header)),
                 "packet": lambda: collector._on_packet(namespace, packet_to_msg(packet, header)),
                 "output": lambda: collector._on_output(namespace, rgb_to_image(output, header))}
        for name in order:
            calls[name]()
        collector.finish_quality()
        row = collector.cameras[namespace].row()
        collector.destroy_node()
    finally:
        rclpy.shutdown()
    assert (row["frames_in"], row["packets"], row["frames_out"]) == (1, 1, 1)
    assert (row["quality_frames"], row["quality_skipped"]) == (1, 0), (order, row)
    assert 30.0 < row["roi_psnr"] < 60.0 and 30.0 < row["non_roi_psnr"] < 60.0
