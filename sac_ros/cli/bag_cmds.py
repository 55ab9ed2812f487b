"""``sac bag convert | info | play | record | recover | run``: ROS 2 bags without rosbag2."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from sac_ros.core.errors import SacError
from sac_ros.core.wire import (
    CAMERA_INFO_TOPIC,
    INPUT_TOPIC,
    LABELS_TOPIC,
    PACKET_TOPIC,
    topic_in,
)
from sac_ros.datasets import CITYSCAPES_RATE, KITTI_RATE


def check_file_output(path: str | None, flag: str) -> None:
    """Refuse an output file that cannot be written, before the long work starts."""
    if not path:
        return
    target = Path(path)
    parent = target.resolve().parent
    if target.is_dir():
        raise SacError(f"{flag} {target} is a folder")
    if not parent.is_dir():
        raise SacError(f"{flag} {target}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise SacError(f"{flag} {target}: not writable")


def add_parsers(sub) -> None:
    bag = sub.add_parser("bag", help="convert datasets/videos to ROS 2 bags; play, record, "
                                     "recover, run",
                         description="ROS 2 bags (MCAP or sqlite3) written and read with "
                                     "rosbags; play and record use rclpy.")
    bag_sub = bag.add_subparsers(dest="bag_command", metavar="BAG_COMMAND")
    bag_sub.required = True
    _convert_parser(bag_sub)
    _info_parser(bag_sub)
    _play_parser(bag_sub)
    _record_parser(bag_sub)
    _recover_parser(bag_sub)
    _run_parser(bag_sub)


# ------------------------------------------------------------------ convert

def _convert_parser(sub) -> None:
    p = sub.add_parser(
        "convert", help="Cityscapes / KITTI-STEP sequences, an image folder or a video -> "
                        "ROS 2 bag",
        description=f"Convert Cityscapes leftImg8bit_sequence ({CITYSCAPES_RATE:g} Hz, gtFine "
                    f"labels), KITTI-STEP images ({KITTI_RATE:g} Hz, panoptic labels), any "
                    "other image folder (file-name order, 30 Hz) or any video into a ROS 2 bag "
                    "of sensor_msgs/Image (plus labels and CameraInfo). Stamps come from the "
                    "frame numbers.")
    p.add_argument("input", help="dataset folder (root, split, city or sequence), image folder, "
                   "video file, or sample[:clip]")
    p.add_argument("output", help="bag folder to create")
    p.add_argument("--storage", default="mcap", choices=("mcap", "sqlite3"),
                   help="storage plugin (default: mcap)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output bag")
    p.add_argument("--compress", action="store_true",
                   help="zstd compression (MCAP chunks; sqlite3 per message)")
    p.add_argument("--size", help="resize frames (and labels, nearest) to WIDTHxHEIGHT, e.g. "
                   "1024x512 as in the papers")
    p.add_argument("--topic", default=topic_in("front", INPUT_TOPIC), help="image topic")
    p.add_argument("--labels-topic", default=topic_in("front", LABELS_TOPIC),
                   help="ground-truth label topic")
    p.add_argument("--no-labels", action="store_true", help="do not write labels")
    p.add_argument("--camera-info-topic", default=topic_in("front", CAMERA_INFO_TOPIC),
                   help="CameraInfo topic (written when --calibration is given)")
    p.add_argument("--calibration", help="ROS camera_info .yaml, Cityscapes camera .json, or "
                   "KITTI calib .txt[:KEY] (default key P2)")
    p.add_argument("--frame-id", default="camera", help="header frame_id")
    p.add_argument("--max-frames", type=int, help="convert at most this many frames")
    p.add_argument("--start-time", type=float, default=0.0,
                   help="stamp of the first frame, seconds since the epoch (default 0)")
    p.add_argument("--fps", type=float, help="override the frame rate (default: "
                   f"{CITYSCAPES_RATE:g} Hz Cityscapes, {KITTI_RATE:g} Hz KITTI, 30 Hz another "
                   "image folder, the video's own)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run_convert)


def run_convert(args) -> int:
    from tqdm import tqdm

    from sac_ros.bags.convert import ConvertOptions, convert
    from sac_ros.core.io import parse_size

    if args.start_time < 0:
        raise SacError("--start-time must not be negative")
    options = ConvertOptions(
        topic=args.topic, labels_topic=args.labels_topic,
        camera_info_topic=args.camera_info_topic, frame_id=args.frame_id,
        size=parse_size(args.size) if args.size else None, storage=args.storage,
        overwrite=args.overwrite, compress=args.compress, max_frames=args.max_frames,
        start_time_ns=round(args.start_time * 1e9), calibration=args.calibration,
        fps=args.fps, labels=not args.no_labels)
    bar = tqdm(unit="frame", desc="sac bag convert", file=sys.stderr,
               disable=args.no_progress or None)

    def progress(done: int, total: int | None) -> None:
        if total is not None and bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    try:
        result = convert(args.input, args.output, options, progress)
    finally:
        bar.close()
    print(result.summary())
    return 0


# ------------------------------------------------------------------ info

def _info_parser(sub) -> None:
    p = sub.add_parser("info", help="topics, types, counts and time span of a bag")
    p.add_argument("bag", help="bag folder (or its .mcap / .db3 file)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_info)


def run_info(args) -> int:
    from sac_ros.bags.info import bag_info, format_info

    info = bag_info(args.bag)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


# ------------------------------------------------------------------ play

def _play_parser(sub) -> None:
    p = sub.add_parser("play", help="publish a bag at its recorded timing x --rate",
                       description="Publish the bag's serialized messages untouched (raw CDR) "
                                   "at their recorded times x rate.")
    p.add_argument("bag", help="bag folder (or its .mcap / .db3 file)")
    p.add_argument("--rate", "-r", type=float, default=1.0, help="speed factor (default 1)")
    p.add_argument("--loop", "-l", type=int, nargs="?", const=0, default=1, metavar="N",
                   help="play N passes; --loop alone repeats until Ctrl-C")
    p.add_argument("--start-offset", type=float, default=0.0,
                   help="start this many seconds into the bag")
    p.add_argument("--clock", type=float, nargs="?", const=40.0, default=0.0, metavar="HZ",
                   help="publish /clock with bag time at HZ (default 40 when given)")
    p.add_argument("--topics", nargs="+", help="only these topics")
    p.add_argument("--remap", action="append", default=[], metavar="/OLD:=/NEW",
                   help="publish a topic under another name (repeatable)")
    p.add_argument("--wait-for", action="append", default=[], metavar="/TOPIC[=N]",
                   help="before playing, wait until TOPIC has N (default 1) subscribers "
                        "(repeatable)")
    p.add_argument("--wait-timeout", type=float, default=60.0,
                   help="seconds to wait for subscribers (default 60)")
    p.add_argument("--delay", type=float, default=0.0, help="sleep this long before playing")
    p.add_argument("--qos-depth", type=int, default=100, help="publisher queue depth")
    p.add_argument("--qos-reliability", default="reliable", choices=("reliable", "best_effort"))
    p.add_argument("--skip-unknown", action="store_true",
                   help="skip topics whose message package is not installed for rclpy")
    p.add_argument("--json", help="write the playback summary as JSON here")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run_play)


def run_play(args) -> int:
    from sac_ros.bags.play import PlayOptions, exit_code, parse_remap, parse_wait, play_with_bar

    if args.qos_depth < 1:
        raise SacError("--qos-depth must be at least 1")
    check_file_output(args.json, "--json")
    options = PlayOptions(rate=args.rate, loop=args.loop, start_offset=args.start_offset,
                          clock_hz=args.clock, topics=args.topics,
                          remap=parse_remap(args.remap), wait_for=parse_wait(args.wait_for),
                          wait_timeout=args.wait_timeout, delay=args.delay,
                          qos_depth=args.qos_depth, reliability=args.qos_reliability,
                          skip_unknown=args.skip_unknown)
    result = play_with_bar(args.bag, options, not args.no_progress)
    print(result.summary(args.rate))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result.record(args.rate), handle, indent=2)
    return exit_code(result, options)


# ------------------------------------------------------------------ record

def _record_parser(sub) -> None:
    p = sub.add_parser("record", help="record topics to a bag (raw subscriptions)",
                       description="Record topics as received (raw CDR, receive-time stamps) "
                                   "until Ctrl-C / SIGTERM or --duration.")
    p.add_argument("output", help="bag folder to create")
    p.add_argument("--topics", nargs="+", default=[], help="topics to record")
    p.add_argument("--camera", action="append", default=[], metavar="NAMESPACE",
                   help="record a pipeline camera's topics: image_raw, labels, camera_info, "
                        "sac/packets, sac/image, sac/video (CompressedVideo, when a node "
                        "offers it) and the stats (repeatable)")
    p.add_argument("--input-topic", default=INPUT_TOPIC,
                   help=f"with --camera: the camera image topic name (default {INPUT_TOPIC})")
    p.add_argument("--packet-topic", default=PACKET_TOPIC,
                   help=f"with --camera: the sensor's packet_topic (default {PACKET_TOPIC})")
    p.add_argument("--duration", type=float, default=0.0,
                   help="stop after this many seconds (default: until Ctrl-C)")
    p.add_argument("--storage", default="mcap", choices=("mcap", "sqlite3"))
    p.add_argument("--overwrite", action="store_true", help="replace an existing output bag")
    p.add_argument("--compress", action="store_true", help="zstd compression")
    p.add_argument("--qos-depth", type=int, default=100, help="subscription queue depth")
    p.set_defaults(func=run_record)


def run_record(args) -> int:
    from sac_ros.bags.record import RecordOptions, camera_topics, record

    if args.duration < 0:
        raise SacError("--duration must not be negative")
    if args.qos_depth < 1:
        raise SacError("--qos-depth must be at least 1")
    topics = list(args.topics)
    for camera in args.camera:
        topics += camera_topics(camera, args.input_topic, args.packet_topic)
    stats = record(args.output, RecordOptions(topics, args.storage, args.overwrite,
                                              args.compress, args.duration, args.qos_depth),
                   log=lambda s: print(s, file=sys.stderr))
    print(stats.summary(args.output))
    return 0


# ------------------------------------------------------------------ recover

def _recover_parser(sub) -> None:
    p = sub.add_parser(
        "recover", help="finish an unfinished, truncated or damaged MCAP recording",
        description="Read every message that can be trusted from an MCAP a killed recorder "
                    "left (NAME.partial-PID/), or from a truncated or damaged bag, and write "
                    "it to a new, finished bag. Says how many messages were recovered and "
                    "lost. The input is left untouched.")
    p.add_argument("bag", help="the partial folder, bag folder or .mcap file")
    p.add_argument("-o", "--output", help="bag folder to create (default: NAME for "
                   "NAME.partial-PID, else NAME-recovered)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output bag")
    p.add_argument("--json", help="write the result as JSON here")
    p.set_defaults(func=run_recover)


def run_recover(args) -> int:
    from dataclasses import asdict

    from sac_ros.bags.bagio import check_output
    from sac_ros.bags.recover import default_output, recover

    check_file_output(args.json, "--json")
    output = args.output or default_output(args.bag)
    check_output(output, args.overwrite)
    result = recover(args.bag, output, args.overwrite)
    print(result.summary())
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(asdict(result), handle, indent=2)
    return 0


# ------------------------------------------------------------------ run

def _run_parser(sub) -> None:
    p = sub.add_parser(
        "run", help="replay a bag through the live pipeline and record the run",
        description="Start the pipeline nodes (config/pipeline.yaml), record every camera's "
                    "topics, play the bag into them, wait for the pipeline to drain, and "
                    "check that every frame is reconstructed or counted as a drop.")
    p.add_argument("bag", help="source bag (e.g. from sac bag convert)")
    p.add_argument("output", help="recorded run bag to create (input for sac report)")
    p.add_argument("--rate", "-r", type=float, default=1.0, help="playback speed factor")
    p.add_argument("--config", help="pipeline parameter file (default: config/pipeline.yaml)")
    p.add_argument("--input-topic", default="", help="camera Image topic name "
                   "(default: the config's, image_raw)")
    p.add_argument("--model", default="", help="segmentation model for the ROI mask")
    p.add_argument("--param", "-p", action="append", default=[], metavar="NODE.NAME=VALUE",
                   help="override a node parameter, e.g. sac_sensor.codec=hevc (repeatable)")
    p.add_argument("--no-perception", action="store_true", help="do not start perception nodes")
    p.add_argument("--storage", default="mcap", choices=("mcap", "sqlite3"))
    p.add_argument("--overwrite", action="store_true", help="replace an existing output bag")
    p.add_argument("--startup-timeout", type=float, default=60.0,
                   help="seconds to wait for the nodes to be discovered")
    p.add_argument("--json", help="write the run summary as JSON here")
    p.add_argument("--no-progress", action="store_true", help="hide the player's progress bar")
    p.set_defaults(func=run_run)


def run_run(args) -> int:
    from sac_ros.bags.bagio import check_output
    from sac_ros.bags.run import RunOptions, format_run, run_pipeline

    check_output(args.output, args.overwrite)
    check_file_output(args.json, "--json")
    options = RunOptions(rate=args.rate, config=args.config, input_topic=args.input_topic,
                         model=args.model, params=args.param, perception=not args.no_perception,
                         storage=args.storage, overwrite=args.overwrite,
                         startup_timeout=args.startup_timeout, progress=not args.no_progress)
    summary = run_pipeline(args.bag, args.output, options)
    print(format_run(summary))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(summary, handle, indent=2, default=float)
    return 0 if all(c["unaccounted"] == 0 for c in summary["cameras"]) else 1
