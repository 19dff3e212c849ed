"""DDP wiring under torchrun: two gloo processes on the CPU train the same overlay as one process on the whole batch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import appliance

WORKER = Path(__file__).with_name("ddp_worker.py")


def test_two_processes_train_what_one_trains_on_the_whole_batch(tmp_path):
    import ddp_worker

    # gloo over the loopback interface: no other is needed, and a container's host name may not resolve
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(appliance.__file__).parent.parent),
        "OMP_NUM_THREADS": "1",
        "GLOO_SOCKET_IFNAME": "lo",
    }
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER), str(out)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [torch.load(f"{out}.rank{r}", weights_only=False) for r in (0, 1)]
    single = ddp_worker.train()

    assert [r["world"] for r in ranks] == [2, 2] and single["world"] == 1
    assert ranks[0]["read"] == [0, 2] and ranks[1]["read"] == [1, 3] and single["read"] == [0, 1, 2, 3]  # the data is split
    for name, value in single["params"].items():
        assert not torch.equal(value, single["start"][name])  # it trained
        for r in ranks:  # every process ends with the overlay one process gets from the whole batch
            assert torch.allclose(r["params"][name], value, rtol=1e-4, atol=1e-6), name
    for r in ranks:  # and logs the global batch's terms
        assert [s.nll for s in r["log"]] == pytest.approx([s.nll for s in single["log"]], rel=1e-5)
        assert [s.barrier for s in r["log"]] == pytest.approx([s.barrier for s in single["log"]], rel=1e-3)
