"""Tracking at scale (issue 17, point 4): memory against video length, two processes against one, and our
streaming path against bare trackpy, on a large rendered twin video written to disk.

    python benchmarks/bench_tracking_scale.py [--frames 250 500 1000] [--size 2048] [--particles 10000]
                                              [--workdir DIR] [--out PATH] [--quick]

The video (cached under --workdir, default /tmp/bench_tracking_scale, reused when present, extended when
more frames are asked for): a ``size x size`` px bright-field twin (twin.render.render_frame: dark disks of
DIAMETER_PX px with a bright rim, vignetting, shot and read noise, 8-bit camera, no motion blur) of a dense
2D packing: about ``--particles`` particle centres in the frame on a jittered triangular lattice (spacing
chosen for that count; the lattice extends one spacing past the borders, so particles are cut by the
edges), each moving by an Ornstein-Uhlenbeck random walk in its cage (rms CAGE_PX px about its site,
per-frame step rms STEP_PX px per axis): Brownian steps that never let two particles meet, generated
directly (no LAMMPS). Rendered frame by frame and written as an image sequence of single-page 8-bit TIFF
files with tifffile (rendering holds one frame at a time); the first N frames of the sequence are given to
each run as a folder of N links to them, so a run at N frames opens a video of exactly N frames.

Locate and link parameters are fixed for every run: diameter, minmass and separation resolved ONCE by
tracking's own 'auto' code (tracking.pipeline.resolve_locate, as track_video and plan_tracking, on the
first frames), search range SEARCH_RANGE_PX px, ``refine: none``, the polarity check off
(``invert: true`` is given): no auto resolution inside any timed run.

Defaults (full size): 2048 x 2048 px, 10^4 particles, (a) at 250, 500 and 1000 frames with chunk_frames 100,
(b) on 400 frames (4 chunks: two per worker), (c) on 100 frames, 2 repeats of (b) and (c). (b) ran on 200
frames (one chunk per worker) until 2026-12: there the fixed costs (three worker start-ups of about 2 s and the
gather) were 7 % of the 1-process wall, a measure of start-up more than of throughput on the videos of thousands
of frames the split is for; it measured 1.78x. --quick: 256 px, 200 particles, 20 and 40 frames,
chunk_frames 10, 1 repeat (the smoke test's).

Every figure comes from a FRESH subprocess (this script again, ``--worker``), with OpenMP/BLAS/numba
threads limited to 1 (mpd.threads.limit_threads and the environment); peak memory is the worker's own
``ru_maxrss`` (getrusage RUSAGE_SELF, read before anything else is done after the work) plus the largest
child it waited for during the work (RUSAGE_CHILDREN; none with 1 process: the helper process pims starts
at import is reported beside, not added), and its resident set after the imports, before the work, is
reported beside (``rss_after_imports_mb``). Seconds are measured inside the workers around the work
(imports and interpreter start-up excluded); the walls of the subprocesses are reported beside.

(a) memory: ``tracking.stream.track_video_streaming`` (processes 1, ``chunk_frames``) on the first N frames
    for each N of ``--frames``; goal: the peak RSS of every N within 10 % of each other ((max - min) / min).
    The same runs' seconds (and the streaming path's own split, plan / locate / link, from its qc.json)
    are reported beside.
(b) frames per second with 1 and with 2 processes, on the first ``--speed-frames`` frames: the scatter-gather
    of issue 17, point 3, as Snakemake runs it with --cores 1 and 2. One plan (``plan_tracking``, not timed);
    2 processes: two workers started together over disjoint chunks (balanced by frames), each running
    ``locate_chunk`` on its chunks and then ``link_chunk`` on them (a warm-up that needs a chunk the other
    worker locates waits for that file), then one worker running the gather ``link_chunks`` with the link
    files (stitching, filters, drift, velocities, species, QC); 1 process: one worker running every chunk's
    ``locate_chunk`` and ``link_chunk``, then the same gather. fps = frames / (wall of the scatter + wall of
    the gather), worker start-up included on both sides (Python and library imports, about 2 s a worker).
    Goal: fps(2) / fps(1) >= 1.8. Reported beside: the scatter's own speed-up, the gather's share of the
    1-process wall (the serial fraction) and the speed-up it allows (Amdahl), and the chunk boundaries the
    gather had to link again (0 when every warm-up reached the unsplit run's state).
(c) cost per frame against bare trackpy on the first ``--compare-frames`` frames, 1 process each: bare
    trackpy is benchmarks/bench_tracking.bare_trackpy (pims.open of the same files, trackpy.batch with
    the same diameter, minmass, separation and invert, trackpy.link with the same search range, memory 0);
    ours is track_video_streaming as in (a). Runs alternate, ``--repeats`` each, best kept (median beside).
    Goal: ours / bare <= 1.2.

The results go to benchmarks/results/tracking_scale.json (mpd.atomic.atomic_write_json) and a markdown
table beside it (.md), every figure with its work size, and each goal marked met or missed. The load
average before every run is recorded: the machine may be shared.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mpd.atomic import atomic_write_bytes, atomic_write_json

DEFAULT_WORKDIR = Path(tempfile.gettempdir()) / "bench_tracking_scale"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "tracking_scale.json"
FULL = {"size": 2048, "particles": 10_000, "frames": [250, 500, 1000], "chunk_frames": 100, "speed_frames": 400,
        "compare_frames": 100, "repeats": 2, "timeout": 4 * 3600}
QUICK = {"size": 256, "particles": 200, "frames": [20, 40], "chunk_frames": 10, "speed_frames": 20,
         "compare_frames": 20, "repeats": 1, "timeout": 600}

# The twin: units, spot, motion.
PIXEL_SIZE_UM = 0.3
FRAME_RATE_HZ = 20.0
DIAMETER_PX = 12.0       # rendered particle diameter, px
SITE_JITTER_PX = 1.0     # rms disorder of the lattice sites, px
CAGE_PX = 1.0            # rms displacement of a particle about its site, px (per axis)
STEP_PX = 0.5            # rms step between two frames, px (per axis)
SEARCH_RANGE_PX = 5.0    # trackpy search range, px: 10 step rms, a quarter of the lattice spacing at 10^4 / 2048^2
SEED = 7
CHECKPOINT_FRAMES = 25   # rendering records its state this often (resumable)
VIDEO_VERSION = 1

GOALS = {
    "memory_spread": {"what": "peak RSS at every number of frames within 10 % of each other ((max - min) / min)",
                      "at_most": 0.10},
    "speedup_2_over_1": {"what": "frames per second with 2 processes over 1 process", "at_least": 1.8},
    "ratio_to_bare_trackpy": {"what": "seconds per frame, our streaming path over bare trackpy (1 process)",
                              "at_most": 1.2},
}

THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
              "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS", "NUMBA_NUM_THREADS")
RESULT_TAG = "BENCH_TRACKING_SCALE_RESULT "


# ----------------------------------------------------------------------------------------------- the twin video
def lattice_sites(size: int, particles: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Sites (n, 2) px of a jittered triangular lattice with about ``particles`` sites in the frame; spacing px."""
    spacing = math.sqrt(2.0 * size * size / (math.sqrt(3.0) * particles))
    row_height = spacing * math.sqrt(3.0) / 2.0
    rows = np.arange(-1, int(size / row_height) + 2)
    cols = np.arange(-1, int(size / spacing) + 2)
    r, c = np.meshgrid(rows, cols, indexing="ij")
    sites = np.stack([((c + 0.5 * (r % 2)) * spacing).ravel(), (r * row_height).ravel()], axis=1)
    return sites + rng.normal(0.0, SITE_JITTER_PX, sites.shape), spacing


def _video_key(size: int, particles: int) -> str:
    return f"twin-v{VIDEO_VERSION}-{size}px-{particles}p-d{DIAMETER_PX:g}-seed{SEED}"


def ensure_video(workdir: Path, size: int, particles: int, n_frames: int, log=print) -> dict:
    """Render (or reuse, or extend) the cached twin video; returns its description (meta.json)."""
    from twin.params import IlluminationParams, MicroscopeParams
    from twin.render import illumination_field, quantise, render_frame

    folder = Path(workdir) / _video_key(size, particles)
    frames_dir = folder / "frames"
    meta_path, state_path = folder / "meta.json", folder / "state.npz"
    frames_dir.mkdir(parents=True, exist_ok=True)
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else None
    if meta is not None and meta["frames_done"] >= n_frames:
        return meta
    import tifffile

    params = MicroscopeParams(width_px=size, height_px=size, pixel_size_um=PIXEL_SIZE_UM, bit_depth=8,
                              exposure_s=0.0, motion_blur=False, seed=SEED, illumination=IlluminationParams())
    rng0 = np.random.default_rng(SEED)
    sites, spacing = lattice_sites(size, particles, rng0)
    a = 1.0 - STEP_PX**2 / (2.0 * CAGE_PX**2)  # OU decay per frame: step rms = CAGE_PX sqrt(2 (1 - a))
    kick = CAGE_PX * math.sqrt(1.0 - a * a)
    if meta is not None and state_path.exists():
        with np.load(state_path) as state:
            offsets, done = state["offsets"], int(state["frames_done"])
        in_frame = list(meta["particles_in_frame"])
    if meta is None or not state_path.exists() or len(in_frame) != done:  # nothing, or an interrupted checkpoint
        offsets, done, in_frame = rng0.normal(0.0, CAGE_PX, sites.shape), 0, []
    illumination = illumination_field(params)
    species = np.zeros(len(sites), dtype=np.int8)
    start, rendered_from = time.perf_counter(), done

    def checkpoint(frames_done: int) -> dict:
        tmp = state_path.with_name(".state.tmp.npz")
        np.savez(tmp, offsets=offsets, frames_done=frames_done)
        os.replace(tmp, state_path)
        description = {
            "version": VIDEO_VERSION, "frames_dir": str(frames_dir), "frames_done": frames_done,
            "size_px": size, "pixels_per_frame": size * size, "particles_requested": particles,
            "particles_rendered": len(sites), "lattice_spacing_px": spacing, "diameter_px": DIAMETER_PX,
            "area_fraction": float(np.mean(in_frame) * math.pi * DIAMETER_PX**2 / 4 / size**2) if in_frame else None,
            "cage_rms_px": CAGE_PX, "step_rms_px": STEP_PX, "pixel_size_um": PIXEL_SIZE_UM,
            "frame_rate_hz": FRAME_RATE_HZ, "bit_depth": 8, "format": "image sequence of single-page 8-bit TIFF",
            "bytes_per_frame": size * size, "particles_in_frame": in_frame,
            "particles_in_frame_mean": float(np.mean(in_frame)) if in_frame else None,
            "spot": params.spot, "seed": SEED,
            "render_seconds_per_frame": (time.perf_counter() - start) / max(frames_done - rendered_from, 1),
        }
        atomic_write_json(description, meta_path)
        return description

    for frame in range(done, n_frames):
        rng = np.random.default_rng([SEED, frame])
        if frame > 0:
            offsets = a * offsets + kick * rng.normal(size=offsets.shape)
        xy = sites + offsets
        image = render_frame(xy[:, 0], xy[:, 1], DIAMETER_PX, species, params, rng, illumination=illumination)
        path = frames_dir / f"frame_{frame:05d}.tif"
        tmp = path.with_name(f".{path.name}.tmp")
        tifffile.imwrite(tmp, quantise(image, 8), photometric="minisblack")
        os.replace(tmp, path)
        in_frame.append(int(np.count_nonzero((xy >= -0.5).all(axis=1) & (xy <= size - 0.5).all(axis=1))))
        if (frame + 1) % CHECKPOINT_FRAMES == 0 or frame + 1 == n_frames:
            meta = checkpoint(frame + 1)
            log(f"rendered {frame + 1}/{n_frames} frames ({meta['render_seconds_per_frame']:.2f} s/frame)")
    return meta


def first_frames(meta: dict, n: int) -> str:
    """A folder of links to the first ``n`` frames (made once); returns the glob of its frames."""
    frames_dir = Path(meta["frames_dir"])
    folder = frames_dir.parent / f"first-{n:05d}"
    if not folder.exists():
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=frames_dir.parent))
        for frame in range(n):
            name = f"frame_{frame:05d}.tif"
            os.symlink(Path("..") / frames_dir.name / name, tmp / name)
        os.replace(tmp, folder)
    return str(folder / "*.tif")


# ----------------------------------------------------------------------------------------------- workers
def _rss_mb() -> float:
    """The resident set of this process now (MB, /proc)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _children_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def _peak_mb(children_at_imports: float) -> dict:
    """Peak RSS of this worker: its own, plus the largest child it waited for during the work (a child seen only
    at import, e.g. the helper process pims starts, is not part of the work: it is reported, not added)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = _children_peak_mb()
    during = children if children > children_at_imports else 0.0
    return {"peak_rss_mb": own + during, "peak_rss_self_mb": own, "peak_rss_children_mb": during,
            "peak_rss_children_at_imports_mb": children_at_imports}


def _parquet_rows(paths) -> int:
    import pyarrow.parquet as pq

    return int(sum(pq.ParquetFile(p).metadata.num_rows for p in paths))


def _output_counts(out_dir: Path) -> dict:
    """Features and trajectory rows written by a streaming run (parquet metadata only: nothing loaded)."""
    out_dir = Path(out_dir)
    features = sorted((out_dir / "features").glob("*.parquet")) if (out_dir / "features").is_dir() else []
    counts = {"features": _parquet_rows(features) if features else None, "feature_files": len(features)}
    trajectories = out_dir / "trajectories.parquet"
    if trajectories.exists():
        counts["trajectory_rows"] = _parquet_rows([trajectories])
    return counts


def _stream_params(resolved: dict) -> dict:
    """The tracking parameters of every timed run: nothing left to resolve."""
    return {"locate": {"invert": True, "diameter": resolved["diameter"], "minmass": resolved["minmass"],
                       "separation": resolved["separation"], "refine": "none"},
            "link": {"search_range_px": SEARCH_RANGE_PX},
            "checks": {"polarity": False}}


def worker(task: dict) -> dict:
    """One measurement in this (fresh) process; the parent reads the returned dict from stdout."""
    from mpd.threads import limit_threads

    limit_threads(1)
    kind = task["task"]
    if kind == "bare":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_tracking import bare_trackpy  # a sibling script: one home for "bare trackpy"
        rss0, children0 = _rss_mb(), _children_peak_mb()
        r = task["resolved"]
        seconds, features = bare_trackpy(task["frames"], r["diameter"], r["minmass"], r["separation"], True,
                                         SEARCH_RANGE_PX, 0, task["processes"])
        return {"seconds": seconds, **_peak_mb(children0), "rss_after_imports_mb": rss0, "features": features,
                "trajectory_rows": features}
    from tracking import stream

    rss0, children0 = _rss_mb(), _children_peak_mb()
    units = {"pixel_size_um": PIXEL_SIZE_UM, "frame_rate_hz": FRAME_RATE_HZ}
    out = Path(task["out"])
    start = time.perf_counter()
    if kind == "stream":
        stream.track_video_streaming(task["frames"], out, task["params"], processes=task["processes"],
                                     chunk_frames=task["chunk_frames"], **units)
    elif kind == "plan":
        plan = stream.plan_tracking(task["frames"], task["params"], chunk_frames=task["chunk_frames"],
                                    out_path=out, **units)
        return {"seconds": time.perf_counter() - start, "chunks": plan["chunks"]}
    elif kind == "locate":
        plan = json.loads(Path(task["plan"]).read_text())
        for chunk in task["chunks"]:
            stream.locate_chunk(plan, chunk, out / stream.chunk_file_name(chunk), processes=1)
    elif kind == "scatter":
        return _scatter(stream, task, start, rss0, children0)
    elif kind == "link":
        plan = json.loads(Path(task["plan"]).read_text())
        links = [Path(p) for p in task["link_files"]] if task.get("link_files") else None
        stream.link_chunks(plan, [Path(p) for p in task["feature_files"]], out, link_files=links)
    else:
        raise ValueError(f"unknown worker task {kind!r}")
    seconds = time.perf_counter() - start
    result = {"seconds": seconds, **_peak_mb(children0), "rss_after_imports_mb": rss0}
    if kind == "locate":
        result["features"] = _parquet_rows([out / stream.chunk_file_name(chunk) for chunk in task["chunks"]])
    else:
        result.update(_output_counts(out))
        if (out / "qc.json").exists():  # the streaming path's own split of its time (plan, locate, link, ...)
            result["timing_s"] = json.loads((out / "qc.json").read_text()).get("timing_s")
    return result


def _scatter(stream, task: dict, start: float, rss0: float, children0: float) -> dict:
    """One worker's share of the scatter, as Snakemake's jobs on one core: locate_chunk on each of its chunks,
    then link_chunk on each (waiting, where a warm-up needs a chunk another worker locates, for its file)."""
    plan = json.loads(Path(task["plan"]).read_text())
    features, links = Path(task["features_dir"]), Path(task["links_dir"])
    seconds = {"locate": 0.0, "link": 0.0, "wait": 0.0}
    for chunk in task["chunks"]:
        mark = time.perf_counter()
        stream.locate_chunk(plan, chunk, features / stream.chunk_file_name(chunk), processes=1)
        seconds["locate"] += time.perf_counter() - mark
    for chunk in task["chunks"]:
        needed = [features / stream.chunk_file_name(j) for j in stream.link_chunk_inputs(plan, chunk)]
        mark = time.perf_counter()
        while not all(p.exists() for p in needed):  # written atomically: there = complete
            if time.perf_counter() - start > task["timeout"]:
                raise TimeoutError(f"features of chunks {stream.link_chunk_inputs(plan, chunk)} never appeared")
            time.sleep(0.05)
        seconds["wait"] += time.perf_counter() - mark
        mark = time.perf_counter()
        stream.link_chunk(plan, chunk, needed, links / stream.chunk_file_name(chunk))
        seconds["link"] += time.perf_counter() - mark
    return {"seconds": time.perf_counter() - start, **_peak_mb(children0), "rss_after_imports_mb": rss0,
            "locate_s": seconds["locate"], "link_chunk_s": seconds["link"], "wait_s": seconds["wait"],
            "features": _parquet_rows([features / stream.chunk_file_name(c) for c in task["chunks"]])}


def resolve_parameters(frames: str) -> dict:
    """diameter, minmass and separation by tracking's 'auto' code on the first frames (that of track_video and
    plan_tracking: tracking.pipeline.resolve_locate)."""
    from tracking.io import open_video
    from tracking.params import as_params
    from tracking.pipeline import resolve_locate

    params = as_params({"locate": {"invert": True, "refine": "none"}})
    video = open_video(frames, None, None, params.locate.channel)
    resolved = resolve_locate(video, params)[0]
    return {"diameter": int(resolved.diameter), "minmass": float(resolved.minmass),
            "separation": None if resolved.separation is None else float(resolved.separation),
            "invert": bool(resolved.invert), "frames_looked_at": min(params.locate.auto_frames, len(video))}


def _worker_env() -> dict:
    env = dict(os.environ)
    for name in THREAD_ENV:
        env[name] = "1"
    env["PYTHONPATH"] = str(ROOT) + ((os.pathsep + env["PYTHONPATH"]) if env.get("PYTHONPATH") else "")
    return env


def start_worker(task: dict) -> tuple[subprocess.Popen, float, list]:
    """Start a worker; its output goes to temporary files (no pipe to fill while another worker is waited for)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(task)]
    streams = [tempfile.TemporaryFile(mode="w+") for _ in range(2)]  # noqa: SIM115 (closed by finish_worker)
    return subprocess.Popen(command, env=_worker_env(), stdout=streams[0], stderr=streams[1],
                            text=True), time.perf_counter(), streams


def finish_worker(started: tuple[subprocess.Popen, float, list], timeout: float) -> dict:
    """The worker's result, its wall seconds and the load average; status 'failed' with a reason on error."""
    process, launched, streams = started
    try:
        process.wait(timeout=max(1.0, timeout - (time.perf_counter() - launched)))
        wall = time.perf_counter() - launched
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        wall = None
    out, err = [(stream.seek(0), stream.read(), stream.close())[1] for stream in streams]
    if wall is None:
        return {"status": "failed", "reason": f"timed out after {timeout:.0f} s",
                "wall_s": time.perf_counter() - launched}
    lines = [line for line in out.splitlines() if line.startswith(RESULT_TAG)]
    if process.returncode != 0 or not lines:
        return {"status": "failed", "reason": f"rc {process.returncode}: {err.strip()[-800:]}", "wall_s": wall}
    return {"status": "completed", **json.loads(lines[-1][len(RESULT_TAG):]), "wall_s": wall}


def run_worker(task: dict, timeout: float) -> dict:
    load = os.getloadavg()[0]
    return {**finish_worker(start_worker(task), timeout), "load_average_1min_before": load}


# ----------------------------------------------------------------------------------------------- measurements
def _round(value, digits=4):
    if isinstance(value, float):
        return float(f"{value:.{digits}g}") if math.isfinite(value) else value
    if isinstance(value, dict):
        return {k: _round(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [_round(v, digits) for v in value]
    return value


def _scratch(workdir: Path, name: str) -> Path:
    folder = workdir / "runs" / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    return folder


def measure_memory(meta, frames, params, chunk_frames, workdir, timeout, log) -> list[dict]:
    rows = []
    for n in frames:
        out = _scratch(workdir, f"memory-{n}")
        log(f"(a) track_video_streaming, {n} frames, chunk_frames {chunk_frames}, 1 process")
        r = run_worker({"task": "stream", "frames": first_frames(meta, n), "out": str(out), "params": params,
                        "processes": 1, "chunk_frames": chunk_frames}, timeout)
        shutil.rmtree(out, ignore_errors=True)
        rows.append({"frames": n, "chunk_frames": chunk_frames, "processes": 1, **r})
        if r["status"] == "completed":
            r = rows[-1]
            r["frames_per_second"] = n / r["seconds"]
            r["peak_rss_above_imports_mb"] = r["peak_rss_mb"] - r["rss_after_imports_mb"]
            if r.get("features") is not None:
                r["features_per_frame"] = r["features"] / n
        log(f"    {_brief(rows[-1])}")
    return rows


def _balanced_halves(chunks: list) -> list[list[int]]:
    """Chunk indices split over two workers, largest first onto the less loaded one (frames balanced)."""
    sizes = sorted(((stop - first, i) for i, (first, stop) in enumerate(chunks)), reverse=True)
    halves, loads = [[], []], [0, 0]
    for size, index in sizes:
        k = 0 if loads[0] <= loads[1] else 1
        halves[k].append(index)
        loads[k] += size
    return [sorted(h) for h in halves]


def measure_speed(meta, n, params, chunk_frames, repeats, workdir, timeout, log) -> dict:
    base = _scratch(workdir, f"speed-{n}")
    base.mkdir(parents=True)
    plan_path = base / "plan.json"
    log(f"(b) plan_tracking, {n} frames, chunk_frames {chunk_frames}")
    plan = run_worker({"task": "plan", "frames": first_frames(meta, n), "out": str(plan_path), "params": params,
                       "chunk_frames": chunk_frames}, timeout)
    if plan["status"] != "completed":
        return {"frames": n, "chunk_frames": chunk_frames, "status": "failed", "reason": "plan: " + plan["reason"]}
    chunks = plan["chunks"]
    runs = {1: [], 2: []}
    for repeat in range(repeats):
        for processes in (1, 2):
            features_dir, links_dir = base / f"features-{processes}", base / f"links-{processes}"
            for folder in (features_dir, links_dir):
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir()
            groups = [list(range(len(chunks)))] if processes == 1 else _balanced_halves(chunks)
            log(f"(b) {processes} process(es), repeat {repeat + 1}: locate_chunk + link_chunk on chunks {groups}")
            load = os.getloadavg()[0]
            launched = time.perf_counter()
            started = [start_worker({"task": "scatter", "plan": str(plan_path), "chunks": g,
                                     "features_dir": str(features_dir), "links_dir": str(links_dir),
                                     "timeout": timeout, "out": str(base)}) for g in groups]
            scattered = [finish_worker(s, timeout) for s in started]
            scatter_wall = time.perf_counter() - launched
            files = [str(features_dir / f"chunk-{i:05d}.parquet") for i in range(len(chunks))]
            links = [str(links_dir / f"chunk-{i:05d}.parquet") for i in range(len(chunks))]
            link_out = base / f"linked-{processes}"
            shutil.rmtree(link_out, ignore_errors=True)
            gathered = run_worker({"task": "link", "plan": str(plan_path), "feature_files": files,
                                   "link_files": links, "out": str(link_out)}, timeout)
            qc_link = None
            if (link_out / "qc.json").exists():
                qc_link = json.loads((link_out / "qc.json").read_text())["split"]["link"]
            shutil.rmtree(link_out, ignore_errors=True)
            run = {"processes": processes, "load_average_1min_before": load,
                   "workers": [{"chunks": g, "frames": sum(chunks[i][1] - chunks[i][0] for i in g), **w}
                               for g, w in zip(groups, scattered)],
                   "gather_worker": gathered}
            if all(w["status"] == "completed" for w in scattered) and gathered["status"] == "completed":
                run.update(status="completed", scatter_wall_s=scatter_wall, gather_wall_s=gathered["wall_s"],
                           wall_s=scatter_wall + gathered["wall_s"], features=sum(w["features"] for w in scattered),
                           trajectory_rows=gathered.get("trajectory_rows"),
                           locate_s=max(w["locate_s"] for w in scattered),
                           link_chunk_s=max(w["link_chunk_s"] for w in scattered),
                           boundaries_relinked=qc_link["boundaries_relinked"] if qc_link else None,
                           gather_timing_s=gathered.get("timing_s"))
                run["frames_per_second"] = n / run["wall_s"]
                run["gather_share"] = run["gather_wall_s"] / run["wall_s"]
            else:
                run.update(status="failed", reason="; ".join(w["reason"] for w in [*scattered, gathered]
                                                             if w["status"] != "completed"))
            runs[processes].append(run)
            log(f"    {_brief(run)}")
    shutil.rmtree(base, ignore_errors=True)
    result = {"frames": n, "chunk_frames": chunk_frames, "chunks": chunks, "plan_seconds": plan["seconds"],
              "how": "as Snakemake with --cores 2: 2 processes = two worker processes over disjoint chunks, "
                     "started together, each running locate_chunk on its chunks and then link_chunk on them "
                     "(a warm-up needing a chunk the other worker locates waits for its file), then one gather "
                     "worker (link_chunks with the link files: stitch, filters, drift, velocities, species, QC); "
                     "1 process = one worker doing every chunk's locate_chunk and link_chunk, then the same "
                     "gather; walls include each worker's start-up",
              "runs": runs[1] + runs[2]}
    best = {}
    for processes, rs in runs.items():
        done = [r for r in rs if r["status"] == "completed"]
        if done:
            best[processes] = min(done, key=lambda r: r["wall_s"])
    if len(best) == 2:
        serial = best[1]["gather_wall_s"] / best[1]["wall_s"]
        result.update(status="completed",
                      frames_per_second={str(p): n / b["wall_s"] for p, b in best.items()},
                      speedup_2_over_1=best[1]["wall_s"] / best[2]["wall_s"],
                      scatter_speedup_2_over_1=best[1]["scatter_wall_s"] / best[2]["scatter_wall_s"],
                      serial_fraction_1_process=serial,
                      amdahl_limit_2=1.0 / (serial + (1.0 - serial) / 2.0),
                      same_trajectory_rows=best[1]["trajectory_rows"] == best[2]["trajectory_rows"],
                      boundaries_relinked={str(p): b["boundaries_relinked"] for p, b in best.items()},
                      features=best[1]["features"])
    else:
        result.update(status="failed", reason="; ".join(r.get("reason", "") for r in result["runs"]
                                                      if r["status"] != "completed"))
    return result


def measure_versus_trackpy(meta, n, params, resolved, chunk_frames, repeats, workdir, timeout, log) -> dict:
    frames = first_frames(meta, n)
    runs = {"bare_trackpy": [], "ours": []}
    for repeat in range(repeats):
        log(f"(c) bare trackpy, {n} frames, repeat {repeat + 1}")
        runs["bare_trackpy"].append(run_worker({"task": "bare", "frames": frames, "resolved": resolved,
                                                "processes": 1}, timeout))
        log(f"    {_brief(runs['bare_trackpy'][-1])}")
        out = _scratch(workdir, f"compare-{n}")
        log(f"(c) track_video_streaming, {n} frames, repeat {repeat + 1}")
        runs["ours"].append(run_worker({"task": "stream", "frames": frames, "out": str(out), "params": params,
                                        "processes": 1, "chunk_frames": chunk_frames}, timeout))
        shutil.rmtree(out, ignore_errors=True)
        log(f"    {_brief(runs['ours'][-1])}")
    result = {"frames": n, "chunk_frames": chunk_frames, "processes": 1,
              "runs": [{"what": k, **r} for k, rs in runs.items() for r in rs]}
    done = {k: [r for r in rs if r["status"] == "completed"] for k, rs in runs.items()}
    if not all(done.values()):
        result.update(status="failed", reason="; ".join(r["reason"] for rs in runs.values() for r in rs
                                                        if r["status"] != "completed"))
        return result
    for key, rs in done.items():
        seconds = [r["seconds"] for r in rs]
        result[key] = {"seconds_best": min(seconds), "seconds_median": statistics.median(seconds),
                       "seconds_per_frame_best": min(seconds) / n, "frames_per_second_best": n / min(seconds),
                       "features": rs[0]["features"], "trajectory_rows": rs[0].get("trajectory_rows"),
                       "peak_rss_mb": max(r["peak_rss_mb"] for r in rs), "repeats": len(rs)}
    result["status"] = "completed"
    result["ratio_ours_to_bare"] = result["ours"]["seconds_best"] / result["bare_trackpy"]["seconds_best"]
    result["ratio_ours_to_bare_median"] = (result["ours"]["seconds_median"]
                                           / result["bare_trackpy"]["seconds_median"])
    return result


def _brief(row: dict) -> str:
    if row.get("status") != "completed":
        return f"FAILED: {row.get('reason', '').strip().splitlines()[-1:]}"
    parts = [f"{k} {row[k]:.3g}" for k in ("seconds", "wall_s", "frames_per_second", "peak_rss_mb", "features")
             if isinstance(row.get(k), (int, float))]
    return ", ".join(parts)


# ----------------------------------------------------------------------------------------------- goals
def goal_results(memory: list[dict], speed: dict, versus: dict) -> list[dict]:
    """Each goal of issue 17, point 4: wanted, measured, met (True/False), the work size it was measured on."""
    goals = []
    done = [r for r in memory if r["status"] == "completed"]
    entry = {"key": "memory_spread", **GOALS["memory_spread"], "frames": [r["frames"] for r in memory]}
    if len(done) == len(memory) and len(done) >= 2:
        peaks = [r["peak_rss_mb"] for r in done]
        entry["measured"] = (max(peaks) - min(peaks)) / min(peaks)
        entry["peak_rss_mb"] = peaks
        entry["met"] = entry["measured"] <= entry["at_most"]
    else:
        entry.update(measured=None, met=False if len(memory) >= 2 else None,
                     reason="; ".join(r["reason"] for r in memory if r["status"] != "completed")
                     or "fewer than two numbers of frames")
    goals.append(entry)
    entry = {"key": "speedup_2_over_1", **GOALS["speedup_2_over_1"], "frames": speed.get("frames"),
             "processes": [1, 2]}
    if speed.get("status") == "completed":
        entry["measured"] = speed["speedup_2_over_1"]
        entry["met"] = entry["measured"] >= entry["at_least"]
    else:
        entry.update(measured=None, met=False, reason=speed.get("reason", "not run"))
    goals.append(entry)
    entry = {"key": "ratio_to_bare_trackpy", **GOALS["ratio_to_bare_trackpy"], "frames": versus.get("frames"),
             "processes": [1]}
    if versus.get("status") == "completed":
        entry["measured"] = versus["ratio_ours_to_bare"]
        entry["met"] = entry["measured"] <= entry["at_most"]
    else:
        entry.update(measured=None, met=False, reason=versus.get("reason", "not run"))
    goals.append(entry)
    for g in goals:
        g["verdict"] = "not measured" if g["met"] is None else ("met" if g["met"] else "missed")
    return goals


# ----------------------------------------------------------------------------------------------- report
def _fmt(value, digits=3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _goal_work(goal: dict, configuration: dict, size: str) -> str:
    """The work size a goal was measured on, in words."""
    chunk = f"chunk_frames {configuration['chunk_frames']}"
    if goal["key"] == "memory_spread":
        return f"{', '.join(map(str, goal['frames']))} frames, {chunk}, 1 process, {size}"
    if goal["key"] == "speedup_2_over_1":
        return f"{goal['frames']} frames, {chunk}, 2 vs 1 processes, {size}"
    return f"{goal['frames']} frames, {chunk}, 1 process, {size}"


def markdown_report(result: dict) -> str:
    """The markdown summary, from the JSON (never typed)."""
    v, c, m = result["video"], result["configuration"], result["machine"]
    size = f"{v['size_px']}x{v['size_px']} px"
    lines = [
        "# Tracking at scale (issue 17, point 4)", "",
        (f"Written by `benchmarks/bench_tracking_scale.py`{' --quick' if c['quick'] else ''}; the numbers come "
         f"from `{Path(result['out']).name}`. Video: rendered bright-field twin, {size} "
         f"({v['pixels_per_frame']:,} pixels a frame), {_fmt(v['particles_in_frame_mean'], 5)} particle centres "
         f"a frame on average (dense 2D packing, area fraction {_fmt(v['area_fraction'], 2)}, Brownian steps of "
         f"{v['step_rms_px']:g} px rms per axis), {v['format']}, {v['diameter_px']:g} px particles. Fixed "
         f"parameters: diameter {result['resolved']['diameter']}, minmass {_fmt(result['resolved']['minmass'], 4)}, "
         f"separation {_fmt(result['resolved']['separation'])}, search range {SEARCH_RANGE_PX:g} px, refine none; "
         f"every figure from a fresh process with 1 thread; {m['cpus']} cores, load average "
         f"{m['load_average_at_start'][0]:.2f} at the start, {m['load_average_at_end'][0]:.2f} at the end."), "",
        (f"Configuration: frames {c['frames']} for (a), {c['speed_frames']} for (b), {c['compare_frames']} for (c); "
         f"{c['size']} px, {c['particles']} particles asked for, chunk_frames {c['chunk_frames']}, repeats "
         f"{c['repeats']}."), "",
        "## Goals", "", "| goal | wanted | measured | work size | result |", "|---|---|---|---|---|"]
    for g in result["goals"]:
        wanted = f"<= {g['at_most']:g}" if "at_most" in g else f">= {g['at_least']:g}"
        work = _goal_work(g, c, size)
        measured = _fmt(g["measured"]) if g["measured"] is not None else f"- ({g.get('reason', '')[:120]})"
        verdict = {"met": "**met**", "missed": "*missed*"}.get(g["verdict"], g["verdict"])
        lines.append(f"| {g['what']} | {wanted} | {measured} | {work} | {verdict} |")
    lines += ["", "## (a) Peak memory of track_video_streaming against the number of frames", "",
              ("| frames | pixels | particles/frame | features found | chunk frames | processes | peak RSS MB | "
              "RSS after imports MB | s | of which locate s / link_chunks s | frames/s | status |"),
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["memory"]:
        timing = r.get("timing_s") or {}
        lines.append(f"| {r['frames']} | {v['pixels_per_frame']:,} | {_fmt(v['particles_in_frame_mean'], 5)} | "
                     f"{_fmt(r.get('features'))} | {r['chunk_frames']} | {r['processes']} | "
                     f"{_fmt(r.get('peak_rss_mb'), 4)} | {_fmt(r.get('rss_after_imports_mb'), 4)} | "
                     f"{_fmt(r.get('seconds'))} | {_fmt(timing.get('locate'))} / {_fmt(timing.get('total'))} | "
                     f"{_fmt(r.get('frames_per_second'))} | {r['status']} |")
    s = result["speed"]
    lines += ["", "## (b) Frames per second with 1 and 2 processes", "", s.get("how", ""), "",
              ("| processes | frames | chunks (frames each worker) | features | locate s / link_chunk s (slowest "
               "worker) | locate + link_chunk wall s | gather wall s | total wall s | frames/s | boundaries "
               "relinked | status |"), "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in s.get("runs", []):
        split = " + ".join(f"{len(w['chunks'])} ({w['frames']})" for w in r["workers"])
        lines.append(f"| {r['processes']} | {s['frames']} | {split} | {_fmt(r.get('features'))} | "
                     f"{_fmt(r.get('locate_s'))} / {_fmt(r.get('link_chunk_s'))} | {_fmt(r.get('scatter_wall_s'))} | "
                     f"{_fmt(r.get('gather_wall_s'))} | {_fmt(r.get('wall_s'))} | {_fmt(r.get('frames_per_second'))} "
                     f"| {_fmt(r.get('boundaries_relinked'))} | {r['status']} |")
    if s.get("status") == "completed":
        lines += ["", (f"Speed-up 2 over 1 process: {_fmt(s['speedup_2_over_1'])} (locate + link_chunk alone: "
                      f"{_fmt(s['scatter_speedup_2_over_1'])}); the serial gather is "
                      f"{100 * s['serial_fraction_1_process']:.1f} % of the 1-process wall, which caps 2 processes "
                      f"at {_fmt(s['amdahl_limit_2'])}x; same trajectory rows with 1 and 2 processes: "
                      f"{s['same_trajectory_rows']}.")]
    vs = result["versus_trackpy"]
    lines += ["", "## (c) Cost per frame against bare trackpy (1 process)", "",
              "| path | frames | pixels | features found | best s | median s | s/frame | peak RSS MB | repeats |",
              "|---|---|---|---|---|---|---|---|---|"]
    if vs.get("status") == "completed":
        for key, name in (("bare_trackpy", "bare trackpy (batch + link)"), ("ours", "track_video_streaming")):
            x = vs[key]
            lines.append(f"| {name} | {vs['frames']} | {v['pixels_per_frame']:,} | {x['features']} | "
                         f"{_fmt(x['seconds_best'])} | {_fmt(x['seconds_median'])} | "
                         f"{_fmt(x['seconds_per_frame_best'])} | {_fmt(x['peak_rss_mb'], 4)} | {x['repeats']} |")
        lines += ["", (f"Ours over bare: {_fmt(vs['ratio_ours_to_bare'])} (best), "
                      f"{_fmt(vs['ratio_ours_to_bare_median'])} (median).")]
    else:
        lines.append(f"| failed: {vs.get('reason', '')[:200]} | | | | | | | | |")
    lines += ["", (f"Rendering: {_fmt(v['render_seconds_per_frame'])} s a frame (last rendering session); whole run "
                  f"{result['seconds_total']:.0f} s."), ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", help=f"numbers of frames for (a) (default {FULL['frames']})")
    parser.add_argument("--size", type=int, help=f"frame width = height, px (default {FULL['size']})")
    parser.add_argument("--particles", type=int, help=f"particle centres per frame (default {FULL['particles']})")
    parser.add_argument("--chunk-frames", type=int, help=f"chunk_frames (default {FULL['chunk_frames']})")
    parser.add_argument("--speed-frames", type=int, help=f"frames for (b) (default {FULL['speed_frames']})")
    parser.add_argument("--compare-frames", type=int, help=f"frames for (c) (default {FULL['compare_frames']})")
    parser.add_argument("--repeats", type=int, help=f"repeats of (b) and (c) (default {FULL['repeats']})")
    parser.add_argument("--timeout", type=float, help="seconds one worker may run")
    parser.add_argument("--workdir", default=str(DEFAULT_WORKDIR), help="video cache and scratch folder")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--quick", action="store_true", help=f"tiny configuration for the smoke test: {QUICK}")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        result = worker(json.loads(args.worker))
        print(RESULT_TAG + json.dumps(result), flush=True)
        return result
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    config = dict(QUICK if args.quick else FULL)
    for key in ("frames", "size", "particles", "chunk_frames", "speed_frames", "compare_frames", "repeats",
                "timeout"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    config["frames"] = sorted(set(config["frames"]))
    config["quick"] = args.quick
    workdir = Path(args.workdir)
    started, load_at_start = time.perf_counter(), list(os.getloadavg())

    n_max = max(*config["frames"], config["speed_frames"], config["compare_frames"])
    log(f"video: {config['size']} px, {config['particles']} particles, {n_max} frames in {workdir}")
    meta = ensure_video(workdir, config["size"], config["particles"], n_max, log)
    resolved = resolve_parameters(first_frames(meta, min(3, n_max)))  # here: not measured
    log(f"resolved: {resolved}")
    params = _stream_params(resolved)
    timeout = config["timeout"]

    memory = measure_memory(meta, config["frames"], params, config["chunk_frames"], workdir, timeout, log)
    speed = measure_speed(meta, config["speed_frames"], params, config["chunk_frames"], config["repeats"], workdir,
                          timeout, log)
    versus = measure_versus_trackpy(meta, config["compare_frames"], params, resolved, config["chunk_frames"],
                                    config["repeats"], workdir, timeout, log)
    shutil.rmtree(workdir / "runs", ignore_errors=True)

    import pims
    import trackpy

    video = {k: v for k, v in meta.items() if k != "particles_in_frame"}
    video["particles_in_frame_min_max"] = [min(meta["particles_in_frame"]), max(meta["particles_in_frame"])]
    result = {
        "benchmark": "tracking_scale", "issue": "17.4", "out": str(args.out),
        "configuration": config, "video": video,
        "resolved": {k: resolved[k] for k in ("diameter", "minmass", "separation", "invert", "frames_looked_at")},
        "parameters": params,
        "goals": goal_results(memory, speed, versus),
        "memory": memory, "speed": speed, "versus_trackpy": versus,
        "machine": {"cpus": os.cpu_count(), "load_average_at_start": load_at_start,
                    "load_average_at_end": list(os.getloadavg()), "python": platform.python_version(),
                    "trackpy": trackpy.__version__, "pims": pims.__version__, "platform": platform.platform()},
        "seconds_total": time.perf_counter() - started,
    }
    result = _round(result)
    atomic_write_json(result, args.out)
    atomic_write_bytes(markdown_report(result).encode(), Path(args.out).with_suffix(".md"))
    for g in result["goals"]:
        log(f"goal {g['key']}: wanted {g.get('at_most', g.get('at_least'))}, measured {g['measured']}: "
            f"{g['verdict']}")
    return result


if __name__ == "__main__":
    main()
