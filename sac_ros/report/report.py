"""``sac report BAG``: offline evaluation of a recorded pipeline run -> HTML + PNG + JSON."""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sac_ros.bags.bagio import open_bag
from sac_ros.bags.runbag import find_cameras, read_run
from sac_ros.core.errors import SacError
from sac_ros.core.wire import INPUT_TOPIC
from sac_ros.eval.tables import (
    PAPER_TABLE_II,
    PAPER_TABLE_IV,
    TABLE_II_HEADER,
    TABLE_IV_HEADER,
    table_ii_cells,
    table_iv_cells,
    text_table,
)
from sac_ros.pipeline import DEFAULT_LINK_BUDGET_MBPS, delivery_headline, link_budget
from sac_ros.report import figures
from sac_ros.report.measure import RunEvaluator, distribution, segmentation_scores, summarise


@dataclass
class ReportOptions:
    out: str = "sac_report"
    model: str | None = "auto"          # auto: the default model if installed; None: off
    input_topic: str = INPUT_TOPIC
    cameras: list[str] | None = None
    max_frames: int | None = None
    source_frames: int | None = None    # frames the source had (for the accounting)
    video: bool = False                 # also <camera>_video.mp4 (eval/video.py)
    link_budget_mbps: float = DEFAULT_LINK_BUDGET_MBPS  # the link the cameras share


def load_report_segmenter(spec: str | None):
    """(segmenter or None, note). ``auto`` falls back to none when the default is missing."""
    if spec is None or spec == "none":
        return None, "segmentation off (--model none)"
    from sac_ros.segmentation.loader import DEFAULT_MODEL, load_segmenter

    if spec == "auto":
        if not DEFAULT_MODEL.is_file():
            return None, (f"segmentation skipped: the default model {DEFAULT_MODEL.name} is not "
                          "installed (pass --model PATH)")
        spec = "default"
    segmenter = load_segmenter(model=spec)
    return segmenter, f"segmenter {segmenter.name}"


def _counts(bag: str, input_topic: str, cameras: list[str] | None) -> tuple[dict, int]:
    reader = open_bag(bag)
    try:
        cams = find_cameras(reader, input_topic, cameras)
        counts = {c.topic: c.msgcount for c in reader.connections}
        total = sum(counts.get(t, 0) for cam in cams for t in
                    (cam.original, cam.packets, cam.reconstructed, cam.labels,
                     cam.sensor_stats, cam.ecu_stats, cam.perception_stats))
        return {cam.namespace: counts.get(cam.original, 0) for cam in cams}, total
    finally:
        reader.close()


def make_report(bag: str, options: ReportOptions, progress=None, log=print) -> dict:
    originals, total = _counts(bag, options.input_topic, options.cameras)
    if progress is not None:
        progress(0, total)
    segmenter, seg_note = load_report_segmenter(options.model)
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    sample_index = max(0, min(originals.values()) // 2) if originals else 0
    if options.max_frames:
        sample_index = min(sample_index, options.max_frames // 2)
    videos = figures.CameraVideos(out, _slug) if options.video else None
    evaluator = RunEvaluator(segmenter, sample_index, frame_sink=videos)
    try:
        cameras, accounting, facts = read_run(
            bag, evaluator, options.input_topic, options.cameras, options.max_frames,
            (lambda n: progress(n, None)) if progress is not None else None)
    finally:
        if segmenter is not None:
            segmenter.close()
        video_files = videos.close() if videos is not None else {}
    report = {"bag": str(bag), "facts": facts, "segmentation": seg_note, "cameras": []}
    for cam in cameras:
        result = evaluator.cameras.get(cam.namespace)
        acc = accounting[cam.namespace].record(options.source_frames)
        if result is None or not result.frames:
            report["cameras"].append({"namespace": cam.namespace, "accounting": acc,
                                      "frames_evaluated": 0})
            log(f"sac report: camera {cam.namespace}: no frame has both an original and a "
                "reconstruction in the bag")
            continue
        report["cameras"].append(_camera_report(cam.namespace, result, acc, out))
        if cam.namespace in video_files:
            report["cameras"][-1]["video"] = video_files[cam.namespace]
    if not any(c.get("frames_evaluated") for c in report["cameras"]):
        raise SacError("nothing to evaluate: no frame of the bag has both its original image "
                       f"({options.input_topic}) and its packet")
    report["link_budget"] = link_budget(
        [(c.get("rate") or {}).get("mbit_per_s_mean") for c in report["cameras"]],
        options.link_budget_mbps,
        [(c.get("rate") or {}).get("mbit_per_s_max") for c in report["cameras"]])
    (out / "report.json").write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    (out / "index.html").write_text(_html(report))
    return report


def _json_default(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    return float(value)


def _slug(namespace: str) -> str:
    return namespace.strip("/").replace("/", "_") or "root"


def _camera_report(namespace: str, result, acc: dict, out: Path) -> dict:
    frames = result.frames
    clock = add_latencies(frames)
    slug = _slug(namespace)
    title = f"camera {namespace}"
    rows = summarise(frames)
    scores = {m: segmentation_scores(c) for m, c in result.confusions.items()}
    plots = {"rate": f"{slug}_rate.png", "quality": f"{slug}_quality.png",
             "latency": f"{slug}_latency.png", "frame": f"{slug}_frame.png"}
    rate = figures.rate_plot(out / plots["rate"], title, frames)
    figures.quality_plot(out / plots["quality"], title, frames)
    figures.latency_plot(out / plots["latency"], title, frames)
    if result.sample is not None:
        figures.frame_plot(out / plots["frame"], result.sample)
    else:
        plots.pop("frame")
    for method, row in rows.items():
        row["mbit_per_s"] = figures.mean_mbits([f for f in frames if f["method"] == method])
        row.update(scores.get(method, {}))
    latency = {
        "camera_to_reconstructed_ms": distribution([f["latency_ms"] for f in frames]),
        "camera_to_packet_ms": distribution([f["sensor_latency_ms"] for f in frames]),
        "sensor_encode_ms": distribution([f["encode_ms"] for f in frames]),
        "sensor_roi_mask_ms": distribution([f["segmentation_ms"] for f in frames]),
    }
    return {"namespace": namespace, "frames_evaluated": len(frames), "accounting": acc,
            "rate": rate, "methods": list(rows.values()), "latency": latency,
            "latency_clock": clock,
            "plots": plots, "frames": frames}


def add_latencies(frames: list[dict]) -> str:
    """Set ``latency_ms`` (camera -> reconstructed) and ``sensor_latency_ms`` per frame.

    Live recordings stamp frames on the recorder's clock: latency = receive - stamp. A
    replayed dataset keeps its own stamps, so the camera's schedule is recovered from the
    originals' arrivals instead: receive = a + b * stamp, with b the run's overall slope
    and a the lower envelope (the least delayed original). Returns which one was used.
    """
    stamps = np.array([f["stamp_ns"] for f in frames], np.float64)
    arrivals = np.array([f["original_recv_ns"] for f in frames], np.float64)
    if abs(float(np.median(arrivals - stamps))) < 10e9:
        schedule, clock = stamps, "header stamps on the recorder's clock"
    else:
        span = stamps[-1] - stamps[0]
        slope = (arrivals[-1] - arrivals[0]) / span if len(frames) > 1 and span > 0 else 1.0
        offset = float(np.min(arrivals - slope * stamps))
        schedule = offset + slope * stamps
        clock = (f"replayed stamps: camera schedule fitted to the originals' arrivals "
                 f"({1 / slope:.4f}x real time)")
    for f, when in zip(frames, schedule, strict=True):
        recon = f.get("reconstructed_recv_ns")
        f["latency_ms"] = None if recon is None else (recon - when) / 1e6
        f["sensor_latency_ms"] = (f["packet_recv_ns"] - when) / 1e6
    return clock


def format_report(report: dict) -> str:
    """The console summary: accounting, Table II / IV shapes, latency."""
    lines = [f"bag {report['bag']}: {report['segmentation']}"]
    for cam in report["cameras"]:
        acc = cam["accounting"]
        drops = _all_drops(acc)
        lines += ["", f"camera {cam['namespace']}: " + delivery_headline(
            acc["reconstructed"], acc["source_frames"], drops, acc["unaccounted"]),
                  f"  accounting: {acc['source_frames']} frames, {acc['packets']} packets, "
                  f"{acc['reconstructed']} reconstructed, counted drops {sum(drops.values())}, "
                  f"unaccounted {acc['unaccounted']}"]
        if not cam.get("frames_evaluated"):
            continue
        lines.append(f"  evaluated {cam['frames_evaluated']} frames; live output equals offline "
                     f"decode: {acc['live_equals_offline_decode']}")
        lines += ["", "Table II shape (quality; SA in the stream and region readings):"]
        lines.append(text_table(TABLE_II_HEADER, [table_ii_cells(r, PAPER_TABLE_II)
                                                  for r in cam["methods"]]))
        lines += ["", "Table IV shape (segmentation, %):"]
        lines.append(text_table(TABLE_IV_HEADER, [table_iv_cells(r, r, PAPER_TABLE_IV)
                                                  for r in cam["methods"]]))
        lat = cam["latency"]["camera_to_reconstructed_ms"]
        if lat["count"]:
            lines.append(f"latency camera -> reconstructed: p50 {lat['p50']:.1f} ms, "
                         f"p90 {lat['p90']:.1f} ms, p99 {lat['p99']:.1f} ms, "
                         f"max {lat['max']:.1f} ms over {lat['count']} frames")
        if cam["rate"]["mbit_per_s_mean"] is not None:
            peak = cam["rate"]["mbit_per_s_max"]
            lines.append(f"bit rate: {cam['rate']['mbit_per_s_mean']:.3f} Mbit/s over the run"
                         + (f", at most {peak:.3f} Mbit/s in a 1 s window" if peak else ""))
    if "link_budget" in report:
        lines += ["", report["link_budget"]["line"]]
    return "\n".join(lines)


def _all_drops(acc: dict) -> dict[str, int]:
    return {**acc["sensor_drops"], **{f"ecu {k}": v for k, v in acc["ecu_drops"].items()}}


# ------------------------------------------------------------------ HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;
max-width:1200px;color:#222;line-height:1.4}
h1{font-size:1.6em}h2{margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:right}
th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}
td.paper{color:#666;background:#fafafa}
.ok{color:#060;font-weight:bold}.bad{color:#a00;font-weight:bold}
.secondary{color:#555;font-size:.9em;font-weight:normal}
img{max-width:100%;border:1px solid #ddd;margin:.5em 0}
.note{color:#555;font-size:.9em}
"""


def _table(header: list[str], rows: list[list[str]], paper_from: int | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = "".join(
            f"<td{' class=paper' if paper_from is not None and i >= paper_from else ''}>"
            f"{html.escape(c)}</td>" for i, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _accounting_html(acc: dict) -> str:
    """The frames delivered lead (green only when every frame came out); the accounting
    (every frame delivered or counted as a drop) is the secondary line under it."""
    unaccounted = acc["unaccounted"]
    delivered = acc["reconstructed"] >= acc["source_frames"]
    headline = delivery_headline(acc["reconstructed"], acc["source_frames"], _all_drops(acc),
                                 unaccounted)
    status = ("every frame delivered or counted as a drop" if unaccounted == 0 else
              f"<span class=bad>{unaccounted} frame(s) unaccounted for</span>")
    acc_rows = [["source frames", str(acc["source_frames"])],
                ["originals recorded", str(acc["originals_recorded"])],
                ["received by the sensor", _s(acc["sensor_received"])],
                ["packets", str(acc["packets"])],
                ["received by the ECU", _s(acc["ecu_received"])],
                ["reconstructed", str(acc["reconstructed"])],
                ["sensor drops", _drops(acc["sensor_drops"])],
                ["ECU drops", _drops(acc["ecu_drops"])],
                ["unaccounted", str(unaccounted)],
                ["ground-truth labels", str(acc["labels"])],
                ["input rate (received / camera time)",
                 f"{_f(acc['input_rate_hz'], '.3f')} / {_f(acc['nominal_rate_hz'], '.3f')} Hz"],
                ["live output equals offline decode", _s(acc["live_equals_offline_decode"])]]
    return (f"<h3 class={'ok' if delivered else 'bad'}>{html.escape(_sentence(headline))}"
            f"</h3><p class=secondary>Frame accounting: {status}</p>"
            + _table(["", "value"], acc_rows))


def _html(report: dict) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>sac report</title>"
             f"<style>{_CSS}</style></head><body>",
             "<h1>SAC run report</h1>",
             f"<p>Bag <code>{html.escape(report['bag'])}</code>, "
             f"{report['facts']['duration_s']:.2f} s, {report['facts']['messages']} messages "
             f"evaluated. {html.escape(report['segmentation'])}. "
             "Data: <a href='report.json'>report.json</a>.</p>"]
    if "link_budget" in report:
        budget = report["link_budget"]
        fits = budget["fits"] and budget.get("peak_fits") is not False
        parts.append(f"<p class={'ok' if fits else 'bad'}>"
                     f"{html.escape(_sentence(budget['line']))}</p>")
    for cam in report["cameras"]:
        parts.append(f"<h2>Camera {html.escape(cam['namespace'])}</h2>")
        parts.append(_accounting_html(cam["accounting"]))
        if not cam.get("frames_evaluated"):
            continue
        parts.append(f"<p>{cam['frames_evaluated']} frames evaluated.</p>")
        parts.append("<h3>Quality (shape of seed 001 Table II)</h3>")
        parts.append(_table(TABLE_II_HEADER, [table_ii_cells(r, PAPER_TABLE_II)
                                              for r in cam["methods"]], paper_from=13))
        parts.append("<p class=note>SA-PSNR/SA-SSIM (str): each decoded stream against the "
                     "masked original over the whole frame (the reading that reproduces the "
                     "papers' magnitudes); (reg): over the ROI / non-ROI pixels of the "
                     "reconstruction. Paper columns: seed 001 Table II (Cityscapes) for the same "
                     "CRFs.</p>")
        parts.append("<h3>Segmentation (shape of seed 001 Table IV, %)</h3>")
        parts.append(_table(TABLE_IV_HEADER, [table_iv_cells(r, r, PAPER_TABLE_IV)
                                              for r in cam["methods"]], paper_from=9))
        parts.append("<p class=note>vs orig: the reconstruction's segmentation against the "
                     "original's (mIoU over the model's classes, iIoU = IoU of the ROI). vs GT: "
                     "ROI/non-ROI against the ground-truth labels in the bag.</p>")
        lat_rows = [[name.replace("_", " "), str(d["count"])]
                    + [_f(d.get(k), ".1f") for k in ("p50", "p90", "p99", "max")]
                    for name, d in cam["latency"].items()]
        parts.append(f"<h3>Latency</h3><p class=note>Camera time: "
                     f"{html.escape(cam['latency_clock'])}.</p>")
        parts.append(_table(["stage", "frames", "p50 ms", "p90 ms", "p99 ms", "max ms"],
                            lat_rows))
        for key, caption in (("rate", "Size per frame and bit rate over time"),
                             ("quality", "Quality over time"),
                             ("latency", "Latency distribution and over time"),
                             ("frame", "Frame at the middle of the run: zoom on the ROI "
                                       "boundary and difference map")):
            if key in cam["plots"]:
                parts.append(f"<h3>{caption}</h3><img src='{cam['plots'][key]}' "
                             f"alt='{caption}'>")
        if "video" in cam:
            parts.append(f"<h3>Video</h3><p class=note>original | reconstruction / ROI "
                         f"overlay | error heatmap, at camera time: <a href='{cam['video']}'>"
                         f"{cam['video']}</a></p><video controls src='{cam['video']}' "
                         "style='max-width:100%'></video>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _s(value) -> str:
    return "-" if value is None else str(value)


def _f(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def _drops(drops: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in drops.items()) or "none"
