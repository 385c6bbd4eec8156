"""The audio surface (released speech) and `mcadams`: the check-defense rule of the new hook,
released audio cached apart from the original, and the anonymisation changing the audio."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from serbench.attacks.asv import ASVAttack
from serbench.attacks.intercept import InterceptAttack
from serbench.defenses.mcadams import McAdams, mcadams
from serbench.defenses.none import NoDefense
from serbench.features.extractors import feature_spec
from serbench.features.release import Release
from serbench.features.store import extract
from serbench.registry import load_plugin
from serbench.runner import attack_modes
from serbench.testing import _test_audio, assert_defense_conforms, check_defense

SHORTER = '''
from dataclasses import dataclass
from typing import ClassVar
from serbench.plugins import Defense, Surface, Tags

@dataclass
class Shorter(Defense):
    name: ClassVar[str] = "shorter"
    summary: ClassVar[str] = "halves the audio (as a resampler to 8 kHz would)"
    tags: ClassVar[Tags] = Tags(surfaces={Surface.AUDIO})

    def transform_audio(self, wave, sample_rate, *, generator):
        return wave[::2]
'''


def centroid(wave: np.ndarray, sample_rate: int = 16_000) -> float:
    """The power-weighted mean frequency of the whole signal (Hz)."""
    power = np.abs(np.fft.rfft(wave)) ** 2
    return float((np.fft.rfftfreq(len(wave), 1 / sample_rate) * power).sum() / power.sum())


def test_mcadams_conforms_and_is_listed() -> None:
    assert_defense_conforms(McAdams)
    assert load_plugin("defense", "mcadams") is McAdams


def test_audio_of_another_length_fails_the_check_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "shorter.py").write_text(SHORTER)
    failed = {c.name: c.reason for c in
              check_defense(load_plugin("defense", f"{tmp_path / 'shorter.py'}:Shorter"))
              if not c.passed}
    assert set(failed) == {"transform_audio keeps the length and sample rate"}
    assert "\n" not in failed["transform_audio keeps the length and sample rate"]


def test_alpha_one_keeps_the_audio_and_lower_alpha_moves_the_spectrum() -> None:
    wave = _test_audio()
    same = mcadams(wave, 16_000, 1.0)
    assert np.abs(same - wave)[400:-400].max() < 0.01 * np.abs(wave).max()
    moved = mcadams(wave, 16_000, 0.6)
    assert moved.shape == wave.shape and np.isfinite(moved).all()
    assert abs(centroid(moved) - centroid(wave)) > 50


def test_the_default_draws_alpha_per_utterance_from_its_generator() -> None:
    import torch

    defense, wave = McAdams(), _test_audio()
    a, b, c = (defense.transform_audio(wave, 16_000, generator=torch.Generator().manual_seed(s))
               for s in (1, 1, 2))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    fixed = McAdams(alpha=0.8)
    assert np.array_equal(fixed.transform_audio(wave, 16_000, generator=torch.Generator()),
                          mcadams(wave, 16_000, 0.8))


def test_released_features_are_cached_apart_and_by_the_release(tmp_path: Path) -> None:
    paths = []
    for i in range(3):
        path = tmp_path / f"u{i}.wav"
        sf.write(path, np.roll(_test_audio(), 100 * i)[:8000], 16_000)
        paths.append(str(path))
    spec, cache = feature_spec("logmel"), tmp_path / "cache"
    original = extract(paths, spec, cache_dir=cache)
    release = Release(McAdams(), seed=5)
    released = extract(paths, spec, cache_dir=cache, release=release)
    again = extract(paths, spec, cache_dir=cache, release=Release(McAdams(), seed=5))
    other = extract(paths, spec, cache_dir=cache, release=Release(McAdams(), seed=6))
    assert all(not np.array_equal(o, r) for o, r in zip(original, released))
    assert all(np.array_equal(r, a) for r, a in zip(released, again))
    assert any(not np.array_equal(r, o) for r, o in zip(released, other))
    assert release.key.startswith("mcadams-") and release.key.endswith("-seed5")
    assert Release(McAdams(alpha=0.7), 5).key != Release(McAdams(alpha=0.8), 5).key
    assert len(list((cache / "features" / spec.key / release.key).glob("*.npy"))) == 3


def test_an_audio_defense_is_attacked_in_both_modes_on_every_surface() -> None:
    assert attack_modes(InterceptAttack(), McAdams()) == ["non-adaptive", "adaptive"]
    assert attack_modes(ASVAttack(), McAdams()) == ["non-adaptive", "adaptive"]
    assert attack_modes(InterceptAttack(), NoDefense()) == ["non-adaptive"]
