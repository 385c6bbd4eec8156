"""Tracks: a corpus and a threat surface, with the surface's whole attack suite and the role
of the measures whose worst case over that suite heads the board (each measure's role is what
its run recorded: :func:`serbench.leaderboard.entry.measure_roles`)."""

from __future__ import annotations

from dataclasses import dataclass

from serbench.errors import SerbenchError, unknown_name
from serbench.scoring import Role


@dataclass(frozen=True)
class Track:
    """One threat surface's attack suite and worst-case rule (a track adds the corpus)."""

    surface: str
    attacks: tuple[str, ...]
    #: The role of the measures that score the defense: their worst case is the headline, in
    #: the direction the role declares.
    role: Role
    #: Column heading of the worst case.
    label: str
    #: Attack parameters that change what a run writes or how fast, never its numbers.
    neutral: frozenset[str] = frozenset()
    #: Another role whose worst measure the board shows beside the headline (e.g. the
    #: speaker EER from the intercepted layer beside gender leakage), if any.
    beside: Role | None = None
    #: Column heading of :attr:`beside`.
    beside_label: str = ""

    @property
    def higher_is_worse(self) -> bool:
        return self.role.higher_is_worse

    def worse(self, a: float, b: float) -> bool:
        """Whether ``a`` is a worse outcome for the defense than ``b``."""
        return a > b if self.higher_is_worse else a < b


TRACKS = {
    "update": Track("update", ("fedsgd", "fedavg"), Role.LEAKAGE, "worst-case leakage"),
    "representation": Track("representation", ("intercept",), Role.LEAKAGE,
                            "worst-case leakage",
                            frozenset({"workers", "analyses", "analysis_scenarios"}),
                            beside=Role.LINKABILITY, beside_label="worst speaker EER"),
    # A randomised defense scored by an attack that ignores its randomness is "unscored/...".
    # AutoAttack (ART) is RobustBench's standard; its worst case can only lower eot-pgd's.
    "input": Track("input", ("fgsm", "pgd", "eot-pgd", "autoattack"), Role.ROBUST,
                   "worst-case robust UAR"),
    # Released speech (SPEC surface 4): the headline is the lowest speaker-verification EER
    # over asv's attacker levels and modes; gender@released and both emotion UARs are beside it.
    "release": Track("release", ("asv",), Role.LINKABILITY, "worst-case EER"),
}


def track_of(attacks: set[str]) -> Track:
    """The track whose suite contains these attacks."""
    for track in TRACKS.values():
        if attacks <= set(track.attacks):
            return track
    raise SerbenchError(f"attacks {', '.join(sorted(attacks))} are not one track's suite; "
                        + "; ".join(f"{t.surface}: {', '.join(t.attacks)}"
                                    for t in TRACKS.values()))


def parse_track(text: str) -> tuple[str, str]:
    """``corpus/surface`` (as ``--track`` takes it) as a pair."""
    corpus, sep, surface = text.partition("/")
    if not sep or not corpus:
        raise SerbenchError(f"--track {text!r}: expected CORPUS/SURFACE, e.g. synth/update")
    if surface not in TRACKS:
        raise unknown_name("surface", surface, TRACKS)
    return corpus, surface
