"""accelerate helpers: column split, exactly one composer per launch, real `accelerate launch` processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st

from expressiongrid.run.launch import ProcessInfo, columns_for_process, current_process, finish_shard
from expressiongrid.store import Store
from helpers import accelerate_command, accelerate_env, free_port


@given(st.lists(st.text(min_size=1, max_size=4), max_size=30, unique=True), st.integers(1, 9))
def test_every_column_goes_to_exactly_one_process(columns, count):
    shares = [columns_for_process(columns, i, count) for i in range(count)]
    flat = [c for share in shares for c in share]
    assert sorted(flat) == sorted(columns)
    assert max(map(len, shares)) - min(map(len, shares)) <= 1  # balanced


def test_bad_process_index_is_refused():
    with pytest.raises(ValueError):
        columns_for_process(["a"], 2, 2)


def test_a_single_process_is_its_own_launch():
    p = current_process()
    assert (p.index, p.count, p.is_main, p.distributed) == (0, 1, True, False)
    assert p.launch_id


def test_only_the_last_shard_to_finish_composes_and_old_launches_do_not_count(tmp_path):
    store = Store(tmp_path)
    old = [ProcessInfo(index=i, count=3, launch_id="crashed-launch") for i in range(3)]
    assert finish_shard(store, old[0]) is False  # the crashed launch's other shards never finished
    launch = [ProcessInfo(index=i, count=3, launch_id="new-launch") for i in range(3)]
    assert [finish_shard(store, p) for p in (launch[2], launch[0], launch[1])] == [False, False, True]
    assert finish_shard(store, ProcessInfo()) is True  # single process: always composes


_SHARD_RACE = textwrap.dedent(
    """
    import sys, time
    from expressiongrid.run.launch import ProcessInfo, finish_shard
    from expressiongrid.store import Store
    index, count, run_dir, go = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    store = Store(run_dir)
    import os
    while not os.path.exists(go):
        time.sleep(0.005)
    print(finish_shard(store, ProcessInfo(index=index, count=count, launch_id="race")))
    """
)


def test_shards_finishing_at_the_same_instant_elect_exactly_one_composer(tmp_path):
    Store(tmp_path / "run").close()
    go = tmp_path / "go"
    n = 4
    procs = [subprocess.Popen([sys.executable, "-c", _SHARD_RACE, str(i), str(n), str(tmp_path / "run"), str(go)],
                              stdout=subprocess.PIPE, text=True) for i in range(n)]
    go.touch()
    answers = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert sorted(answers) == ["False"] * (n - 1) + ["True"]


_LAUNCHED = textwrap.dedent(
    """
    import sys
    from expressiongrid.run.launch import columns_for_process, current_process, finish_shard, wait_for_everyone
    from expressiongrid.store import Store
    p = current_process()
    store = Store(sys.argv[1])
    wait_for_everyone(p)
    mine = columns_for_process(["reference", "alice", "bob", "carol", "dave"], p.index, p.count)
    print(f"RESULT {p.index} {p.count} {p.launch_id} {','.join(mine)} {finish_shard(store, p)}", flush=True)
    """
)


def test_accelerate_launch_gives_each_process_its_columns_and_one_composer(tmp_path):
    script = tmp_path / "shard.py"
    script.write_text(_LAUNCHED)
    proc = subprocess.run([*accelerate_command(2, free_port()), str(script), str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=120, env=accelerate_env(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = sorted(line.split()[1:] for line in proc.stdout.splitlines() if line.startswith("RESULT"))
    assert [r[:2] for r in rows] == [["0", "2"], ["1", "2"]]
    assert rows[0][2] == rows[1][2]  # one launch id shared by both processes
    assert rows[0][3] == "reference,bob,dave" and rows[1][3] == "alice,carol"
    assert sorted(r[4] for r in rows) == ["False", "True"]
