"""What an output folder already holds for a study, read in one pass before a run or a dry run.

A resumed run needs two things from earlier runs in the folder: the base seed an earlier run drew for
``seed = -1`` (a new draw would mix two seeds in one grid) and the keys of the cells already done (the
plan says how many are left). Both come from one opening of ``run.sqlite``, so a folder whose store is
foreign, from a newer version or damaged is refused once, with the store's one-line message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from expressiongrid.store import DB_NAME, Store
from expressiongrid.study.plan import Plan
from expressiongrid.study.study import Study


@dataclass(frozen=True)
class ResumeState:
    """An output folder's earlier work: the random seed to reuse (None: draw one) and the done cells."""

    random_seed: int | None = None
    done_keys: frozenset[str] = frozenset()

    def done_in(self, plan: Plan) -> int:
        """How many of the plan's distinct images are already done."""
        return len(set(plan.unique_keys()) & self.done_keys)


def read_resume_state(out_dir: str | Path, study: Study) -> ResumeState:
    """What ``out_dir`` holds for ``study`` (nothing when it has no run store yet); ``StoreError`` for a
    store this version cannot use."""
    if not (Path(out_dir) / DB_NAME).is_file():
        return ResumeState()
    with Store.open_existing(out_dir) as store:
        return ResumeState(random_seed=_earlier_random_seed(store, study),
                           done_keys=frozenset(c.key for c in store.cells("done", all_runs=True)))


def _earlier_random_seed(store: Store, study: Study) -> int | None:
    """The base seed the latest earlier run of this study drew for ``seed = -1`` (None if there is none,
    or the study has a fixed seed)."""
    if study.sampling.seed != -1:
        return None
    for (study_json,) in store.connection.execute("SELECT study_json FROM runs ORDER BY id DESC"):
        info = json.loads(study_json)
        if info.get("name") == study.name and info.get("sampling", {}).get("seed") == -1:
            return info.get("base_seed")
    return None
