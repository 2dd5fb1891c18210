"""The runner: make the cells of a plan that the run store does not have yet, then compose the grids.

Order of work (the expensive things happen least often):

1. models outermost (a Checkpoint or Clip skip axis reloads weights), then characters: each character is
   activated once for its whole column (LoRA written into the weights, embeddings registered);
2. the rows of a column go through ``engine.generate`` together, in batches, one UNet call per step;
   prompt texts are encoded once per model and text-encoder state (an ``EncodingCache``): again for a
   column only when its LoRA changed the text encoder or its prompts use its embedding's vectors;
3. each finished image is handed to a writer thread (``run.cellwriter``) that encodes it, writes it
   atomically (temp file, fsync, rename) and only then marks it done in SQLite, while the next batch
   denoises; a cell counts as done (progress, summary) only once the writer has committed it, so a crash
   or SIGKILL at any moment leaves nothing that counts as done without a complete file;
4. grids are composed from the cell files (``output.run_grids.compose_grids(run_dir)``, also callable on
   its own), with failed cells drawn as marked placeholders so the grid still shows where they belong.

Faults are isolated: a character whose files cannot be loaded fails its own column, a batch that raises
fails its cells; the failures are recorded (store rows with the error, ``RunSummary.failures``) and the
run goes on. The library returns data; ``cli/run.py`` prints it.

Hooks for splitting a run: ``columns=`` (a set of column indices) makes only those columns, e.g. one
accelerate process' share; ``compose=False`` skips the grids so the last process can compose them.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from expressiongrid.errors import ExpressionGridError
from expressiongrid.study.plan import Plan, PlannedCell
from expressiongrid.output.metadata import CellMetadata
from expressiongrid.output.run_grids import compose_grids
from expressiongrid.samplers import get_sampler
from expressiongrid.store import CellRecord, Store
from expressiongrid.study.study import Study

# progress(done, total, note): images finished so far in this run, images to make, what is happening
Progress = Callable[[int, int, "str | None"], None]


@dataclass
class CellFailure:
    key: str
    page: int
    row_label: str
    col_label: str
    error: str


@dataclass
class RunSummary:
    """What a run did. ``exit_code`` is 0 when every cell of the plan is done, 1 otherwise."""

    run_dir: Path
    run_id: int
    planned: int  # distinct images in this run's share of the plan
    made: int
    skipped: int  # already done by an earlier run
    failed: int
    seconds: float
    failures: list[CellFailure] = field(default_factory=list)
    grids: list[Path] = field(default_factory=list)
    upload_copies: list[Path] = field(default_factory=list)
    repaired: dict = field(default_factory=dict)  # what Store.reconcile fixed before the run
    description: dict = field(default_factory=dict)  # Plan.describe()

    @property
    def status(self) -> str:
        return "done" if self.failed == 0 else "incomplete"

    @property
    def exit_code(self) -> int:
        return 0 if self.failed == 0 else 1

    @property
    def images_per_second(self) -> float:
        return self.made / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data.update(status=self.status, exit_code=self.exit_code, run_dir=str(self.run_dir),
                    grids=[str(g) for g in self.grids], upload_copies=[str(p) for p in self.upload_copies])
        return data


# ----------------------------------------------------------------------------------------------------


def _record(cell: PlannedCell) -> CellRecord:
    s = cell.spec
    return CellRecord(
        key=cell.key, run_id=None, page=cell.page, row_index=cell.row_index, col_index=cell.col_index,
        row_id=cell.row.id, row_label=cell.row.label, col_id=cell.col.id, col_label=cell.col.label,
        character_id=cell.character_id, prompt=s.prompt, negative_prompt=s.negative_prompt, seed=s.seed,
        steps=s.steps, sampler=s.sampler, cfg_scale=s.cfg_scale, width=s.width, height=s.height,
        page_label=cell.page_value.label if cell.page_value is not None else "",
        spec={**cell.key_inputs, "sample": cell.sample},
    )


def run_info(p: Plan) -> dict:
    """The study as stored with the run, plus the layout (grid position → cell key) ``compose_grids`` reads."""
    info = p.study.info()
    info["base_seed"] = p.base_seed
    info["loop_order"] = list(p.loop_order)
    info["layout"] = [[c.page, c.row_index, c.col_index, c.sample, c.key] for c in p.cells]
    info["description"] = p.describe()
    return info


def run_study(
    study: Study,
    out_dir: str | Path,
    progress: Progress | None = None,
    *,
    plan: Plan | None = None,
    batch_size: int | None = None,
    columns: Iterable[int] | None = None,
    compose: bool = True,
    argv: list[str] | None = None,
    repair: bool = True,
    on_ready: Callable[[], None] | None = None,
    store: Store | None = None,
) -> RunSummary:
    """Make every cell of ``study`` that ``out_dir`` does not hold yet; compose the grids; return a summary.

    ``plan`` reuses a plan already shown to the user (so a random seed is not drawn twice); ``columns``
    restricts the work to those column indices; ``batch_size`` caps images per UNet batch.
    ``repair=False`` skips ``Store.reconcile`` (under accelerate only the main process repairs, before the
    others start writing); ``on_ready`` is called once the plan is registered, before any cell is made.
    ``store`` is the run folder's store when the caller has it open already (it is then left open).
    """
    from expressiongrid.engine.precision import resolve_study
    from expressiongrid.run.resume import resume_plan

    started = time.monotonic()
    if plan is None:
        study = resolve_study(study)  # dtype "auto" becomes fp16/fp32 before it goes into the cell keys
        plan = resume_plan(out_dir, study)  # what an earlier run there drew at random, reused
    p = plan
    check_devices(p)
    own = store is None
    store = Store(out_dir) if own else store
    try:
        repaired = store.reconcile() if repair else {}
        unique: dict[str, PlannedCell] = {}
        for cell in p.cells:
            unique.setdefault(cell.key, cell)
        run_id = store.begin_run(run_info(p), [_record(c) for c in unique.values()],
                                 study_path=str(study.path) if study.path else None, argv=argv)
        if on_ready is not None:
            on_ready()
        wanted = set(columns) if columns is not None else None
        share = [c for c in unique.values() if wanted is None or c.col_index in wanted]
        done = {c.key for c in store.cells("done")}
        todo = [c for c in share if c.key not in done]
        summary = RunSummary(run_dir=Path(out_dir), run_id=run_id, planned=len(share), made=0,
                             skipped=len(share) - len(todo), failed=0, seconds=0.0, repaired=repaired,
                             description=p.describe())
        status = "failed"
        try:
            if todo:
                _Maker(store, run_id, summary, progress, len(todo), batch_size or study.sampling.batch_size).make(todo)
            status = summary.status
        except KeyboardInterrupt:
            status = "interrupted"  # finished cells are kept; the same command resumes
            raise
        finally:
            summary.seconds = time.monotonic() - started
            try:
                if status in ("done", "incomplete") and compose:
                    summary.grids, summary.upload_copies = compose_grids(out_dir, store=store)
            except BaseException:
                status = "failed"  # the cells are kept; never leave the run "running"
                raise
            finally:
                summary.seconds = time.monotonic() - started
                store.finish_run(run_id, status, summary.to_dict())
        return summary
    finally:
        if own:
            store.close()


def check_devices(p: Plan) -> None:
    """Refuse what this machine cannot make as asked (GPU noise without a GPU) before any model loads."""
    wanted = {(c.spec.model.device, c.spec.noise_source) for c in p.cells if c.spec.noise_source != "cpu"}
    if not wanted:
        return  # torch is not imported for a plain dry run
    from expressiongrid.engine.loading import pick_device
    from expressiongrid.engine.noise import check_noise_source

    for device, noise_source in sorted(wanted, key=str):
        check_noise_source(noise_source, pick_device(device))


# ----------------------------------------------------------------------------------------------------
# Generation


def _groups(cells: list[PlannedCell]) -> list[list[PlannedCell]]:
    """Cells grouped by model and character activation, groups in order of first appearance in the plan."""
    order: dict[tuple, list[PlannedCell]] = {}
    for cell in cells:
        order.setdefault(cell.activation_group(), []).append(cell)
    return list(order.values())


def _keeps_base_weights(group: list[PlannedCell]) -> bool:
    """A column that runs on the base UNet and text encoder: the reference, text-only and embedding-only
    characters (no LoRA), with no known problem."""
    first = group[0]
    character = first.spec.networks  # what the cells switch on: the column's files and the prompt's tags
    return not first.col.info.get("problems") and (character is None or not character.loras)


def _batch_units(groups: list[list[PlannedCell]]) -> list[list[list[PlannedCell]]]:
    """The columns of one model in the units they are generated in.

    Columns that keep the base weights share one unit (their rows are batched together, first); a
    column whose embedding token appears in another such column's prompts stays alone, since all tokens
    of a unit are registered at once. Every LoRA column is a unit of its own.
    """
    shared: list[list[PlannedCell]] = []
    alone: list[list[list[PlannedCell]]] = []
    for group in groups:
        if _keeps_base_weights(group) and all(_compatible(group, other) for other in shared):
            shared.append(group)
        else:
            alone.append([group])
    return ([shared] if shared else []) + alone


def _compatible(a: list[PlannedCell], b: list[PlannedCell]) -> bool:
    def tokens(group):
        ch = group[0].spec.networks
        return {e.token.lower() for e in ch.embeddings} if ch is not None else set()

    def prompts(group):
        return " ".join(f"{c.spec.prompt} {c.spec.negative_prompt}" for c in group).lower()

    ta, tb = tokens(a), tokens(b)
    return not (ta & tb) and not any(t in prompts(b) for t in ta) and not any(t in prompts(a) for t in tb)


class _Maker:
    """Makes the cells of one run. Holds what every step shares: the run folder's open store, the run's id,
    its summary, the progress callback and the count of cells finished so far."""

    def __init__(self, store: Store, run_id: int, summary: RunSummary, progress: Progress | None, total: int,
                 batch_size: int | None):
        self.store, self.run_id, self.summary = store, run_id, summary
        self.progress, self.total, self.batch_size = progress, total, batch_size
        self.done = 0  # cells finished: written and committed by the writer thread, or failed
        self.writer = None  # run.cellwriter.CellWriter while make() runs
        self.text_cache = None  # prompts.conditioning.EncodingCache of the model being used
        self.submitted: set[str] = set()  # keys handed to the writer

    def report(self, note: str | None, extra: int = 0) -> None:
        if self.progress is not None:
            self.progress(self.done + extra, self.total, note)

    def fail(self, cells: list[PlannedCell], error: str) -> None:
        for cell in cells:
            self.store.mark_failed(cell.key, error, run_id=self.run_id)
            self.summary.failures.append(CellFailure(cell.key, cell.page, cell.row.label, cell.col.label, error))
        self.summary.failed += len(cells)

    def collect(self, written) -> None:
        """Count the cells the writer thread has finished: only now are they reported done. A full disk
        stops the run (the next run resumes), as it does when the runner writes itself."""
        full = None
        for w in written:
            if w.error is None:
                self.summary.made += 1
            else:
                self.fail([w.tag], w.error)
                if isinstance(w.exc, OSError) and w.exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    full = full or w.exc
            self.done += 1
        if full is not None:
            raise full

    def make(self, todo: list[PlannedCell]) -> None:
        """Models outermost, then one character activation per column (or one for all columns on the base
        weights), then batches; finished images go to a `CellWriter` thread."""
        from expressiongrid.run.cellwriter import CellWriter

        self.writer = CellWriter(self.store.run_dir, self.run_id)
        try:
            self._make(todo)
        finally:
            # Every image generated so far is written before the run ends (also on Ctrl-C).
            written = self.writer.close()
            self.collect(written)
            self.report(None)

    def _make(self, todo: list[PlannedCell]) -> None:
        from expressiongrid.engine import load_model
        from expressiongrid.engine.compiled import should_compile
        from expressiongrid.engine.loading import pick_device

        by_model: dict[tuple, list[list[PlannedCell]]] = {}
        for group in _groups(todo):
            by_model.setdefault(group[0].activation_group()[0], []).append(group)
        for model_groups in by_model.values():
            first = model_groups[0][0]
            self.report(f"loading model {first.spec.model.source}")
            spec = first.spec.model
            if spec.compile == "auto":  # compile only when this run is long enough to earn the compile time
                images = sum(len(g) for g in model_groups)
                spec = dataclasses.replace(spec, compile="on" if should_compile("auto", pick_device(spec.device),
                                                                                 images) else "off")
            try:
                model = load_model(spec)
                logging.getLogger("expressiongrid.run").info(model.describe())
            except ExpressionGridError as exc:
                for group in model_groups:
                    self.fail(group, f"model {first.spec.model.source}: {exc}")
                    self.done += len(group)
                self.report(None)
                continue
            from expressiongrid.prompts.conditioning import EncodingCache

            self.text_cache = EncodingCache()
            activator = None
            if any(g[0].spec.networks is not None for g in model_groups):
                from expressiongrid.characters import CharacterActivator

                activator = CharacterActivator(model)
            for unit in _batch_units(model_groups):
                if len(unit) == 1:
                    self.column(model, activator, unit[0])
                else:
                    self.shared(model, activator, unit)
            del model, activator
            self.text_cache = None

    def shared(self, model, activator, groups: list[list[PlannedCell]]) -> None:
        """Columns on the base weights in shared batches: their embeddings registered together, one UNet
        batch for rows of several columns. A fault falls back to column by column (faults stay isolated)."""
        import contextlib

        from expressiongrid.engine import batch_size_for

        characters = [g[0].spec.networks for g in groups]
        present = [ch for ch in characters if ch is not None]
        cells = [c for g in groups for c in g]
        label = " + ".join(g[0].col.label for g in groups)
        try:
            if present:
                activator.prepare(present)
                context = activator.activate_together(present)
            else:
                context = contextlib.nullcontext((None, []))
            with context as (shared, per_character):
                own = iter(per_character)
                column_active = [next(own) if ch is not None else None for ch in characters]
                active_of = {c.key: a for g, a in zip(groups, column_active) for c in g}
                encoder = self.encoder(model, shared)
                chunk = batch_size_for(model, cells[0].spec.width, cells[0].spec.height, self.batch_size)
                for start in range(0, len(cells), chunk):
                    self.batch(model, encoder, shared, cells[start:start + chunk], label, active_of=active_of)
        except Exception as exc:  # noqa: BLE001 - retried column by column below, where faults are isolated
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise
            logging.getLogger("expressiongrid.run").warning(
                "columns %s: shared batches failed (%s: %s); making them one by one", label, type(exc).__name__, exc)
            for g in groups:
                left = [c for c in g if c.key not in self.submitted and self.store.cell(c.key).status == "pending"]
                if left:
                    self.column(model, activator, left)

    def column(self, model, activator, cells: list[PlannedCell]) -> None:
        """Generate one character's cells (one activation), saving each batch as soon as it is done."""
        import contextlib

        from expressiongrid.engine import batch_size_for

        first = cells[0]
        character = first.spec.networks  # the column's files and the prompt's tags, weights as used
        label = first.col.label
        known = first.col.info.get("problems")
        if known:
            # Found by validation before the run: fail the column without touching the model.
            self.fail(cells, f"character {label!r}: {'; '.join(known)}")
            self.done += len(cells)
            self.report(None)
            return
        try:
            if character is not None:
                activator.prepare([character])
                context = activator.activate(character)
            else:
                context = contextlib.nullcontext(None)
            with context as active:
                encoder = self.encoder(model, active)
                chunk = batch_size_for(model, first.spec.width, first.spec.height, self.batch_size)
                for start in range(0, len(cells), chunk):
                    self.batch(model, encoder, active, cells[start:start + chunk], label)
        except Exception as exc:  # noqa: BLE001 - one column's fault must not end an overnight run
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise  # a full disk is no column's fault: stop with one line; the next run resumes
            # The character, its activation or the engine failed on this column: fail what is left of it,
            # record why, keep going. Unexpected errors keep their type so a bug report can name them.
            why = str(exc) if isinstance(exc, ExpressionGridError) else f"{type(exc).__name__}: {exc}"
            left = [c for c in cells if c.key not in self.submitted and self.store.cell(c.key).status == "pending"]
            self.fail(left, f"character {label!r}: {why}" if first.spec.character is not None else why)
            self.done += len(left)
            self.report(None)

    def encoder(self, model, active):
        """The prompt encoder while `active` (an ActiveCharacter, or None for the base model) is active:
        its embeddings registered, its rows cached under the text encoder's state."""
        from expressiongrid.engine import prompt_encoder

        weights, embeddings = active.text_state() if active is not None else (None, None)
        return prompt_encoder(model, active.embeddings if active is not None else None,
                              cache=self.text_cache.scope(weights, embeddings))

    def batch(self, model, encoder, active, batch: list[PlannedCell], label: str,
              active_of: dict | None = None) -> None:
        """Generate one batch with `encoder` (``self.encoder``); `active` is the ActiveCharacter (or None)
        for the cells' metadata, `active_of` (cell key -> ActiveCharacter) each cell's own character when
        columns share the batch."""
        from expressiongrid.engine import ImageRequest, generate

        requests = [ImageRequest(prompt=c.spec.prompt, negative_prompt=c.spec.negative_prompt, seed=c.spec.seed,
                                 steps=c.spec.steps, cfg_scale=c.spec.cfg_scale, width=c.spec.width,
                                 height=c.spec.height, sampler=_sampler_name(c), noise_source=c.spec.noise_source)
                    for c in batch]
        self.report(label)
        try:
            results = generate(model, requests, batch_size=len(requests), encoder=encoder)
        except ExpressionGridError as exc:
            self.fail(batch, str(exc))
            self.done += len(batch)
            return
        for cell, result in zip(batch, results):
            if not result.ok or result.image is None:
                self.fail([cell], result.error or "generation failed")
                self.done += 1
                continue
            # PNG, metadata, fsync and commit happen on the writer thread while the next batch denoises.
            metadata = cell_metadata(cell, model, active_of[cell.key] if active_of is not None else active)
            self.writer.submit(cell.key, result.image, metadata.parameters(), result.seconds, tag=cell,
                               metadata=metadata.to_dict())
            self.submitted.add(cell.key)
        self.collect(self.writer.finished())
        self.report(label)


def _sampler_name(cell: PlannedCell) -> str:
    if not cell.spec.schedule_type:
        return cell.spec.sampler
    return get_sampler(cell.spec.sampler, cell.spec.schedule_type).name


def cell_metadata(cell: PlannedCell, model, active) -> CellMetadata:
    """One cell's metadata as data: settings, model, the character's resources and civitai's hashes.

    Embeddings are named as A1111 names them (file stems, also in the prompts); the checkpoint is a civitai
    resource when Civitai Helper's ``NAME.civitai.info`` beside it gives its model-version id.
    """
    from expressiongrid.characters.sidecars import read_sidecars
    from expressiongrid.study.networks import a1111_text

    s = cell.spec
    info = get_sampler(s.sampler, s.schedule_type)
    resources = [dict(r) for r in (active.resources if active is not None else [])]
    hashes: dict[str, str] = {}
    if model.hash:
        hashes["model"] = model.hash
    if model.vae_hash:
        hashes["vae"] = model.vae_hash
    civitai = []
    checkpoint = Path(s.model.source)
    version = read_sidecars(checkpoint).civitai_version_id if checkpoint.is_file() else None
    if version is not None:
        civitai.append({"type": "checkpoint", "modelVersionId": version})
    for r in resources:
        if r.get("hash"):
            hashes[f"{r['type']}:{r['name']}"] = r["hash"]
        if r.get("modelVersionId") is not None:
            civitai.append({"type": r["type"], "weight": r.get("weight", 1.0), "modelVersionId": r["modelVersionId"]})
    embeddings = active.character.embeddings if active is not None else []
    return CellMetadata(
        a1111_text(s.prompt, embeddings), a1111_text(s.negative_prompt, embeddings), steps=s.steps,
        sampler=info.sampler,
        schedule_type=info.schedule_type,  # A1111 1.9+ always writes it ("Automatic" when the sampler has no default)
        cfg_scale=s.cfg_scale, seed=s.seed, width=s.width, height=s.height, model_hash=model.hash,
        model=model.name, vae_hash=model.vae_hash, vae=model.vae_name, clip_skip=s.model.clip_skip,
        rng="CPU" if s.noise_source == "cpu" else None,
        lora_hashes=dict(active.lora_hashes) if active is not None and active.lora_hashes else {},
        ti_hashes=dict(active.ti_hashes) if active is not None and active.ti_hashes else {},
        hashes=hashes, civitai_resources=civitai, resources=resources,
    )
