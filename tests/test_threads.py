"""How many CPU threads a run takes: the CPUs it may use (affinity, cgroup quota), or --threads."""

import os

import pytest
import torch

from pyro_vae.resources import _cgroup_cpus, set_threads, usable_cpus

from conftest import run_cli, tiny_config


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _cgroup(tmp_path, v2=None, v1=None):
    root = tmp_path / "cgroup"
    root.mkdir(parents=True)
    if v2 is not None:
        (root / "cpu.max").write_text(v2)
    if v1 is not None:
        (root / "cpu").mkdir()
        (root / "cpu" / "cpu.cfs_quota_us").write_text(str(v1[0]))
        (root / "cpu" / "cpu.cfs_period_us").write_text(str(v1[1]))
    return str(root)


@pytest.mark.parametrize(
    "v2,v1,cpus",
    [
        ("max 100000\n", None, None),  # no quota
        ("150000 100000\n", None, 1.5),
        ("400000 100000\n", None, 4.0),
        (None, (200000, 100000), 2.0),
        (None, (-1, 100000), None),  # v1's "no quota"
        (None, None, None),  # no cgroup files at all
        ("garbage", None, None),
    ],
)
def test_the_cgroup_quota_is_read_from_v2_or_v1(tmp_path, v2, v1, cpus):
    assert _cgroup_cpus(_cgroup(tmp_path, v2, v1)) == cpus


def test_usable_cpus_is_the_affinity_capped_by_the_quota(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    assert usable_cpus(_cgroup(tmp_path, "max 100000")) == affinity
    assert usable_cpus(_cgroup(tmp_path / "a", "50000 100000")) == 1  # half a CPU still gets one thread
    assert usable_cpus(_cgroup(tmp_path / "b", f"{(affinity + 5) * 100000} 100000")) == affinity


def test_set_threads_takes_the_given_count_or_shares_the_cpus(restore_threads, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert set_threads(1) == 1 and torch.get_num_threads() == 1
    assert set_threads(None) == usable_cpus()
    assert set_threads(None, processes_here=10**6) == 1  # never zero
    # a user's OMP_NUM_THREADS is kept when no count is given
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    assert set_threads(None) == 1 and torch.get_num_threads() == 1
    assert set_threads(2) == 2
    for bad in (0, -2, True, 1.5):
        with pytest.raises(ValueError, match="`threads` must be a positive integer"):
            set_threads(bad)


def test_a_run_uses_the_threads_it_is_given(tmp_path, tiny_data, restore_threads):
    from pyro_vae import train

    train(tiny_config(tmp_path, threads=1, epochs=1), data=tiny_data)
    assert torch.get_num_threads() == 1


def test_threads_zero_is_refused_on_the_command_line(tmp_path, capsys):
    from pyro_vae.cli import evaluate_main, train_main

    code, _, err = run_cli(train_main, ["--threads", "0", "--out", str(tmp_path / "r")], capsys)
    assert (code, err.strip()) == (2, "error: --threads must be a positive integer, got 0")
    code, _, err = run_cli(evaluate_main, [str(tmp_path / "r"), "--threads", "0"], capsys)
    assert (code, err.strip()) == (2, "error: --threads must be a positive integer, got 0")
    assert not (tmp_path / "r").exists()


def _stat(path, cpu0, cpu1):
    # user nice system idle iowait irq softirq steal, in ticks; the first line is the sum, which is ignored
    rows = ["cpu  1 1 1 1 1 1 1 1"] + [f"cpu{i} " + " ".join(map(str, v)) for i, v in enumerate((cpu0, cpu1))]
    path.write_text("\n".join([*rows, "intr 5", "ctxt 9"]) + "\n")


def test_busy_seconds_count_user_nice_system_irq_softirq_steal_of_the_given_cpus(tmp_path):
    from pyro_vae.resources import _busy_seconds

    stat = tmp_path / "stat"
    _stat(stat, (100, 10, 20, 999, 7, 3, 2, 5), (50, 0, 0, 999, 0, 0, 0, 0))
    tick = os.sysconf("SC_CLK_TCK")
    assert _busy_seconds({0}, str(stat)) == pytest.approx(140 / tick)  # idle and iowait left out
    assert _busy_seconds({0, 1}, str(stat)) == pytest.approx(190 / tick)
    assert _busy_seconds({0}, str(tmp_path / "absent")) is None


@pytest.mark.parametrize(
    "others_ticks,own,threads,expect",
    [
        (1.0, 0.0, 2, "`threads=1`"),  # another job kept one of two CPUs busy
        (1.0, 0.5, 2, "`threads=1`"),  # our own CPU time is not the others'
        (0.2, 0.0, 2, None),  # an idle machine: nothing to say
        (1.0, 0.0, 1, None),  # one thread already
    ],
)
def test_the_shared_cpu_note(tmp_path, monkeypatch, others_ticks, own, threads, expect):
    import pyro_vae.resources as res

    tick = os.sysconf("SC_CLK_TCK")
    stat = tmp_path / "stat"
    monkeypatch.setattr(res.os, "sched_getaffinity", lambda pid: {0, 1})
    clock, cpu = [100.0], [0.0]
    monkeypatch.setattr(res.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(res.os, "times", lambda: os.times_result((cpu[0], 0.0, 0.0, 0.0, 0.0)))
    _stat(stat, (0,) * 8, (0,) * 8)
    watch = res.SharedCpuWatch(str(stat))
    clock[0] += 10.0  # ten seconds later: ours used `own` CPUs' worth, the others `others_ticks`
    cpu[0] = 10.0 * own
    busy = round(10.0 * (others_ticks + own) * tick)
    _stat(stat, (busy, 0, 0, 0, 0, 0, 0, 0), (0,) * 8)
    assert watch.others() == pytest.approx(others_ticks, abs=1e-6)
    note = watch.note(threads, "epoch 1")
    if expect is None:
        assert note is None
    else:
        assert expect in note and "epoch 1" in note and note.count("\n") == 0


def test_no_note_over_too_short_an_interval(tmp_path):
    from pyro_vae.resources import SharedCpuWatch

    stat = tmp_path / "stat"
    _stat(stat, (0,) * 8, (0,) * 8)
    assert SharedCpuWatch(str(stat)).others() is None  # under a second: nothing measured
