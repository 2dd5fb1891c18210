"""Ad-hoc grids from flags, the way A1111's X/Y/Z plot builds them (``expressiongrid xyz``).

``--x "Steps: 10,20" --y "CFG Scale: 5,7"`` becomes a study whose columns are X, rows are Y and pages
are Z, so the planner, runner and store treat it like any study file: same cell order, seeds, Prompt
S/R semantics, keys and resume.
"""

from __future__ import annotations

from pathlib import Path

from expressiongrid.errors import StudyError, UsageError

AXIS_SLOTS = (("x", "columns"), ("y", "rows"), ("z", "pages"))


def split_axis_flag(text: str, flag: str = "--x") -> tuple[str, str]:
    """``"Steps: 10,20"`` → ``("Steps", "10,20")``. The axis name ends at the first colon."""
    name, sep, values = text.partition(":")
    if not sep or not name.strip():
        raise UsageError(f"{flag} {text!r}: expected \"AXIS: VALUES\", e.g. {flag} \"Steps: 10,20\" "
                         "or {flag} \"Prompt S/R: cat, dog\"".replace("{flag}", flag))
    return name.strip(), values.strip()


def xyz_study_dict(
    *,
    x: tuple[str, str] | None = None,
    y: tuple[str, str] | None = None,
    z: tuple[str, str] | None = None,
    prompt: str,
    negative_prompt: str = "",
    reference: str = "",
    seed: int = -1,
    steps: int = 20,
    cfg_scale: float = 7.0,
    sampler: str | None = None,
    schedule_type: str | None = None,
    width: int = 512,
    height: int = 512,
    model: str = "tiny",
    vae: str | None = None,
    clip_skip: int = 1,
    dtype: str | None = None,
    vary_seeds: tuple[bool, bool, bool] = (False, False, False),
    seeds_per_cell: int = 1,
    margin: int = 0,
    title: str | None = None,
) -> dict:
    """The study (as a dict for ``study_from_dict``) that an X/Y/Z plot with these settings describes.

    `sampler` and `dtype` left as ``None`` take the user configuration's ``[defaults]``."""
    if x is None and y is None and z is None:
        raise UsageError("give at least one axis, e.g. --x \"Steps: 10,20\"")
    vary = [slot for (_, slot), on in zip(AXIS_SLOTS, vary_seeds) if on]
    policy = "vary" if vary else ("per-cell" if seeds_per_cell > 1 else "fixed")
    data = {
        "name": title or "xyz",
        "model": {"source": model, "clip_skip": clip_skip, **({"dtype": dtype} if dtype else {}),
                  **({"vae": vae} if vae else {})},
        "sampling": {**({"sampler": sampler} if sampler else {}),
                     **({"schedule_type": schedule_type} if schedule_type else {}), "steps": steps, "cfg_scale": cfg_scale, "width": width, "height": height,
                     "seed": seed, "seed_policy": policy, "seeds_per_cell": seeds_per_cell,
                     **({"vary": vary} if vary else {})},
        "prompt": {"positive": prompt, "negative": negative_prompt, "reference": reference},
        "output": {"margin": margin, **({"title": title} if title else {})},
    }
    if seeds_per_cell > 1 and vary:
        raise UsageError("--vary-seeds and --seeds-per-cell cannot be combined; pick one seed policy")
    for (slot, key), axis in zip(AXIS_SLOTS, (x, y, z)):
        if axis is None:
            if key != "pages":
                data[key] = {"axis": "Nothing"}
            continue
        name, values = axis
        data[key] = {"axis": name, "values": values}
    return data


def xyz_study(base_dir: str | Path = ".", check_files: bool = True, **kwargs):
    """Build and validate the ``Study`` of an X/Y/Z plot (see ``xyz_study_dict`` for the settings)."""
    from expressiongrid.study.study import study_from_dict

    data = xyz_study_dict(**kwargs)
    try:
        return study_from_dict(data, base_dir=base_dir, source="xyz", check_files=check_files)
    except StudyError as exc:
        # The flags, not a file, are at fault: name them the way the user typed them.
        problems = [p.replace("xyz: columns.", "--x ").replace("xyz: rows.", "--y ").replace("xyz: pages.", "--z ")
                    .replace("xyz: ", "") for p in exc.problems]
        raise StudyError(f"the X/Y/Z plot has {len(problems)} problem{'s' if len(problems) != 1 else ''}",
                         problems) from None

