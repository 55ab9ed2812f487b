"""``sac view``: serve the running pipeline to Foxglove over WebSocket (the sac_view node).

Runs the node in this process with config/pipeline.yaml's ``sac_view`` parameters and
its cameras (``--cameras`` overrides), the same command line `sac pipeline --view` and
``view:=true`` give it. ``--write-layout`` writes the matching Foxglove layout instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from sac_ros.core.errors import SacError
from sac_ros.pipeline import NodeSpec, load_layout, node_command


def add_parser(sub) -> None:
    p = sub.add_parser("view", help="serve the running pipeline to Foxglove (WebSocket)",
                       description="Serve each camera's original, reconstruction, ROI overlay, "
                                   "compressed stream and statistics to Foxglove over "
                                   "WebSocket (open ws://HOST:PORT in Foxglove, with the "
                                   "layout config/foxglove_layout.json).")
    p.add_argument("--config", help="pipeline parameter file (default: config/pipeline.yaml)")
    p.add_argument("--cameras", help="camera namespaces, comma-separated (default: the "
                   "config's sac_pipeline.cameras)")
    p.add_argument("--port", type=int, help="WebSocket port (default: the config's, 8765; "
                   "0 = any free port)")
    p.add_argument("--host", help="address to bind (default: the config's, 127.0.0.1)")
    p.add_argument("--max-fps", type=float, help="most frames per second per image channel "
                   "(default: the config's)")
    p.add_argument("--write-layout", metavar="FILE", help="write the Foxglove layout for "
                   "these cameras to FILE and exit")
    p.set_defaults(func=run)


def parse_cameras(text: str) -> list[str]:
    cameras = [c.strip().strip("/") for c in text.split(",")]
    for camera in cameras:
        if camera and not all(part.isidentifier() for part in camera.split("/")):
            raise SacError(f"--cameras: '{camera}' is not a valid ROS namespace")
    if len(set(cameras)) != len(cameras):
        raise SacError("--cameras: a camera is named twice")
    return cameras


def run(args) -> int:
    layout = load_layout(args.config)
    cameras = parse_cameras(args.cameras) if args.cameras else layout.cameras
    if args.write_layout:
        from sac_ros.nodes.view_channels import build_layout

        path = Path(args.write_layout)
        path.write_text(json.dumps(build_layout(cameras), indent=2) + "\n")
        print(f"sac view: Foxglove layout for cameras {', '.join(cameras)} written to {path}")
        return 0
    if args.port is not None and not 0 <= args.port <= 65535:
        raise SacError(f"--port {args.port} must be 0-65535")
    overrides: dict = {"cameras": cameras}
    for name, value in (("port", args.port), ("host", args.host),
                        ("max_fps", args.max_fps)):
        if value is not None:
            overrides[name] = value
    spec = NodeSpec("sac_view", "/", overrides)
    os.environ.update(layout.environment())  # the pipeline's Fast DDS transports
    from sac_ros.nodes.view import main

    # The node's command line without the interpreter: ["--ros-args", ...].
    ros_args = node_command(spec, str(layout.config))[3:]
    return main(args=["sac_view", *ros_args])  # a bad parameter: one line, exit 2
