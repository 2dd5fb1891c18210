"""The run log: timestamps, versions, the resolved study, every warning and failure; appended on resume."""

from __future__ import annotations

import json
import logging
import re
import warnings

from expressiongrid.run.runlog import LOG_NAME, environment_versions, open_run_log

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ")


def test_header_has_versions_and_resolved_study(tmp_path):
    study = {"name": "night1", "columns": ["reference", "alice"], "rows": ["neutral", "smiling"], "seed": 7}
    with open_run_log(tmp_path) as log:
        log.header(study=study, argv=["expressiongrid", "run", "night1.toml"])
    lines = (tmp_path / LOG_NAME).read_text().splitlines()
    assert lines and all(TIMESTAMP.match(line) for line in lines)
    text = "\n".join(lines)
    for key in ("torch", "diffusers", "transformers", "cuda", "gpu"):
        assert f"version {key}: " in text
    assert "run started: expressiongrid run night1.toml" in text
    (study_line,) = [line for line in lines if "resolved study: " in line]
    assert json.loads(study_line.split("resolved study: ", 1)[1]) == study


def test_versions_name_cpu_when_there_is_no_gpu():
    import torch

    info = environment_versions()
    assert info["torch"] == torch.__version__.split("+")[0] or info["torch"] == torch.__version__
    if not torch.cuda.is_available():
        assert "CPU" in info["gpu"]


def test_warnings_and_failures_from_everywhere_land_in_the_file(tmp_path):
    with open_run_log(tmp_path, process="2/2") as log:
        logging.getLogger("expressiongrid.run.runner").warning("column alice: LoRA alpha differs per module")
        logging.getLogger("diffusers.loaders").warning("No LoRA keys associated to CLIPTextModel found")
        logging.getLogger("diffusers.loaders").info("chatty info that does not belong in the log")
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("`foo` is deprecated", FutureWarning)
        log.failure("cell smiling/alice failed: NaN image after fp32 retry")
    text = (tmp_path / LOG_NAME).read_text()
    assert "LoRA alpha differs per module" in text
    assert "No LoRA keys associated" in text
    assert "chatty info" not in text
    assert "FutureWarning: `foo` is deprecated" in text
    assert "ERROR" in text and "NaN image after fp32 retry" in text
    assert "[process 2/2]" in text
    assert log.warnings_seen == 3 and log.failures_seen == 1


def test_closing_detaches_and_a_resumed_run_appends(tmp_path):
    with open_run_log(tmp_path):
        logging.getLogger("expressiongrid").warning("first attempt")
    logging.getLogger("expressiongrid").warning("between runs: not logged to the file")
    try:
        with open_run_log(tmp_path):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
    except RuntimeError:
        pass
    text = (tmp_path / LOG_NAME).read_text()
    assert "first attempt" in text and "between runs" not in text
    assert "run stopped by RuntimeError: CUDA error" in text
    assert text.index("first attempt") < text.index("run stopped")
