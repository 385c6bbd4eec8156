"""How much `mcadams` changes RAVDESS audio (issue 24's faithfulness check): the mean spectral
centroid and LPC formant estimates (F1, F2) of clips before and after anonymisation, by gender.

    python benchmarks/mcadams_ravdess.py --data-root ../shared/data/ravdess [--per-actor 5]

Formants: per 25 ms frame (10 ms shift) of the loudest half of a clip's frames, order-12 LPC
(``librosa.lpc``) on the pre-emphasised frame; pole frequencies above 90 Hz with bandwidth under
400 Hz, lowest two as F1 and F2; a clip's value is the median over its frames. The default
mcadams draws α per utterance (seeded as serbench's runs draw it); fixed α are the family.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from serbench.corpora.audio import SAMPLE_RATE, load_audio
from serbench.defenses.mcadams import McAdams
from serbench.features.release import Release
from serbench.features.store import file_digest
from serbench.seeds import release_seed


def formants(wave: np.ndarray, sr: int = SAMPLE_RATE) -> tuple[float, float]:
    """Median F1 and F2 (Hz) over the loudest half of the clip's frames."""
    import librosa

    frames = librosa.util.frame(np.append(wave[0], wave[1:] - 0.97 * wave[:-1]),
                                frame_length=400, hop_length=160).T
    frames = frames[np.argsort((frames ** 2).sum(1))[len(frames) // 2:]] * np.hamming(400)
    found = []
    for a in librosa.lpc(frames + 1e-9, order=12, axis=1):
        poles = np.roots(a)
        poles = poles[poles.imag > 0]
        freq = np.angle(poles) * sr / (2 * np.pi)
        bandwidth = -np.log(np.abs(poles)) * sr / np.pi
        f = np.sort(freq[(freq > 90) & (bandwidth < 400)])
        if len(f) >= 2:
            found.append(f[:2])
    return tuple(np.median(found, axis=0)) if found else (np.nan, np.nan)


def centroid(wave: np.ndarray, sr: int = SAMPLE_RATE) -> float:
    """Mean spectral centroid (Hz) over frames above -40 dB of the clip's loudest."""
    import librosa

    c = librosa.feature.spectral_centroid(y=wave, sr=sr, n_fft=512, hop_length=160)[0]
    rms = librosa.feature.rms(y=wave, frame_length=512, hop_length=160)[0]
    return float(c[rms > rms.max() * 10 ** (-40 / 20)].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--per-actor", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    clips = [p for actor in sorted(args.data_root.glob("Actor_*"))
             for p in rng.choice(sorted(actor.glob("*.*")), args.per_actor, replace=False)]
    versions = {"original": None, "mcadams (α ~ U[0.5, 0.9])": McAdams(),
                **{f"mcadams α={a}": McAdams(alpha=a) for a in (0.5, 0.7, 0.9)}}
    print(f"{len(clips)} clips ({args.per_actor} per actor)\n")
    print("| audio | gender | spectral centroid (Hz) | F1 (Hz) | F2 (Hz) |")
    print("| --- | --- | --- | --- | --- |")
    for name, defense in versions.items():
        stats: dict[str, list[tuple[float, float, float]]] = {"F": [], "M": []}
        for path in clips:
            wave = load_audio(path)
            if defense is not None:
                release = Release(defense, release_seed(0, "device"))
                wave = release.apply(wave, SAMPLE_RATE, file_digest(path))
            gender = "M" if int(path.stem.split("-")[-1]) % 2 else "F"
            stats[gender].append((centroid(wave), *formants(wave)))
        for gender, rows in stats.items():
            c, f1, f2 = np.nanmean(np.array(rows), axis=0)
            print(f"| {name} | {gender} | {c:.0f} | {f1:.0f} | {f2:.0f} |")


if __name__ == "__main__":
    with torch.no_grad():
        main()
