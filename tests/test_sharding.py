"""Runs sharded over devices and processes give the same per-run results as one device."""

import json
import socket
import subprocess

import jax
import numpy as np
import pytest

import ncflow
from ncflow.io import read_table_csv

from helpers import assert_trees_close, ncflow_command, subprocess_env

PROBLEM = dict(K=3, d=4, n=2, lambda_w=2e-2, lambda_h=2e-2, dtype="float64")


def test_four_devices_available():
    assert jax.device_count() == 4, "conftest must give 4 simulated CPU devices"


@pytest.mark.parametrize("engine", ["full", "collapsed"])
def test_sharded_equals_unsharded(engine):
    p = ncflow.Problem(**PROBLEM)
    kw = dict(runs=37, max_steps=3000, engine=engine, progress=False, group=4)
    one = ncflow.simulate(p, devices=jax.devices()[:1], **kw)
    four = ncflow.simulate(p, devices=jax.devices(), **kw)
    two = ncflow.simulate(p, devices=jax.devices()[2:], **kw)
    assert one.timing["devices"] == 1 and four.timing["devices"] == 4 and two.timing["devices"] == 2
    for other in (four, two):
        np.testing.assert_array_equal(other.outcome, one.outcome)
        np.testing.assert_array_equal(other.per_run["steps"], one.per_run["steps"])
        np.testing.assert_allclose(other.per_run["objective"], one.per_run["objective"], rtol=1e-12, atol=0)
        assert_trees_close(other.final_state, one.final_state, rtol=1e-10, atol=1e-12)
    # padding never enters statistics: counts add up to the real runs
    assert sum(v["count"] for v in four.outcomes().values()) == 37
    assert (one.outcome == "global").all()


def test_mesh_argument():
    from jax.sharding import Mesh

    p = ncflow.Problem(**PROBLEM)
    mesh = Mesh(np.asarray(jax.devices()[:2]), ("runs",))
    r = ncflow.simulate(p, runs=5, max_steps=200, early_stop=False, progress=False, devices=mesh)
    assert r.timing["devices"] == 2 and r.runs == 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(argv_of, env) -> list:
    """Start processes 1 and 0 of a 2-process job (``argv_of(pid)``), wait for both (240 s at most),
    assert both exited 0 and return their (stdout, stderr), process 1's first."""
    procs = []
    try:
        for pid in (1, 0):
            procs.append(subprocess.Popen(argv_of(pid), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                          env=env))
        outs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    return outs


def test_two_processes_equal_one(tmp_path):
    """2 processes x 2 CPU devices on 127.0.0.1 (gloo) gather the same result as 1 process."""
    port = _free_port()
    common = ncflow_command("run", "-K", "3", "-d", "4", "-n", "2", "--lambda-w", "2e-2", "--lambda-h",
              "2e-2", "--runs", "23", "--dtype", "float64", "--max-steps", "3000", "--json", "--no-progress")
    env = subprocess_env()
    outs = _two_processes(lambda pid: common + ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                                                "--process-id", str(pid), "--cpu-devices", "2"]
                          + (["--out", str(tmp_path / "multi")] if pid == 0 else []), env)
    worker_out, main_out = outs[0][0], outs[1][0]
    assert worker_out.strip() == ""  # only process 0 prints
    multi = json.loads(main_out)
    single = subprocess.run(common + ["--cpu-devices", "1", "--out", str(tmp_path / "single")],
                            capture_output=True, text=True, env=env, timeout=240, check=True)
    single = json.loads(single.stdout)
    assert multi["timing"]["devices"] == 4 and single["timing"]["devices"] == 1
    assert multi["outcomes"] == single["outcomes"]
    ta, tb = read_table_csv(str(tmp_path / "multi" / "runs.csv")), read_table_csv(str(tmp_path / "single" / "runs.csv"))
    np.testing.assert_array_equal(ta["outcome"], tb["outcome"])
    np.testing.assert_allclose(ta["objective"], tb["objective"], rtol=1e-12)


def test_two_process_sweep_equals_one(tmp_path):
    """A sweep on 2 processes x 2 CPU devices (gloo on 127.0.0.1): process 0 decides and writes,
    the other runs the same batches; the files equal a single-process sweep's."""
    toml = tmp_path / "s.toml"
    toml.write_text('[problem]\nK = 3\nd = 4\nn = 2\ndtype = "float64"\n[solver]\nruns = 7\nmax_steps = 3000\n'
                    '[grid]\nlambda_w = [1e-2, 2e-2]\n')
    port = _free_port()
    env = subprocess_env()
    common = ncflow_command("sweep", str(toml), "--no-progress", "--json")
    outs = _two_processes(lambda pid: common + ["--out", str(tmp_path / ("multi" if pid == 0 else "ignored")),
                                                "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                                                "--process-id", str(pid), "--cpu-devices", "2"], env)
    assert outs[0][0].strip() == "" and not (tmp_path / "ignored").exists()  # the worker neither prints nor writes
    multi = json.loads(outs[1][0])
    single = subprocess.run(common + ["--cpu-devices", "1", "--out", str(tmp_path / "single")],
                            capture_output=True, text=True, env=env, timeout=240, check=True)
    single = json.loads(single.stdout)
    assert multi["status"] == single["status"] == "complete" and multi["ran"] == [0, 1]
    for k in range(2):
        ta = read_table_csv(str(tmp_path / "multi" / "points" / f"{k:04d}" / "runs.csv"))
        tb = read_table_csv(str(tmp_path / "single" / "points" / f"{k:04d}" / "runs.csv"))
        np.testing.assert_array_equal(ta["outcome"], tb["outcome"])
        np.testing.assert_array_equal(ta["steps"], tb["steps"])
        np.testing.assert_allclose(ta["objective"], tb["objective"], rtol=1e-12)
