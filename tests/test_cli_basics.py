"""CLI conventions that hold for every command."""

import subprocess
import sys

from click.testing import CliRunner

from expressiongrid.cli import main


def _all_commands():
    runner_ctx = main.make_context("expressiongrid", [], resilient_parsing=True)
    out = []
    for name in main.list_commands(runner_ctx):
        cmd = main.get_command(runner_ctx, name)
        if cmd is None:
            continue
        out.append(((name,), cmd))
        for sub in getattr(cmd, "commands", {}).values():
            out.append(((name, sub.name), sub))
    return out


def test_every_command_has_help_with_an_example():
    runner = CliRunner()
    for path, cmd in _all_commands():
        result = runner.invoke(main, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        if not hasattr(cmd, "commands"):  # leaf commands show an example
            assert "Example" in result.output, f"{' '.join(path)} --help has no example"
        bare = [opt.opts[0] for opt in cmd.params if getattr(opt, "opts", None) and opt.param_type_name == "option"
                and not opt.help and opt.opts[0] != "--help"]
        assert not bare, f"{' '.join(path)} --help says nothing about {', '.join(bare)}"


def test_help_does_not_import_torch():
    code = "import sys; from expressiongrid.cli import main\n" \
           "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n" \
           "assert 'torch' not in sys.modules, 'torch imported by --help'"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_unknown_command_is_usage_error():
    result = CliRunner().invoke(main, ["no-such-command"])
    assert result.exit_code == 2


def test_progress_bar_note_shows_user_text_terminal_safe(capsys, monkeypatch):
    """A column label is the bar's note: its escape sequences must not reach the terminal raw."""
    from expressiongrid.cli._common import ProgressBar

    monkeypatch.delenv("EXPRESSIONGRID_NO_PROGRESS", raising=False)
    bar = ProgressBar("img")
    bar(0, 4, "loading model")
    bar(1, 4, "reference + text\x1b[5m only")
    bar.close()
    err = capsys.readouterr().err
    assert "\x1b[5m" not in err and "text\\x1b[5m only" in err and "1/4" in err


def test_progress_into_a_log_file_is_plain_lines_not_carriage_return_redraws(capsys, monkeypatch):
    """`nohup expressiongrid run ... > run.out`: stderr is no terminal, so each update the user gets is a
    line of its own (count, percent, rate, time left) instead of a bar redrawn with carriage returns, which
    a log file keeps as one ever-growing line."""
    from expressiongrid.cli._common import ProgressBar

    monkeypatch.delenv("EXPRESSIONGRID_NO_PROGRESS", raising=False)
    bar = ProgressBar("img", interval=0)
    for done in (2, 3, 3, 6, 8):  # 2 already done before this run
        bar(done, 8, "demo LoRA")
    bar.close()
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert [line.split()[1] for line in lines] == ["3/8", "6/8", "8/8"]  # no line for a repeated count
    assert lines[0].startswith("progress: 3/8 img (37%), ") and " img/s, about " in lines[0]
    assert lines[0].endswith(" left (demo LoRA)")
    assert lines[-1].startswith("progress: 8/8 img (100%), ") and lines[-1].endswith(" in all")


def test_a_stopped_run_logs_how_far_its_progress_got(capsys, monkeypatch):
    from expressiongrid.cli._common import ProgressBar

    monkeypatch.delenv("EXPRESSIONGRID_NO_PROGRESS", raising=False)
    bar = ProgressBar("cell")  # a minute between lines: none is due yet
    bar(0, 5)
    bar(2, 5)
    assert capsys.readouterr().err == ""
    bar.close()  # Ctrl-C, an error: the last count is still said
    assert capsys.readouterr().err.startswith("progress: 2/5 cell (40%)")


def test_terminal_safe_escapes_every_direction_control():
    """An override, an isolate or a mark in a label would reorder the printed line around it."""
    from expressiongrid.cli._common import terminal_safe

    assert terminal_safe("smile\u202eyppah | \u2067x\u2069 \u200fy \u061cz") == \
        "smile\\u202eyppah | \\u2067x\\u2069 \\u200fy \\u061cz"
    assert terminal_safe("שלום Zoë") == "שלום Zoë"  # right-to-left letters themselves are text


def _example_lines(epilog: str) -> list[str]:
    lines = [line.strip() for line in epilog.replace("\b", "").splitlines()]
    return [line for line in lines if line and line != "Example:"]


def test_help_examples_keep_one_command_per_line():
    """An example in --help is copied into a shell: click must not re-wrap several commands into one line or
    break one inside a quoted argument (seen on an 80-column terminal)."""
    runner = CliRunner()
    commands = dict(_all_commands())
    for path in [("config",), ("import",), ("init",), ("characters", "fetch"), ("analyze",), ("judge",),
                 ("measure",), ("view",), ("report",), ("expressions", "list"), ("prompt", "explain"), ("xyz",)]:
        result = runner.invoke(main, [*path, "--help"], terminal_width=80)
        shown = {line.strip() for line in result.output.splitlines()}
        for example in _example_lines(commands[path].epilog):
            assert example in shown, f"{' '.join(path)} --help mangles the example {example!r}:\n{result.output}"


def test_init_prints_a_next_command_that_pastes_with_spaces_in_the_path(tmp_path):
    folder = tmp_path / "my study"
    result = CliRunner().invoke(main, ["init", str(folder)])
    assert result.exit_code == 0, result.output
    assert f"expressiongrid run '{folder}/examples/seed-study.toml' --dry-run" in result.output


def test_output_piped_into_a_reader_that_stops_early_ends_quietly():
    """`expressiongrid ... | head -1`: no "error: Broken pipe" and no traceback when the reader goes away."""
    proc = subprocess.Popen([sys.executable, "-m", "expressiongrid", "expressions", "list", "seed-study", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first line is written
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) != 0
    assert stderr == "", stderr


def test_the_summary_commands_paste_for_an_output_folder_with_a_space(tmp_path, capsys):
    from expressiongrid.cli.run import _print_summary
    from expressiongrid.run.runner import CellFailure, RunSummary

    out = tmp_path / "out dir"
    failures = [CellFailure(f"k{i}", 0, "row", "col", "boom") for i in range(11)]
    _print_summary(RunSummary(out, 1, planned=11, made=0, skipped=0, failed=11, seconds=1.0, failures=failures))
    printed = capsys.readouterr()
    assert f"browse: expressiongrid view '{out}'" in printed.out
    assert f"(expressiongrid runs show '{out}')" in printed.err


def test_a_folder_without_a_run_is_a_usage_error_for_every_command_that_reads_one(tmp_path):
    """Naming the wrong folder is bad usage (exit 2, one line saying what to give), not a failed run."""
    from expressiongrid.store import Store

    empty = tmp_path / "empty"
    empty.mkdir()
    Store(tmp_path / "no-run-yet").close()  # a store made by a run that stopped before recording itself
    commands = [(["runs", "show"], []), (["runs", "show"], ["--json"]), (["view"], []), (["report"], [])]
    for folder, why in ((tmp_path / "missing", "the folder does not exist"), (empty, "run.sqlite not found"),
                        (tmp_path / "no-run-yet", "run.sqlite holds no run yet")):
        for words, options in commands + ([(["judge"], ["--rankings"])] if folder.name != "no-run-yet" else []):
            command = [*words, str(folder), *options]
            result = CliRunner().invoke(main, command)
            assert result.exit_code == 2, (command, folder, result.output)
            lines = result.output.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"error: no run in {folder}: {why}"), result.output
            assert "--out" in lines[0], result.output  # says what to do
    assert sorted(p.name for p in empty.iterdir()) == []  # nothing was written into the wrong folder
    assert not (tmp_path / "missing").exists()
