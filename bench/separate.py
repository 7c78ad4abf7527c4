"""Offline stem separation: a `stems.separate` job through the daemon, against demucs run directly.

Three ways to separate the same file with the same model, timed end to end, in rounds ordered
daemon, direct, cli, then cli, direct, daemon, and so on: the daemon's run and the direct run are
always back to back, so a burst of load from elsewhere on a shared machine tends to hit both, and
every two rounds each kind has run first and last alike:

* daemon: a real daemon (`python -m bridge up`, via `bridge.testing.DaemonProcess`) with the model
  kept warm (one untimed warm-up job on a short file loads it first). The time runs from sending
  `stems.separate` over ZeroMQ to receiving the job's `job.done` event: request check, queue,
  reading, separating, writing the stems (atomically, fsynced) and the events.
* direct: what the job does, in this process, with nothing around it: demucs's `apply_model` on the
  same checkpoint loaded with `demucs.pretrained.get_model(name, repo=...)`, the same audio read and
  converted as the job reads it (float32, stereo, the model's rate), the same normalisation, split,
  overlap, shifts=0 and segment as `FileSeparator`, and the stems written as WAV pcm24 with
  soundfile. Warmed up once the same way. Not included: fsyncing the stems (the job's durability),
  timed apart as `fsync_s` to show what it costs.
* cli: demucs's own command line, `python -m demucs.separate --repo ... -n ... -d cpu --shifts 0
  --overlap 0.25 --int24`, a cold process per file (imports, model load, separation, writing).

The model is the released htdemucs architecture (`bridge.testing.RELEASED_HTDEMUCS_KWARGS`, 41.98 M
parameters and a 7.8 s training segment, the published checkpoints' shape; seeded random weights:
the cost does not depend on the weights), or with `--tiny` the small test model
(`tiny_htdemucs_repo(depth=3)`, labelled as such: never the product figure). The run prints the
architecture with its parameter count, and this machine's speed: the bare forward p50 of a 1.02 s
window of the released architecture (`bridge.testing.bare_forward_ms`). The audio is synthetic stereo
music (drums, bass, chords, a vibrato lead) at 44.1 kHz, written as a WAV file into the daemon's
`files/` folder. Every side runs torch on `--threads` threads (the daemon's `separate.threads`,
`torch.set_num_threads` here, OMP_NUM_THREADS/MKL_NUM_THREADS for the CLI).

Run time: `apply_model` pads every chunk to the released model's 7.8 s training segment, with a
stride of 5.85 s at overlap 0.25, so 5 s of audio is one segment, 15 s three and 30 s six. One
segment costs about 10 CPU seconds on the 2-core AMD EPYC (2026-12-02: 10.2 s of the daemon's CPU,
31 s of wall time on 1 thread at load average 9). The default run (30 s, three rounds, three ways
plus warm-ups) is therefore about 10 CPU minutes, 5 minutes or more on two idle cores. On a shared
machine, `--seconds 5 --repeat 2 --threads 1` took 7 minutes at load 9. At that load, 2 threads are
slower than 1, because torch's OpenMP threads spin-wait for a core.

Figures: medians over `--repeat` rounds (and minimums); CPU seconds per run, user + system, and the
system part alone (the daemon's from /proc, this process's own, the CLI child's; system time here is
mostly page faults on the allocator's freshly mapped memory); the ratio daemon/direct of the medians
(target <= 1.05), the median of each round's daemon/direct (`ratio_direct_paired`) and best against
best (`ratio_direct_min`); daemon/cli. The load average printed per run tells a quiet machine (about
`--threads`, this benchmark's own) from a shared one.

The daemon's resident memory after each job (once the worker has handed freed memory back) and its
peak are reported too; `--malloc-tuning off` runs the daemon with the C library's defaults, for
comparing what the tuning costs in memory against what it saves in time.

    .venv/bin/python bench/separate.py [--seconds S] [--repeat N] [--threads N] [--tiny] [--no-cli]
                                       [--malloc-tuning on|off]

The last line of output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `bridge`, `engines` when run as a script

from bridge.client import Client
from bridge.testing import (
    REFERENCE_WINDOW_SECONDS,
    DaemonProcess,
    bare_forward_ms,
    describe_htdemucs,
    released_htdemucs,
    released_htdemucs_repo,
    tiny_htdemucs_repo,
)

SAMPLE_RATE = 44100
WARMUP_SECONDS = 2.0  # one segment either way: apply_model pads every chunk to the segment length
OVERLAP = 0.25  # separate.overlap's default, and demucs's CLI default
SUBTYPE = "PCM_24"  # separate.encoding's default, pcm24; the CLI's --int24
TARGET_RATIO = 1.05
KINDS = ("daemon", "direct", "cli")


# -- the model and the audio -------------------------------------------------------------------------


def build_repo(folder: Path, tiny: bool) -> tuple[Path, str]:
    """Save the model as a demucs local repo; returns (repo folder, model name)."""
    if tiny:
        return tiny_htdemucs_repo(folder, "tiny", depth=3), "tiny"
    return released_htdemucs_repo(folder, "htdemucs_random"), "htdemucs_random"


def music(seconds: float, seed: int = 0) -> np.ndarray:
    """`(frames, 2)` float32 of something like a band at 120 bpm: kick, snare, hats, bass, chords, lead.

    Elementwise numpy only (no BLAS call, so no OpenBLAS threads spinning next to torch's).
    """
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    left, right = np.zeros(n), np.zeros(n)
    beat = 0.5

    def hit(start: float, length: float) -> tuple[slice, np.ndarray]:
        a = int(start * SAMPLE_RATE)
        b = min(n, a + int(length * SAMPLE_RATE))
        return slice(a, b), np.arange(b - a) / SAMPLE_RATE

    for k in range(int(seconds / beat) + 1):
        span, u = hit(k * beat, 0.3)  # kick: a falling sine
        kick = np.sin(2 * np.pi * (50 * u + 100 * 0.04 * (1 - np.exp(-u / 0.04)))) * np.exp(-u / 0.12)
        left[span] += 0.6 * kick
        right[span] += 0.6 * kick
        if k % 2 == 1:  # snare on 2 and 4
            span, u = hit(k * beat, 0.2)
            snare = (0.5 * rng.standard_normal(u.shape[0]) + 0.3 * np.sin(2 * np.pi * 190 * u)) * np.exp(-u / 0.07)
            left[span] += 0.35 * snare
            right[span] += 0.45 * snare
        for half in (0.0, 0.25):  # hats on the eighths, right of centre
            span, u = hit(k * beat + half, 0.05)
            hat = rng.standard_normal(u.shape[0]) * np.exp(-u / 0.012)
            left[span] += 0.05 * hat
            right[span] += 0.12 * hat

    roots = np.array([55.0, 55.0, 73.42, 65.41, 49.0, 49.0, 61.74, 65.41])  # A A D C G G B C
    step = np.minimum((t / beat).astype(int), int(seconds / beat)) % len(roots)
    bass_phase = 2 * np.pi * np.cumsum(roots[step]) / SAMPLE_RATE
    bass = np.sin(bass_phase) + 0.3 * np.sin(2 * bass_phase)
    bass *= 0.6 + 0.4 * np.exp(-(t % beat) / 0.2)
    left += 0.35 * bass
    right += 0.35 * bass

    chords = ((220.0, 261.63, 329.63), (293.66, 349.23, 440.0), (261.63, 329.63, 392.0), (196.0, 246.94, 293.66))
    bar = (t / (4 * beat)).astype(int) % len(chords)
    pad = np.zeros(n)
    for voice in range(3):
        freq = np.array([c[voice] for c in chords])[bar]
        phase = 2 * np.pi * np.cumsum(freq) / SAMPLE_RATE
        pad += sum(np.sin(h * phase) / h for h in (1, 2, 3, 4))
    left += 0.08 * pad
    right += 0.05 * pad

    melody = np.array([440.0, 493.88, 523.25, 587.33, 523.25, 493.88, 440.0, 392.0])
    note = (t / beat).astype(int) % len(melody)
    vibrato = 1 + 0.006 * np.sin(2 * np.pi * 5.5 * t)
    lead_phase = 2 * np.pi * np.cumsum(melody[note] * vibrato) / SAMPLE_RATE
    lead = sum(a * np.sin(h * lead_phase) for h, a in ((1, 1.0), (2, 0.5), (3, 0.35), (5, 0.2)))
    lead *= np.minimum(1.0, (t % beat) / 0.03) * (0.5 + 0.5 * (note % 2 == 0))
    left += 0.12 * lead
    right += 0.12 * lead

    audio = np.stack([left, right], axis=1)
    return (0.8 * audio / np.abs(audio).max()).astype(np.float32)


# -- the three ways --------------------------------------------------------------------------------


def process_cpu_seconds(pid: int) -> tuple[float, float] | None:
    """(user, system) CPU seconds of a process (all its threads) from /proc, or None where there is none."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def process_memory_mb(pid: int) -> tuple[float, float] | None:
    """(resident now, peak resident) in MB of a process from /proc (Linux), or None elsewhere."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    kb = {line.split(":")[0]: int(line.split()[1]) for line in lines if line.startswith(("VmRSS:", "VmHWM:"))}
    return kb["VmRSS"] / 1024, kb["VmHWM"] / 1024


def settled_rss_mb(pid: int, limit_s: float = 3.0) -> float | None:
    """The process's RSS once it stops changing: the worker hands freed memory back (malloc_trim)
    just after it publishes job.done, so the first reading may come before that."""
    previous = None
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        memory = process_memory_mb(pid)
        if memory is None:
            return None
        if previous is not None and abs(memory[0] - previous) < 1.0:
            return memory[0]
        previous = memory[0]
        time.sleep(0.2)
    return previous


def run_daemon(client: Client, daemon: DaemonProcess, source: Path) -> dict[str, Any]:
    """One `stems.separate` job, timed from the request to its `job.done` event."""
    assert daemon.process is not None
    cpu_before = process_cpu_seconds(daemon.process.pid)
    started = time.perf_counter()
    reply = client.call("stems.separate", {"path": str(source)})
    final = client.wait_jobs([reply["id"]], lambda name, data: None, 600)[reply["id"]]
    wall = time.perf_counter() - started
    cpu_after = process_cpu_seconds(daemon.process.pid)
    if final["event"] != "job.done":
        raise RuntimeError(f"the daemon's job ended with {final}:\n{daemon.log()[-4000:]}")
    user = system = None
    if cpu_before is not None and cpu_after is not None:
        user, system = cpu_after[0] - cpu_before[0], cpu_after[1] - cpu_before[1]
    memory = process_memory_mb(daemon.process.pid)
    return {
        "wall_s": wall,
        "handler_s": float(final["result"]["seconds"]),  # the handler's own time, measured in the daemon
        "cpu_s": None if user is None or system is None else user + system,
        "sys_s": system,
        # What the daemon keeps between jobs, and the most it ever held (daemon.malloc_tuning).
        "rss_after_mb": settled_rss_mb(daemon.process.pid),
        "peak_rss_mb": None if memory is None else memory[1],
        "paths": final["result"]["paths"],
    }


def run_direct(bag: Any, source: Path, out_dir: Path) -> dict[str, Any]:
    """What the job does, without the daemon: read and convert, apply_model, write pcm24 WAVs."""
    import torch
    from demucs.apply import apply_model
    from demucs.audio import convert_audio_channels

    from engines.resample import resample_tensor

    cpu_started = os.times()
    started = time.perf_counter()
    audio, sample_rate = soundfile.read(str(source), dtype="float32", always_2d=True)
    mix = convert_audio_channels(torch.from_numpy(audio.T.copy()), 2)
    if sample_rate != bag.samplerate:
        mix = resample_tensor(mix, sample_rate, bag.samplerate)
    read = time.perf_counter()

    # FileSeparator._process, minus its progress callback.
    reference = mix.mean(0)
    mean, std = reference.mean(), reference.std() + 1e-8
    segment = float(min(m.segment for m in bag.models))
    with torch.inference_mode():
        out = apply_model(bag, ((mix - mean) / std)[None], shifts=0, split=True, overlap=OVERLAP, progress=False,
                          device="cpu", segment=segment)[0]
    separated = (out * std + mean).numpy().astype(np.float32, copy=False)
    if sample_rate != bag.samplerate:
        separated = resample_tensor(torch.from_numpy(separated), bag.samplerate, sample_rate).numpy()
    separated = separated[..., : audio.shape[0]]
    separate = time.perf_counter()

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for index, name in enumerate(bag.sources):
        paths[name] = str(out_dir / f"{name}.wav")
        soundfile.write(paths[name], separated[index].T, sample_rate, subtype=SUBTYPE, format="WAV")
    done = time.perf_counter()
    cpu = os.times()

    # Not part of `wall_s`: what the job's atomic_write adds for durability (fsync each file, then the folder).
    for path in [*paths.values(), str(out_dir)]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return {
        "wall_s": done - started, "cpu_s": cpu.user + cpu.system - cpu_started.user - cpu_started.system,
        "sys_s": cpu.system - cpu_started.system, "read_s": read - started, "separate_s": separate - read,
        "write_s": done - separate, "fsync_s": time.perf_counter() - done, "paths": paths,
    }


def run_cli(repo: Path, name: str, source: Path, out_dir: Path, threads: int) -> dict[str, Any]:
    """demucs's command line as a cold process on one file."""
    command = [sys.executable, "-m", "demucs.separate", "--repo", str(repo), "-n", name, "-d", "cpu",
               "--shifts", "0", "--overlap", str(OVERLAP), "--int24", "-o", str(out_dir), str(source)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1200)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {done.returncode}:\n{done.stderr[-4000:]}")
    folder = out_dir / name / source.stem
    paths = {p.stem: str(p) for p in sorted(folder.glob("*.wav"))}
    cpu = (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "sys_s": after.ru_stime - children.ru_stime, "paths": paths}


# -- figures ---------------------------------------------------------------------------------------


def max_difference(first: dict[str, str], second: dict[str, str]) -> float:
    """The largest sample difference between two sets of stems (a check that both did the same work)."""
    worst = 0.0
    for stem, path in first.items():
        a, _ = soundfile.read(path, dtype="float32")
        b, _ = soundfile.read(second[stem], dtype="float32")
        if a.shape != b.shape:
            return float("inf")
        worst = max(worst, float(np.abs(a - b).max()))
    return worst


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and minimum of every timed figure over the rounds."""
    figures: dict[str, Any] = {}
    for key in runs[0]:
        values = [run[key] for run in runs]
        if key == "paths" or any(v is None for v in values):
            continue
        figures[key] = round(statistics.median(values), 3)
        if key == "wall_s":
            figures["min_s"] = round(min(values), 3)
            figures["all_s"] = [round(v, 3) for v in values]
    return figures


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from demucs.pretrained import get_model

    torch.set_num_threads(args.threads)
    kinds = [k for k in KINDS if k != "cli" or not args.no_cli]
    load_before = os.getloadavg()
    bench_started = time.perf_counter()
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="flowstate-bench-")))
        repo, name = build_repo(folder / "models", args.tiny)
        overrides = {
            "daemon": {"log_level": "WARNING", "malloc_tuning": args.malloc_tuning == "on"},
            "models": {"demucs_repo": str(repo)},
            "separate": {"model": name, "engine_device": "cpu", "threads": args.threads, "shifts": 0,
                         "overlap": OVERLAP, "segment_seconds": None, "format": "wav", "encoding": "pcm24"},
        }
        (folder / "daemon").mkdir()
        daemon = DaemonProcess(overrides=overrides, workdir=folder / "daemon")
        stack.callback(daemon.stop)  # before the folder goes: the daemon's database and log live there
        daemon.start(timeout_seconds=60)
        files = daemon.workdir / "files"
        source = files / "song.wav"
        warmup = files / "warmup.wav"
        soundfile.write(str(source), music(args.seconds), SAMPLE_RATE, subtype=SUBTYPE)
        soundfile.write(str(warmup), music(WARMUP_SECONDS, seed=1), SAMPLE_RATE, subtype=SUBTYPE)
        client = stack.enter_context(Client(daemon.zmq_requests, timeout_seconds=60))

        bag = get_model(name, repo=repo)  # as demucs's CLI and the daemon's loader load it
        params = sum(p.numel() for p in bag.parameters())
        segment = float(min(m.segment for m in bag.models))
        architecture = describe_htdemucs(bag.models[0])
        if args.tiny:
            architecture += ": the small test model, NOT the product figure"
        print(f"model {name}: {architecture}, segment {segment:g} s; audio {args.seconds:g} s "
              f"stereo at {SAMPLE_RATE} Hz; cpu, {args.threads} thread(s); {args.repeat} round(s)", flush=True)
        # Fewer forwards than bench/stream.py's: the machine's speed only, next to the figures.
        reference_ms = bare_forward_ms(released_htdemucs(), window_seconds=REFERENCE_WINDOW_SECONDS,
                                       count=5, warmup=1)[0]
        print(f"this machine: bare forward of a {REFERENCE_WINDOW_SECONDS:.2f} s window, released architecture: "
              f"{reference_ms:.0f} ms p50 (load {os.getloadavg()[0]:.2f})", flush=True)

        first = run_daemon(client, daemon, warmup)  # loads the model in the daemon and keeps it warm
        run_direct(bag, warmup, files / "direct-warmup")
        print(f"warm-up: the daemon's first job (model load included) took {first['wall_s']:.2f} s", flush=True)

        runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
        for round_index in range(args.repeat):
            order = kinds if round_index % 2 == 0 else kinds[::-1]
            for kind in order:
                if kind == "daemon":
                    result = run_daemon(client, daemon, source)
                elif kind == "direct":
                    result = run_direct(bag, source, files / "direct" / source.stem)
                else:
                    result = run_cli(repo, name, source, files / "cli", args.threads)
                runs[kind].append(result)
                cpu = ("cpu -" if result["cpu_s"] is None
                       else f"cpu {result['cpu_s']:.1f} s, sys {result['sys_s']:.1f} s")
                print(f"  round {round_index + 1}: {kind:6} {result['wall_s']:7.2f} s ({cpu}; "
                      f"load {os.getloadavg()[0]:.2f})", flush=True)

        difference = max_difference(runs["daemon"][-1]["paths"], runs["direct"][-1]["paths"])
        cli_difference = (max_difference(runs["daemon"][-1]["paths"], runs["cli"][-1]["paths"])
                          if "cli" in runs else None)

    figures = {kind: summary(results) for kind, results in runs.items()}
    daemon_s, direct_s = figures["daemon"]["wall_s"], figures["direct"]["wall_s"]
    cli_s = figures["cli"]["wall_s"] if "cli" in figures else None
    paired = statistics.median(d["wall_s"] / j["wall_s"] for d, j in zip(runs["daemon"], runs["direct"], strict=True))
    return {
        "bench": "separate",
        "model": name,
        "model_params": params,
        "model_architecture": architecture,
        "reference_forward_ms": round(reference_ms, 1),
        "reference_window_s": round(REFERENCE_WINDOW_SECONDS, 4),
        "segment_s": segment,
        "audio_seconds": args.seconds,
        "threads": args.threads,
        "repeat": args.repeat,
        "daemon_s": daemon_s,
        "direct_s": direct_s,
        "cli_s": cli_s,
        "ratio_direct": round(daemon_s / direct_s, 3),
        "ratio_direct_paired": round(paired, 3),
        "ratio_direct_min": round(figures["daemon"]["min_s"] / figures["direct"]["min_s"], 3),
        "ratio_cli": None if cli_s is None else round(daemon_s / cli_s, 3),
        "x_realtime_daemon": round(args.seconds / daemon_s, 3),
        "x_realtime_direct": round(args.seconds / direct_s, 3),
        "x_realtime_cli": None if cli_s is None else round(args.seconds / cli_s, 3),
        "target_ratio_direct": TARGET_RATIO,
        "daemon_first_job_s": round(first["wall_s"], 3),
        "malloc_tuning": args.malloc_tuning,
        "daemon": figures["daemon"],
        "direct": figures["direct"],
        "cli": figures.get("cli"),
        "max_abs_diff_daemon_direct": difference,
        "max_abs_diff_daemon_cli": cli_difference,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "bench_wall_s": round(time.perf_counter() - bench_started, 1),
    }


def report(r: dict[str, Any]) -> None:
    print(f"\nstems.separate, {r['model']}: {r['model_architecture']}; {r['audio_seconds']:g} s stereo "
          f"44.1 kHz, cpu {r['threads']} thread(s), median of {r['repeat']} round(s); this machine's 1.02 s "
          f"released window: {r['reference_forward_ms']:.0f} ms")
    header = f"{'':22} {'median s':>9} {'min s':>8} {'cpu s':>7} {'sys s':>6} {'x RT':>6} {'daemon/this':>11}"
    print(header)
    print("-" * len(header))
    labels = {"daemon": "daemon job (warm)", "direct": "direct apply_model", "cli": "demucs CLI (cold)"}
    for kind, label in labels.items():
        f = r[kind]
        if f is None:
            continue
        cpu = f"{f['cpu_s']:7.1f} {f['sys_s']:6.1f}" if "cpu_s" in f else f"{'-':>7} {'-':>6}"
        print(f"{label:22} {f['wall_s']:9.2f} {f['min_s']:8.2f} {cpu} {r['audio_seconds'] / f['wall_s']:6.2f} "
              f"{r['daemon_s'] / f['wall_s']:11.3f}")
    d, j = r["daemon"], r["direct"]
    print(f"daemon: handler {d['handler_s']:.2f} s of {d['wall_s']:.2f} s (request, queue, events: "
          f"{d['wall_s'] - d['handler_s']:.2f} s); first job with model load {r['daemon_first_job_s']:.2f} s")
    if "rss_after_mb" in d:
        print(f"daemon memory (malloc_tuning {r['malloc_tuning']}): {d['rss_after_mb']:.0f} MB resident after a job "
              f"(median), peak {d['peak_rss_mb']:.0f} MB")
    print(f"direct: read {j['read_s']:.2f} s, separate {j['separate_s']:.2f} s, write {j['write_s']:.2f} s; "
          f"fsync of the stems (not timed in direct, the job's atomic_write does it) {j['fsync_s']:.3f} s")
    verdict = "met" if r["ratio_direct"] <= TARGET_RATIO else "NOT met"
    line = (f"daemon/direct {r['ratio_direct']:.3f} (target <= {TARGET_RATIO}: {verdict}); per round, median "
            f"{r['ratio_direct_paired']:.3f}; best against best {r['ratio_direct_min']:.3f}")
    if r["ratio_cli"] is not None:
        line += f"; daemon/cli {r['ratio_cli']:.3f}"
    print(line)
    diff_cli = r["max_abs_diff_daemon_cli"]
    print(f"same work: max |daemon - direct| {r['max_abs_diff_daemon_direct']:.2e}"
          + ("" if diff_cli is None else f", max |daemon - cli| {diff_cli:.2e}")
          + f"; load average {r['loadavg_before'][0]:.2f} before, {r['loadavg_after'][0]:.2f} after "
          f"(shared machine); bench took {r['bench_wall_s']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the test audio (default 30)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; medians and minimums are reported")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads on every side")
    parser.add_argument("--tiny", action="store_true",
                        help="the small test HTDemucs (depth 3) instead of the released architecture")
    parser.add_argument("--no-cli", action="store_true", help="skip demucs's command line")
    parser.add_argument("--malloc-tuning", choices=["on", "off"], default="on",
                        help="the daemon's daemon.malloc_tuning (default on, as config.yaml)")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.repeat < 1 or args.threads < 1:
        parser.error("--seconds, --repeat and --threads must be positive")
    results = run(args)
    report(results)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
