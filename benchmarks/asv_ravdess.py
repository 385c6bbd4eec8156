"""Speaker linkability of untransformed RAVDESS speech (docs/linkability.md): resemblyzer
embeddings of ``--clips`` seeded clips per actor, EER with its speaker-bootstrap CI over
same-gender trials (and over all pairs, for comparison), by cosine and by cosine after an LDA
backend trained on the other half of the actors. Prints the cold embedding throughput.

    python benchmarks/asv_ravdess.py --data-root ../shared/data/ravdess
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from serbench import linkability as L
from serbench.corpora.ravdess import Ravdess
from serbench.features.speaker import embed_files, load_encoder
from serbench.seeds import stable_seed

#: Actors 01-12 and 13-24: each half holds six female and six male actors.
HALVES = ([f"{a:02d}" for a in range(1, 13)], [f"{a:02d}" for a in range(13, 25)])


def clips(root: str, per_actor: int, seed: int) -> pd.DataFrame:
    """``per_actor`` clips of each actor, drawn seeded from all eight emotions."""
    table = Ravdess(root, classes=8).load()
    picks = [group.sample(per_actor, random_state=stable_seed(seed, "asv-clips", actor))
             for actor, group in table.groupby("speaker")]
    return pd.concat(picks).sort_values("utt_id").reset_index(drop=True)


def row(name: str, table: pd.DataFrame, embeddings: dict[str, np.ndarray], seed: int,
        backend: L.Backend | None = None) -> None:
    roles = L.assign_roles(table, seed=seed)
    trials = L.make_trials(roles)
    result = L.linkability(trials, L.score_trials(roles, trials, embeddings, backend=backend),
                           seed=seed)
    print(f"{name:44s} {result.eer:6.3f}  {result.ci[0]:.3f}-{result.ci[1]:.3f}"
          f"  {result.speakers:3d} {result.targets:5d} {result.non_targets:6d}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--clips", type=int, default=10, help="clips per actor (10 by default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    table = clips(args.data_root, args.clips, args.seed)
    audio = sum(sf.info(p).duration for p in table["path"])
    load_encoder()  # its one-off start (imports, weights) is not throughput
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        matrix = embed_files(list(table["path"]), cache_dir=Path(cache))
        seconds = time.perf_counter() - start
    print(f"{len(table)} clips, {audio:.0f} s of audio embedded in {seconds:.1f} s "
          f"({audio / seconds:.0f}x real time, one thread)\n")
    embeddings = dict(zip(table["utt_id"], matrix))
    print(f"{'trials':44s} {'EER':>6s}  95% CI       spk   tgt    non")
    row("cosine, same gender, 24 actors", table, embeddings, args.seed)
    row("cosine, all pairs, 24 actors", table.assign(gender="F"), embeddings, args.seed)
    for target, shadow in (HALVES, HALVES[::-1]):
        half, other = table[table["speaker"].isin(target)], table[table["speaker"].isin(shadow)]
        lda = L.fit_lda(np.stack([embeddings[u] for u in other["utt_id"]]),
                        other["speaker"].to_numpy())
        name = f"actors {target[0]}-{target[-1]}, same gender"
        row(f"{name}: cosine", half, embeddings, args.seed)
        row(f"{name}: LDA on {shadow[0]}-{shadow[-1]}", half, embeddings, args.seed, lda)


if __name__ == "__main__":
    main()
