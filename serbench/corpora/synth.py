"""The built-in ``synth`` corpus: procedurally generated, speech-like emotional audio.

Why it exists: the benchmark must run end to end with no licensed data, and its sanity check
needs corpora whose gender leakage is known: real-speech-like gender cues with ``null=False``,
none by construction with ``null=True``.

Each utterance is a source-filter synthesis at 16 kHz: a Rosenberg glottal pulse train (with
jitter, shimmer and aspiration noise) drives a cascade of five formant resonators, one vowel per
syllable, with syllable envelopes and pauses. Gender sets the speaker's F0 and vocal-tract length
(formant scale); emotion sets pitch level and range, tempo, energy and voice quality (open
quotient, closure sharpness, return-phase low-pass, breathiness: the spectral tilt), scaled by
a per-speaker expressiveness, with per-utterance randomness. Every random draw comes from a
generator seeded by ``(seed, speaker[, utterance])``, so audio never depends on generation order.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import soundfile as sf

from serbench.cache import cache_lock, serbench_cache_dir
from serbench.corpora.audio import SAMPLE_RATE
from serbench.corpora.base import COLUMNS, EMOTIONS_4, GENDERS, Corpus
from serbench.errors import SerbenchError
from serbench.seeds import stream
from serbench.workers import process_map

#: Bump whenever the audio for given parameters changes: it is part of the cache key.
GENERATOR_VERSION = 3
N_FOLDS = 5
#: The corpus table (paths relative to the root) under a one-line ``_MAGIC`` header.
META_FILE = "meta.csv"
#: Starts meta.csv: marks a directory as a synth corpus we may replace when stale.
_MAGIC = "# serbench synth corpus"

#: F1..F5 (Hz) of five vowels (a, i, u, e, o) for a reference adult male vocal tract, after
#: Peterson & Barney; a speaker's formants are these times its formant scale.
_VOWEL_FORMANTS = np.array(
    [
        [730.0, 1090.0, 2440.0, 3400.0, 4500.0],
        [270.0, 2290.0, 3010.0, 3500.0, 4600.0],
        [300.0, 870.0, 2240.0, 3300.0, 4400.0],
        [530.0, 1840.0, 2480.0, 3450.0, 4500.0],
        [570.0, 840.0, 2410.0, 3350.0, 4450.0],
    ]
)
_BANDWIDTHS = np.array([70.0, 90.0, 130.0, 180.0, 250.0])
#: Formant filter ring-out kept past a syllable's end (30 ms).
_TAIL = int(0.03 * SAMPLE_RATE)
#: Prosodic cues whose emotional deviation a speaker's expressiveness scales, in this order.
CUES = ("pitch", "range", "rate", "level", "quality")


@dataclass(frozen=True)
class Voice:
    """One speaker's fixed traits; every utterance of the speaker is drawn around them."""

    f0: float  #: mean F0 (Hz) of neutral speech
    formant_scale: float  #: inverse relative vocal-tract length (reference male tract = 1)
    formant_skew: tuple[float, ...]  #: idiosyncratic factor per formant, so same-size tracts differ
    expressiveness: tuple[float, ...]  #: gain on each emotion's deviation from neutral, per CUES
    jitter: float  #: relative period-to-period F0 perturbation
    shimmer: float  #: relative period-to-period amplitude perturbation
    breathiness: float  #: aspiration noise relative to the voiced source
    open_quotient: float  #: habitual offset added to the emotion's open quotient
    corner: float  #: habitual offset (octaves) added to the emotion's spectral-tilt corner
    gain_db: float  #: recording level
    noise_db: float  #: room noise floor (dBFS)


class _VoicePrior(NamedTuple):
    """Population distribution of voices of one kind (the gender, or the null's latent kind)."""

    f0: float
    f0_sd_st: float
    formant_scale: float
    expressiveness: float
    breathiness: float
    open_quotient: float
    corner: float


_PRIORS = {
    "F": _VoicePrior(f0=210.0, f0_sd_st=2.0, formant_scale=1.17, expressiveness=1.1,
                     breathiness=0.06, open_quotient=0.04, corner=-0.3),
    "M": _VoicePrior(f0=120.0, f0_sd_st=2.3, formant_scale=1.0, expressiveness=0.95,
                     breathiness=0.035, open_quotient=0.0, corner=0.0),
}


class _Style(NamedTuple):
    """An emotion's typical delivery; a speaker realises ``neutral + gain * (style - neutral)``."""

    pitch: float  #: F0 level shift (semitones)
    range: float  #: syllable pitch-accent height (semitones)
    rate: float  #: syllables per second
    level: float  #: energy (dB)
    open_quotient: float  #: glottal open fraction: high = soft, breathy, steep tilt
    closing: float  #: glottal closing fraction: short = abrupt closure, flat tilt
    breath: float  #: aspiration added to the speaker's own
    corner: float  #: glottal return-phase low-pass corner, octaves re 1 kHz: low = steep tilt
    pause: float  #: pause length factor
    formant: float  #: formant shift (smiling raises, lax articulation lowers)


_STYLES = {
    "neutral": _Style(0.0, 2.5, 4.5, 0.0, 0.60, 0.20, 0.00, 0.0, 1.0, 1.00),
    "happy": _Style(3.0, 5.0, 5.0, 3.0, 0.56, 0.15, 0.00, 0.5, 0.8, 1.04),
    "sad": _Style(-2.0, 1.2, 3.4, -5.0, 0.70, 0.28, 0.02, -1.2, 1.6, 0.98),
    "angry": _Style(2.0, 4.5, 5.2, 6.0, 0.45, 0.08, -0.01, 1.5, 0.8, 1.03),
}
#: Per-utterance spread of each cue, so emotion is learnable but not trivial.
_SPREAD = _Style(1.2, 0.8, 0.5, 2.0, 0.04, 0.025, 0.005, 0.3, 0.0, 0.0)


def draw_voice(rng: np.random.Generator, kind: str) -> Voice:
    """A random speaker of ``kind`` ("F" or "M" acoustics) with within-kind spread."""
    p = _PRIORS[kind]
    base_expr = p.expressiveness * np.exp(rng.normal(0.0, 0.25))
    return Voice(
        f0=float(p.f0 * 2.0 ** (rng.normal(0.0, p.f0_sd_st) / 12.0)),
        formant_scale=float(p.formant_scale * np.exp(rng.normal(0.0, 0.035))),
        formant_skew=tuple(np.exp(rng.normal(0.0, 0.03, 5)).tolist()),
        expressiveness=tuple((base_expr * np.exp(rng.normal(0.0, 0.15, len(CUES)))).tolist()),
        jitter=float(rng.uniform(0.004, 0.012)),
        shimmer=float(rng.uniform(0.03, 0.07)),
        breathiness=float(p.breathiness * np.exp(rng.normal(0.0, 0.3))),
        open_quotient=float(p.open_quotient + rng.normal(0.0, 0.03)),
        corner=float(p.corner + rng.normal(0.0, 0.25)),
        gain_db=float(rng.normal(0.0, 2.0)),
        noise_db=float(rng.uniform(-75.0, -65.0)),
    )


def speaker_voices(speakers: int, *, null: bool = False, seed: int = 0) -> list[tuple[str, Voice]]:
    """``(gender label, voice)`` per speaker: even indices F, odd M.

    With ``null`` speakers come in twin pairs (2j, 2j+1) sharing one voice, one labelled F and
    one M, and pairs alternate between F-like and M-like voices; twins also share every
    recording (:meth:`Synth._write_speaker`). The audio then has exactly the same distribution
    under both labels in the finite corpus, not just in expectation: balancing only the voice
    kind left chance correlations (noise floor, expressiveness) that a strong attacker picked
    up, and twins with their own utterance draws still let shadow-trained intercept attackers
    reach 0.575 on 20 target speakers.
    """
    out = []
    for i in range(speakers):
        gender = GENDERS[i % 2]
        if null:
            pair = i // 2
            voice = draw_voice(stream(seed, pair, 1), GENDERS[pair % 2])
        else:
            voice = draw_voice(stream(seed, i, 1), gender)
        out.append((gender, voice))
    return out


def utterance_rng(seed: int, speaker: int, emotion: str, index: int) -> np.random.Generator:
    """The generator for one utterance, independent of every other utterance's draws."""
    return stream(seed, speaker, 2, EMOTIONS_4.index(emotion), index)


def generate_utterance(voice: Voice, emotion: str, rng: np.random.Generator) -> np.ndarray:
    """One 1.0–2.0 s utterance of ``voice`` speaking with ``emotion``: float32 at 16 kHz."""
    from scipy.signal import lfilter, sosfilt  # slow to import; a warm cache needs neither

    neutral, style = _STYLES["neutral"], _STYLES[emotion]
    gain = dict(zip(CUES, voice.expressiveness, strict=True))

    def cue(field: str, cue_name: str) -> float:
        base, target = getattr(neutral, field), getattr(style, field)
        return base + gain[cue_name] * (target - base) + rng.normal(0.0, getattr(_SPREAD, field))

    pitch = cue("pitch", "pitch")
    range_st = max(0.3, cue("range", "range"))
    rate = float(np.clip(cue("rate", "rate"), 2.5, 7.5))
    level = cue("level", "level")
    open_q = float(np.clip(cue("open_quotient", "quality") + voice.open_quotient, 0.35, 0.85))
    closing = float(np.clip(cue("closing", "quality"), 0.05, open_q - 0.15))
    breath = max(0.0, voice.breathiness + cue("breath", "quality"))
    corner_hz = 1000.0 * 2.0 ** (cue("corner", "quality") + voice.corner)
    formant_shift = 1.0 + gain["quality"] * (style.formant - 1.0)

    n = int(round(rng.uniform(1.0, 2.0) * SAMPLE_RATE))
    spans = _syllable_spans(rng, n, rate, style.pause)
    syl = np.full(n, -1)
    pos = np.zeros(n)
    for k, (a, b) in enumerate(spans):
        syl[a:b] = k
        pos[a:b] = (np.arange(b - a) + 0.5) / (b - a)
    stress = rng.uniform(0.2, 1.0, len(spans))
    bump = np.sin(np.pi * pos)  # zero outside syllables (pos 0), so syl = -1 there is harmless

    # F0 contour (semitones re the speaker's F0): level, accents, declination, slow drift;
    # centred so neutral speech averages near the speaker's F0.
    t = np.arange(n) / SAMPLE_RATE
    duration = n / SAMPLE_RATE
    decline = rng.uniform(1.0, 2.5)
    semitones = (
        pitch
        + range_st * (stress[syl] * bump - 0.35)
        - decline * (t / duration - 0.5)
        + 0.4 * np.sin(2 * np.pi * rng.uniform(0.5, 1.5) * t + rng.uniform(0, 2 * np.pi))
    )
    f0 = np.clip(voice.f0 * np.exp(semitones * (np.log(2.0) / 12.0)), 55.0, 500.0)

    # Glottal source: per-period jitter on F0, Rosenberg flow with per-period shimmer, its
    # derivative (lip radiation) low-passed like the LF model's return phase (the main tilt
    # control), plus flow-modulated aspiration noise.
    period0 = np.floor(np.cumsum(f0) / SAMPLE_RATE).astype(int)
    f0 = f0 * (1.0 + voice.jitter * rng.standard_normal(period0[-1] + 1)[period0])
    phase = np.cumsum(f0) / SAMPLE_RATE
    period = np.floor(phase).astype(int)
    flow = _rosenberg(phase - period, open_q, closing)
    flow *= (1.0 + voice.shimmer * rng.standard_normal(period[-1] + 1))[period]
    pole = np.exp(-2.0 * np.pi * corner_hz / SAMPLE_RATE)
    source = lfilter([1.0 - pole], [1.0, -pole], np.diff(flow, prepend=0.0))
    source /= np.sqrt(np.mean(source**2))
    noise = np.diff(_white(rng, n + 1)) / np.sqrt(2.0)
    envelope = np.sqrt(bump) * (10.0 ** (4.0 * (stress - 0.6) / 20.0))[syl]
    excitation = (source + breath * (0.3 + flow) * noise) * envelope

    # Vocal tract: one vowel per syllable, filtered with its ring-out overlap-added.
    scale = voice.formant_scale * np.asarray(voice.formant_skew) * formant_shift
    out = np.zeros(n + _TAIL)
    for a, b in spans:
        freqs = _VOWEL_FORMANTS[rng.integers(len(_VOWEL_FORMANTS))] * scale
        freqs = np.minimum(freqs * np.exp(rng.normal(0.0, 0.03, 5)), 0.45 * SAMPLE_RATE)
        sos = _resonators(freqs, _BANDWIDTHS * voice.formant_scale)
        out[a : b + _TAIL] += sosfilt(sos, np.concatenate([excitation[a:b], np.zeros(_TAIL)]))
    speech = out[:n]

    # Level: the emotion's energy and the speaker's recording gain, then the room noise floor.
    speech *= 10.0 ** ((-34.0 + level + voice.gain_db) / 20.0) / np.sqrt(np.mean(speech**2))
    speech /= max(1.0, np.abs(speech).max() / 0.95)  # rare: keep loud angry speech unclipped
    speech += 10.0 ** (voice.noise_db / 20.0) * _white(rng, n)
    return speech.astype(np.float32)


def _white(rng: np.random.Generator, n: int) -> np.ndarray:
    """Unit-variance uniform white noise: 4x cheaper than Gaussian, and indistinguishable
    once formant-filtered or 70 dB down."""
    return rng.uniform(-np.sqrt(3.0), np.sqrt(3.0), n)


def _syllable_spans(
    rng: np.random.Generator, n: int, rate: float, pause: float
) -> list[tuple[int, int]]:
    """Syllable (start, end) samples: lead-in, syllables at ``rate`` with short gaps and some
    phrase pauses (longer by ``pause``), a trailing silence; at least one syllable."""
    lead, trail = rng.uniform(0.05, 0.15, 2)
    end = n / SAMPLE_RATE - trail
    mean_dur = max(0.09, 1.0 / rate - 0.06 * pause)
    spans: list[tuple[int, int]] = []
    t = lead
    while end - t >= 0.08:
        dur = min(float(np.clip(mean_dur * np.exp(rng.normal(0.0, 0.25)), 0.08, 0.45)), end - t)
        spans.append((int(round(t * SAMPLE_RATE)), int(round((t + dur) * SAMPLE_RATE))))
        phrase_break = rng.random() < 0.25
        t += dur + pause * (rng.uniform(0.10, 0.25) if phrase_break else rng.uniform(0.02, 0.05))
    return spans


def _rosenberg(theta: np.ndarray, open_q: float, closing: float) -> np.ndarray:
    """Rosenberg-B glottal flow at phase ``theta`` in [0, 1): cosine opening, quarter-cosine
    closing ending abruptly at ``open_q`` (the abrupt end is what excites high frequencies)."""
    opening = open_q - closing
    flow = np.zeros_like(theta)
    rising = theta < opening
    falling = ~rising & (theta < open_q)
    flow[rising] = 0.5 * (1.0 - np.cos(np.pi / opening * theta[rising]))
    flow[falling] = np.cos(0.5 * np.pi / closing * (theta[falling] - opening))
    return flow


def _resonators(freqs: np.ndarray, bandwidths: np.ndarray) -> np.ndarray:
    """Second-order sections of a cascade of unit-DC-gain resonators (a Klatt cascade)."""
    r = np.exp(-np.pi * bandwidths / SAMPLE_RATE)
    c = 2.0 * r * np.cos(2.0 * np.pi * freqs / SAMPLE_RATE)
    zeros = np.zeros_like(r)
    return np.stack([1.0 - c + r**2, zeros, zeros, np.ones_like(r), -c, r**2], axis=1)


class Synth(Corpus):
    """The default corpus: generated on first load, cached, reused while parameters match."""

    name = "synth"
    summary = (
        "Generated speech-like audio (glottal source + formant filter), gender-dependent voices, "
        "emotion-dependent prosody; null=True removes every gender cue. No data needed."
    )
    needs_root = False
    clients_per_speaker = 1

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        speakers: int = 40,
        utterances_per_emotion: int = 8,
        null: bool = False,
        seed: int = 0,
    ) -> None:
        integers = {"speakers": speakers, "utterances_per_emotion": utterances_per_emotion}
        for option, value in {**integers, "seed": seed}.items():
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise SerbenchError(f"synth option {option} must be an integer, got {value!r}")
        if speakers < 10 or speakers % 2:
            raise SerbenchError(
                f"synth option speakers must be an even number >= 10, got {speakers}"
            )
        if utterances_per_emotion < 2:
            raise SerbenchError(
                f"synth option utterances_per_emotion must be >= 2, got {utterances_per_emotion}"
            )
        if seed < 0:
            raise SerbenchError(f"synth option seed must be >= 0, got {seed}")
        if not isinstance(null, bool):
            raise SerbenchError(f"synth option null must be true or false, got {null!r}")
        super().__init__(None)  # root is an output directory: it need not exist yet
        self.speakers = int(speakers)
        self.utterances_per_emotion = int(utterances_per_emotion)
        self.null = null
        self.seed = int(seed)
        default_root = serbench_cache_dir() / "synth" / self.key
        self.root = Path(root).expanduser() if root is not None else default_root

    @property
    def key(self) -> str:
        """Short hash of everything that determines the audio (the cache directory name)."""
        params = {"speakers": self.speakers, "utterances_per_emotion": self.utterances_per_emotion,
                  "null": self.null, "seed": self.seed, "version": GENERATOR_VERSION}
        return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]

    def _table(self) -> pd.DataFrame:
        voices = speaker_voices(self.speakers, null=self.null, seed=self.seed)
        table = self._relative_table(voices)
        self._materialise(table, voices)
        assert self.root is not None
        table = table.assign(path=[str(self.root / p) for p in table["path"]])
        if self.null:  # twins share a fold already; `pair` keeps them on one side of a split
            table["pair"] = [int(spk.removeprefix("synth")) // 2 for spk in table["speaker"]]
        return table

    def _relative_table(self, voices: list[tuple[str, Voice]]) -> pd.DataFrame:
        """The table with paths relative to the root (as stored in meta.csv)."""
        next_slot = dict.fromkeys(GENDERS, 0)
        rows = []
        for i, (gender, voice) in enumerate(voices):
            fold = next_slot[gender] % N_FOLDS + 1  # each gender dealt round-robin over the folds
            next_slot[gender] += 1
            for emotion in EMOTIONS_4:
                for k in range(self.utterances_per_emotion):
                    utt_id, path = self._names(i, emotion, k)
                    speaker, f0 = self._speaker_id(i), round(voice.f0, 2)
                    rows.append((utt_id, path, speaker, gender, emotion, fold, self.name, f0))
        return pd.DataFrame(rows, columns=[*COLUMNS, "f0_mean"])

    def _speaker_id(self, i: int) -> str:
        return f"synth{i:0{self._width}d}"

    def _names(self, i: int, emotion: str, k: int) -> tuple[str, str]:
        """Utterance id and root-relative path of speaker ``i``'s ``k``-th ``emotion`` utterance."""
        utt_id = f"{self._speaker_id(i)}_{emotion}_{k:02d}"
        return utt_id, f"spk{i:0{self._width}d}/{utt_id}.flac"

    @property
    def _width(self) -> int:
        return max(2, len(str(self.speakers - 1)))

    def _meta_text(self, table: pd.DataFrame) -> str:
        header = f"{_MAGIC} v{GENERATOR_VERSION} key={self.key}\n"
        return header + table.to_csv(index=False, float_format="%.2f", lineterminator="\n")

    def _complete(self, meta: str, table: pd.DataFrame) -> bool:
        """Whether the root already holds exactly this corpus (meta.csv matches, files exist)."""
        assert self.root is not None
        meta_path = self.root / META_FILE
        return (
            meta_path.is_file()
            and meta_path.read_text() == meta
            and all((self.root / p).is_file() for p in table["path"])
        )

    def _materialise(self, table: pd.DataFrame, voices: list[tuple[str, Voice]]) -> None:
        """Generate the corpus unless present: into a sibling temp dir, then one rename, so an
        interrupted run never leaves a half corpus and concurrent runs cannot mix files (a lock
        in the cache, keyed by the root, makes a second run wait for the first, not redo it)."""
        root = self.root
        assert root is not None
        meta = self._meta_text(table)
        if self._complete(meta, table):
            return
        try:  # a concurrent run generating the same corpus: wait for it instead
            key = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
            with cache_lock(f"synth-{key}"):
                if not self._complete(meta, table):
                    self._generate(root, meta, table, voices)
        except OSError as exc:
            reason = exc.strerror or exc
            raise SerbenchError(f"{root}: cannot write the synth corpus ({reason}); free space "
                                f"there, or give --data-root or SERBENCH_CACHE a writable "
                                f"directory") from None

    def _generate(self, root: Path, meta: str, table: pd.DataFrame,
                  voices: list[tuple[str, Voice]]) -> None:
        stale = root.exists() and (not root.is_dir() or any(root.iterdir()))
        if stale and not _is_synth_dir(root):
            raise SerbenchError(
                f"{root}: exists and is not a synth corpus; give an empty or new directory"
            )
        tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            tmp.mkdir(parents=True)
            self._write(tmp, voices)
            (tmp / META_FILE).write_text(meta)
            if stale:  # an older synth corpus with other parameters or missing files: swap it out
                old = root.parent / f".{root.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
                os.replace(root, old)
                os.replace(tmp, root)
                shutil.rmtree(old, ignore_errors=True)
            else:
                try:
                    os.replace(tmp, root)
                except OSError:
                    if not self._complete(meta, table):  # else a concurrent run just finished it
                        raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _write(self, directory: Path, voices: list[tuple[str, Voice]]) -> None:
        """Synthesise every utterance into ``directory`` as 16-bit FLAC, speakers in worker
        processes. Seeding per utterance makes the result order-independent."""
        jobs = [(directory, i, voice) for i, (_, voice) in enumerate(voices)]
        for _ in process_map(self._write_speaker_job, jobs):
            pass

    def _write_speaker_job(self, job: tuple[Path, int, Voice]) -> None:
        self._write_speaker(*job)

    def _write_speaker(self, directory: Path, i: int, voice: Voice) -> None:
        """All utterances of speaker ``i`` (a null twin's are its pair's: ``i // 2``'s)."""
        drawn = i // 2 if self.null else i
        for emotion in EMOTIONS_4:
            for k in range(self.utterances_per_emotion):
                audio = generate_utterance(voice, emotion,
                                           utterance_rng(self.seed, drawn, emotion, k))
                path = directory / self._names(i, emotion, k)[1]
                path.parent.mkdir(exist_ok=True)
                sf.write(str(path), audio, SAMPLE_RATE, subtype="PCM_16", format="FLAC")


def _is_synth_dir(path: Path) -> bool:
    """Whether ``path`` is a directory holding a synth corpus's meta.csv (safe to replace)."""
    meta = path / META_FILE
    if not path.is_dir() or not meta.is_file():
        return False
    with meta.open() as fh:
        return fh.readline().startswith(_MAGIC)
