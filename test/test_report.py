"""`sac report` on a bag built offline (ROS-free) and `sac reproduce` on tiny datasets."""

from __future__ import annotations

import json

import numpy as np
import pytest
from bags_fixtures import make_cityscapes, make_kitti, scene, tiny_segmenter
from PIL import Image

from sac_ros.bags.bagio import BagWriter
from sac_ros.bags.convert import MessageFactory
from sac_ros.bags.types import IMAGE, PACKET, SAC_STATS
from sac_ros.cli.main import main
from sac_ros.config import config_dir, load_core_config
from sac_ros.core import metrics
from sac_ros.core.classes import get_class_map
from sac_ros.core.codec import EncoderSettings
from sac_ros.core.mask import block_mask, expand_blocks, roi_pixels
from sac_ros.core.sac import SacDecoder, SacEncoder
from sac_ros.core.wire import packet_to_msg
from sac_ros.eval.coder import ClipCoder
from sac_ros.eval.reproduce import settings_from_config


def cli(capsys, *args) -> tuple[int, str, str]:
    """The `sac` entry point in-process (same parser, errors and exit codes)."""
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_line(capsys, command: str, *args) -> str:
    code, out, err = cli(capsys, *args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"sac {command}: error: "), lines[0]
    return lines[0]


# ------------------------------------------------------------------ report (no ROS)

def old_packet_store():
    """A typestore whose SacPacket is the definition from before the E2E fields."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    from sac_ros.bags.types import msg_dir

    store = get_typestore(Stores.ROS2_KILTED)
    for path in sorted(msg_dir().glob("*.msg")):
        text = path.read_text()
        if path.stem == "SacPacket":
            text = "\n".join(line for line in text.splitlines() if "e2e" not in line)
        store.register(get_types_from_msg(text, f"sac_ros/msg/{path.stem}"))
    assert "e2e_crc" not in [name for name, _ in store.fielddefs[PACKET][1]]
    return store


def write_run_bag(path, frames=12, skip=(4, 5), lose=(9,), height=48, width=80,
                  old_definition=False, cameras=("/cam",)):
    """A recorded run, built with the core coder: originals, packets, reconstructions and
    the sensor's statistics. ``skip`` frames are dropped and counted as superseded;
    ``lose`` frames are dropped without being counted (the report must notice).
    ``old_definition``: packets as a sensor from before the E2E checksum recorded them.
    Every camera namespace in ``cameras`` gets the same run; returns the first one's
    frames."""
    with BagWriter(path) as bag:
        factory = MessageFactory(bag.store, "camera")
        found = [_write_camera(bag, factory, ns, frames, skip, lose, height, width,
                               old_definition) for ns in cameras]
    return found[0]


def _write_camera(bag, factory, ns, frames, skip, lose, height, width, old_definition):
    encoder = SacEncoder(width, height, 20, 30, EncoderSettings(gop=6, preset="ultrafast"))
    decoder = SacDecoder()
    store_types = bag.store.types
    expected = {}
    base = 50_000_000_000
    for index in range(frames):
        rgb, regions = scene(height, width, index)
        stamp = base + index * 100_000_000
        bag.write(f"{ns}/image_raw", IMAGE, stamp + 1_000_000, factory.image(rgb, stamp))
        if index in skip or index in lose:
            continue
        blocks = block_mask(~regions["sky"])
        packet = encoder.encode(rgb, blocks)
        decoded = decoder.decode(packet)
        packet.segmentation_ms = 1.0
        msg = packet_to_msg(packet, factory.header(stamp), store_types[PACKET],
                            store_types["sac_ros/msg/EncodedStream"],
                            blob=lambda b: np.frombuffer(b, np.uint8))
        if old_definition:
            old = old_packet_store()
            fields = {k: v for k, v in vars(msg).items() if not k.startswith("e2e")}
            fields["roi"] = old.types["sac_ros/msg/EncodedStream"](**vars(msg.roi))
            fields["non_roi"] = [old.types["sac_ros/msg/EncodedStream"](**vars(s))
                                 for s in msg.non_roi]
            bag.connection(f"{ns}/sac/packets", PACKET, old.generate_msgdef(PACKET)[0],
                           old.hash_rihs01(PACKET))
            bag.write(f"{ns}/sac/packets", PACKET, stamp + 20_000_000,
                      old.serialize_cdr(old.types[PACKET](**fields), PACKET))
        else:
            bag.write_message(f"{ns}/sac/packets", PACKET, stamp + 20_000_000, msg)
        bag.write(f"{ns}/sac/image", IMAGE, stamp + 40_000_000,
                  factory.image(decoded.rgb, stamp))
        expected[stamp] = (rgb, decoded.rgb, expand_blocks(blocks, height, width),
                           packet.num_bytes)
    stats = store_types[SAC_STATS](
        header=factory.header(base + frames * 100_000_000), node=f"{ns}/sac_sensor",
        received=frames, processed=frames - len(skip) - len(lose),
        dropped=len(skip), drop_reasons=["superseded"],
        drop_counts=np.array([len(skip)], np.uint64), kbytes_per_frame=0.0,
        mbits_per_second=0.0, latency_p50_ms=0.0, latency_p99_ms=0.0, fps=0.0,
        output_readers=2, input_writers=-1)
    bag.write_message(f"{ns}/sac/sensor_stats", SAC_STATS, base + frames * 100_000_000, stats)
    encoder.close()
    decoder.close()
    return expected


def test_report_of_an_offline_bag(tmp_path, capsys):
    expected = write_run_bag(tmp_path / "run")
    out = tmp_path / "rep"
    code, stdout, err = cli(capsys, "report", tmp_path / "run", "--out", out, "--model", "none",
                            "--no-progress")
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    cam = report["cameras"][0]
    assert cam["namespace"] == "/cam"
    acc = cam["accounting"]
    assert (acc["source_frames"], acc["packets"], acc["reconstructed"]) == (12, 9, 9)
    assert acc["sensor_drops"] == {"superseded": 2} and acc["unaccounted"] == 1
    assert acc["live_equals_offline_decode"] is True
    assert acc["e2e_check"] == "checked"
    assert "unaccounted 1" in stdout
    # Per-frame figures recomputed here with the metrics module.
    assert cam["frames_evaluated"] == 9
    for frame in cam["frames"]:
        rgb, decoded, mask, num_bytes = expected[frame["stamp_ns"]]
        assert frame["bytes"] == num_bytes
        assert frame["psnr"] == pytest.approx(metrics.psnr(rgb, decoded))
        assert frame["roi_psnr"] == pytest.approx(metrics.psnr(rgb, decoded, mask))
        assert frame["non_roi_psnr"] == pytest.approx(metrics.psnr(rgb, decoded, ~mask))
        assert frame["ssim"] == pytest.approx(float(metrics.ssim_map(rgb, decoded).mean()))
        # Stamps on the recorder's clock: latency = receive time - stamp.
        assert frame["latency_ms"] == pytest.approx(40.0)
        assert frame["sensor_latency_ms"] == pytest.approx(20.0)
    method = cam["methods"][0]
    assert method["method"] == "SA-X264 20/30"
    psnr_roi = np.mean([f["roi_psnr"] for f in cam["frames"]])
    psnr_non = np.mean([f["non_roi_psnr"] for f in cam["frames"]])
    assert method["sa_psnr_region"] == pytest.approx(30 / 50 * psnr_roi + 20 / 50 * psnr_non)
    assert method["kb_per_frame"] == pytest.approx(
        np.mean([v[3] for v in expected.values()]) / 1000)
    html = (out / "index.html").read_text()
    assert "1 frame(s) unaccounted for" in html and "seed 001 Table II" in html
    for png in cam["plots"].values():
        with Image.open(out / png) as image:
            image.verify()


def test_report_leads_with_frames_delivered_and_the_link_budget(tmp_path, capsys):
    """Issue 17 items 2 and 8: frames counted as drops are accounted for, not delivered, so
    the headline is the frames delivered (never a green success when some were dropped);
    the cameras' total bit rate is checked against the link they share."""
    write_run_bag(tmp_path / "run", skip=(4, 5), lose=(), cameras=("/front", "/rear"))
    out = tmp_path / "rep"
    code, stdout, err = cli(capsys, "report", tmp_path / "run", "--out", out, "--model", "none",
                            "--no-progress", "--link-budget", "1000BASE-T1")
    assert code == 0, err
    lines = stdout.splitlines()
    for camera in ("/front", "/rear"):
        head = lines.index(f"camera {camera}: frames delivered: 10 of 12 (83.3%); dropped: "
                           "superseded 2")
        assert lines[head + 1] == ("  accounting: 12 frames, 10 packets, 10 reconstructed, "
                                   "counted drops 2, unaccounted 0")
    report = json.loads((out / "report.json").read_text())
    total = sum(c["rate"]["mbit_per_s_mean"] for c in report["cameras"])
    budget = report["link_budget"]
    assert budget["total_mbps"] == pytest.approx(total) and budget["cameras"] == 2
    assert budget["fits"] is True and budget["budget_mbps"] == 1000.0
    assert (f"total {total:.3f} Mbit/s for 2 cameras: fits 1000BASE-T1 (1000 Mbit/s) with "
            "99.9% headroom") in stdout
    html = (out / "index.html").read_text()
    assert "every frame accounted for" not in html and "class=ok>Frames" not in html
    assert html.count("<h3 class=bad>Frames delivered: 10 of 12 (83.3%); dropped: "
                      "superseded 2</h3>") == 2
    assert "class=ok>Total " in html
    # A link the run does not fit in; every frame delivered is the one green headline.
    write_run_bag(tmp_path / "all", skip=(), lose=())
    code, stdout, err = cli(capsys, "report", tmp_path / "all", "--out", tmp_path / "rep2",
                            "--model", "none", "--no-progress", "--link-budget", "0.01")
    assert code == 0, err
    assert "camera /cam: frames delivered: 12 of 12 (100.0%)\n" in stdout
    assert "for 1 camera: does NOT fit a 0.01 Mbit/s link" in stdout
    html = (tmp_path / "rep2" / "index.html").read_text()
    assert "<h3 class=ok>Frames delivered: 12 of 12 (100.0%)</h3>" in html
    assert "class=bad>Total " in html


def test_report_of_a_bag_from_before_the_checksum(tmp_path, capsys):
    """Older bags still decode, with the E2E check reported as absent."""
    write_run_bag(tmp_path / "run", old_definition=True)
    out = tmp_path / "rep"
    code, _, err = cli(capsys, "report", tmp_path / "run", "--out", out, "--model", "none",
                       "--no-progress")
    assert code == 0, err
    cam = json.loads((out / "report.json").read_text())["cameras"][0]
    assert cam["accounting"]["e2e_check"] == "absent"
    assert cam["frames_evaluated"] == 9 and cam["accounting"]["offline_decode_drops"] == {}


# ------------------------------------------------------------------ reproduce

def test_reproduce_cityscapes(tmp_path, capsys):
    root = tmp_path / "cityscapes"
    data = make_cityscapes(root, [("train", "aachen", 0, 0, 5, {3}), ("val", "bonn", 2, 10, 4,
                                                                       {1})])
    model = tiny_segmenter(tmp_path / "rule.onnx")
    out = tmp_path / "out"
    code, stdout, err = cli(capsys, "reproduce", "--cityscapes", root, "--size", "native",
                            "--model", model, "--preset", "ultrafast", "--out", out,
                            "--no-progress")
    assert code == 0, err
    result = json.loads((out / "results.json").read_text())
    rows = {r["method"]: r for r in result["rows"]}
    assert len(rows) == 14 and result["frames"] == 9
    # The H.264 crf 23 row is printed beside the paper's 45.18 dB / 0.98.
    line = next(x for x in stdout.splitlines() if x.startswith("H.264 crf 23 "))
    assert "45.18" in line and "0.98" in line
    assert "paper 1:250" in stdout and "87.86" in stdout and "90.56" in stdout
    # Aggregation check: SA-X264 18/27 recomputed with ClipCoder, frame-weighted.
    frames = [rgb for _, rgb in data["frames"]]
    labels = list(data["labels"].values())
    cmap = get_class_map("cityscapes_label_ids")
    settings = settings_from_config(load_core_config(), "ultrafast", 17.0)
    runs = []
    for chunk, ids in ((frames[:5], labels[0]), (frames[5:], labels[1])):
        blocks = [block_mask(roi_pixels(ids, cmap))] * len(chunk)
        runs.append(ClipCoder(chunk, blocks, settings).run("h264", "dual_crf", 18, 27,
                                                           full=True))
    sa = rows["SA-X264 18/27"]
    assert sa["total_bytes"] == sum(r.total_bytes for r in runs)
    assert sa["psnr"] == pytest.approx((runs[0].psnr * 5 + runs[1].psnr * 4) / 9)
    assert sa["sa_psnr_stream"] == pytest.approx(
        (runs[0].record()["sa_psnr_stream"] * 5 + runs[1].record()["sa_psnr_stream"] * 4) / 9)
    # Equal bytes: the matched uniform rows are within tolerance of the pairs' bytes.
    for matched, pair in (("H.264 (= size of SA-X264 18/27)", "SA-X264 18/27"),
                          ("H.265 (= size of SA-X265 23/32)", "SA-X265 23/32")):
        ratio = rows[matched]["total_bytes"] / rows[pair]["total_bytes"]
        assert abs(ratio - 1) <= 0.15 + 1e-9, (matched, ratio)
    # Table IV: the rule model's ROI IoU against the labels, on the two labelled frames.
    gt = [roi_pixels(ids, cmap) for ids in labels]
    pred = [rgb[..., 2] < 128 for rgb in (frames[3], frames[6])]
    inter = sum((g & p).sum() for g, p in zip(gt, pred, strict=True))
    union = sum((g | p).sum() for g, p in zip(gt, pred, strict=True))
    for method in ("H.264 crf 23", "SA-X264 18/27", "H.265 crf 28", "SA-X265 23/32"):
        assert rows[method]["segmented_frames"] == 2
        assert rows[method]["iiou_vs_labels"] == pytest.approx(inter / union, abs=0.03)
        assert rows[method]["iiou_vs_original"] > 0.95
    assert (out / "tables.txt").read_text().strip() in stdout


def test_reproduce_kitti_step_with_model_masks(tmp_path, capsys):
    root = tmp_path / "kitti-step"
    make_kitti(root, [("train", "0000", 6), ("val", "0001", 4)])
    model = tiny_segmenter(tmp_path / "rule.onnx")
    code, stdout, err = cli(capsys, "reproduce", "--kitti-step", root, "--codecs", "h264",
                            "--mask", "model", "--model", model, "--frames-per-sequence", "3",
                            "--max-sequences", "1", "--preset", "ultrafast", "--out",
                            tmp_path / "out", "--no-progress")
    assert code == 0, err
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    assert result["frames"] == 3 and len(result["sequences"]) == 1
    assert result["mask"] == "model" and {r["codec"] for r in result["rows"]} == {"h264"}
    line = next(x for x in stdout.splitlines() if x.startswith("SA-X264 18/23 "))
    assert "33.60" in line and "Table III (KITTI-STEP)" in stdout   # the paper's KITTI row


def test_reproduce_takes_the_papers_pair_from_the_config(tmp_path, capsys):
    """config/sac.yaml's eval.paper_pairs is the one definition of the pair; another pair
    (not a Table II row) is run and matched in its place."""
    import yaml

    root = tmp_path / "kitti-step"
    make_kitti(root, [("train", "0000", 3)])
    cfg = yaml.safe_load((config_dir() / "sac.yaml").read_text())
    cfg["eval"]["paper_pairs"]["h264"] = [20, 30]
    config = tmp_path / "sac.yaml"
    config.write_text(yaml.safe_dump(cfg))
    # x264 and avc: sac eval's codec aliases, the same H.264 run once (issue 17 item 5).
    code, stdout, err = cli(capsys, "reproduce", "--kitti-step", root, "--codecs", "x264",
                            "avc", "--preset", "ultrafast", "--config", config, "--out",
                            tmp_path / "out", "--no-progress")
    assert code == 0, err
    rows = {r["method"]: r for r in json.loads((tmp_path / "out" / "results.json")
                                               .read_text())["rows"]}
    assert {r["codec"] for r in rows.values()} == {"h264"}
    assert rows["SA-X264 20/30"]["mode"] == "dual_crf"
    assert "H.264 (= size of SA-X264 20/30)" in rows and "SA-X264 18/27" in rows
    assert "  SA-X264 20/30 " in stdout   # the equal-bytes lines use the config's pair


def test_reproduce_bad_input(tmp_path, capsys):
    kitti = tmp_path / "kitti"
    make_kitti(kitti, [("train", "0000", 2)], labels=False)
    assert "not cityscapes" in error_line(capsys, "reproduce", "reproduce", "--cityscapes",
                                          kitti, "--out", tmp_path / "o", "--no-progress")
    assert "no sequence could be evaluated" in error_line(
        capsys, "reproduce", "reproduce", "--kitti-step", kitti, "--out", tmp_path / "o",
        "--no-progress")
    assert "needs a segmentation model" in error_line(
        capsys, "reproduce", "reproduce", "--kitti-step", kitti, "--mask", "model", "--out",
        tmp_path / "o", "--no-progress")
    (tmp_path / "plain").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "plain" / "x.png")
    # A plain image folder is a source (sac bag convert), but not Cityscapes.
    assert "is in the images layout, not cityscapes" in error_line(
        capsys, "reproduce", "reproduce", "--cityscapes", tmp_path / "plain", "--no-progress")
