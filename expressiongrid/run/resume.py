"""What an output folder already holds for a study, read in one pass before a run or a dry run.

A resumed run needs three things from earlier runs in the folder: the base seed an earlier run drew for
``seed = -1`` (a new draw would mix two seeds in one grid), the seeds it drew for -1 values of a Seed axis
(new ones would make those columns again under new keys), and the keys of the cells already done (the
plan says how many are left). Both come from one opening of ``run.sqlite``, so a folder whose store is
foreign, from a newer version or damaged is refused once, with the store's one-line message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from expressiongrid.store import DB_NAME, Store
from expressiongrid.study.plan import Plan
from expressiongrid.study.study import Study


@dataclass(frozen=True)
class ResumeState:
    """An output folder's earlier work: the random seed to reuse (None: draw one) and the done cells."""

    random_seed: int | None = None
    done_keys: frozenset[str] = frozenset()
    axis_seeds: dict[str, dict[int, int]] = field(default_factory=dict)  # slot -> position -> seed drawn
    older_schema: tuple[str, ...] = ()  # parts of run.sqlite an older version wrote: the run will upgrade them

    def plan(self, study: Study) -> Plan:
        """The plan of ``study`` that continues the earlier run: its random seeds reused."""
        from expressiongrid.study.plan import plan

        return plan(study.with_drawn_seeds(self.axis_seeds), random_seed=self.random_seed)

    def done_in(self, plan: Plan) -> int:
        """How many of the plan's distinct images are already done."""
        return len(set(plan.unique_keys()) & self.done_keys)


def read_resume_state(out_dir: str | Path, study: Study) -> ResumeState:
    """What ``out_dir`` holds for ``study`` (nothing when it has no run store yet), read without writing
    anything there (a store an older version wrote is read as upgraded, and left as it is); ``StoreError``
    for a store this version cannot use."""
    if not (Path(out_dir) / DB_NAME).is_file():
        return ResumeState()
    with Store.open_read_only(out_dir) as store:  # a dry run reads it too: it must not change the folder
        return ResumeState(random_seed=_earlier_random_seed(store, study),
                           done_keys=frozenset(c.key for c in store.cells("done", all_runs=True)),
                           axis_seeds=_earlier_axis_seeds(store, study), older_schema=tuple(store.older_schema))


def resume_plan(out_dir: str | Path, study: Study) -> Plan:
    """``study``'s plan for ``out_dir``, reusing what an earlier run there drew at random."""
    return read_resume_state(out_dir, study).plan(study)


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


def _earlier_axis_seeds(store: Store, study: Study) -> dict[str, dict[int, int]]:
    """The seeds the latest earlier run of this study drew for -1 values of each Seed axis, by position
    (slot -> position -> seed): a position that was -1 then and is -1 now keeps its seed, however the rest
    of the axis text was edited (spaces, a value added at the end)."""
    wanted = study.drawn_axes()
    found: dict[str, dict[int, int]] = {}
    if not wanted:
        return found
    for (study_json,) in store.connection.execute("SELECT study_json FROM runs ORDER BY id DESC"):
        info = json.loads(study_json)
        if info.get("name") != study.name:
            continue
        for slot, axis in wanted.items():
            earlier = info.get(slot) or {}
            if slot in found or earlier.get("kind") != axis.kind:
                continue
            values = earlier.get("values") or []
            before = set(earlier.get("drawn") or [])
            reuse = {i: int(values[i]["value"]) for i in axis.drawn if i in before and i < len(values)}
            if reuse:
                found[slot] = reuse
        if len(found) == len(wanted):
            break
    return found
