"""Cold log-mel extraction of a corpus, side by side in one process: serbench's batched path
(``serbench.features.store.extract``: equal-length waveforms as one STFT, in process) and the
file-by-file computation through worker processes it replaced. Prints seconds and real-time
factors; both run on a fresh cache under one thread (a run's policy, serbench/threads.py).

    python benchmarks/feature_extraction.py --data-root ../shared/data/ravdess
"""

from __future__ import annotations

import argparse
import glob
import multiprocessing
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import soundfile as sf

from serbench.corpora.audio import SAMPLE_RATE, load_audio
from serbench.features.extractors import compute, feature_spec
from serbench.features.store import extract
from serbench.threads import fixed_threads

SPEC = feature_spec("logmel")


def _per_file(path: str) -> None:
    with fixed_threads():
        compute(SPEC, load_audio(path), SAMPLE_RATE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", required=True, help="a directory of .wav/.flac files")
    args = parser.parse_args()
    paths = sorted(glob.glob(f"{args.data_root}/**/*.flac", recursive=True)
                   + glob.glob(f"{args.data_root}/**/*.wav", recursive=True))
    audio = sum(sf.info(p).duration for p in paths)
    print(f"{len(paths)} files, {audio:.0f} s of audio")
    with tempfile.TemporaryDirectory() as cache, fixed_threads():
        start = time.perf_counter()
        extract(paths, SPEC, cache_dir=Path(cache))
        batched = time.perf_counter() - start
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("forkserver")) as pool:
        start = time.perf_counter()
        list(pool.map(_per_file, paths, chunksize=8))
        per_file = time.perf_counter() - start
    for name, seconds in (("batched, in process", batched), ("per file, 2 workers", per_file)):
        print(f"{name:22s} {seconds:7.2f} s  {audio / seconds:6.0f}x real time")
    print(f"ratio: {per_file / batched:.1f}x")


if __name__ == "__main__":
    main()
