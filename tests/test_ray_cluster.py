"""Trainings on a real Ray cluster (a head and a worker node on this machine), with a worker lost mid-training.

Ray binds its nodes to a routable address when there is one; the scenario runs in a private network namespace
(``unshare -n`` with only loopback up), so every byte stays on this machine. See tests/ray_scenario.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")

SCENARIO = Path(__file__).with_name("ray_scenario.py")


def _namespace_command() -> list[str]:
    """``unshare -n`` as root, ``unshare -rn`` (a user namespace) elsewhere; skip where neither is allowed."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs unshare and ip (util-linux, iproute2) to keep the cluster on loopback")
    for command in (["unshare", "-n"], ["unshare", "-rn"]):
        if subprocess.run([*command, "true"], capture_output=True).returncode == 0:
            return command
    pytest.skip("this machine allows no private network namespace (unshare -n / -rn)")


@pytest.mark.slow
def test_trainings_run_on_ray_nodes_and_a_lost_node_resumes_elsewhere(tmp_path: Path) -> None:
    run = subprocess.run([*_namespace_command(), "--", "sh", "-c",
                          f'ip link set lo up && exec "{sys.executable}" "{SCENARIO}" "{tmp_path}"'],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    facts = json.loads(run.stdout.strip().splitlines()[-1])
    print(facts["seconds"], facts.get("no_shared_disk", {}).get("seconds"))  # where its time goes, for the log

    assert facts["local"]["status"] == "ready" and facts["slots"] == ["ray-0", "ray-1"]
    assert facts["view"] == {"nodes": 2, "cpus": 2.0}
    for ran in facts["runs"]:
        # It ran as a Ray task on one of the cluster's nodes, and made the local backend's LoRA.
        assert ran["status"] == "ready" and ran["node"] in facts["nodes"] and ran["task"] and ran["pid"]
        assert ran["shapes"] == facts["local"]["shapes"] and ran["shapes"]
        assert ran["assessed"] == [2, 4]  # the likeness curve came back from the worker, checkpoint by checkpoint

    stopped = facts["stopped"]  # Stop and Resume work as they do locally
    assert stopped["status_after_stop"] == "cancelled" and stopped["status_after_resume"] == "ready"
    assert stopped["stopped_at"] < 500 and stopped["stopped_at"] in stopped["checkpoints_after_stop"]
    # A training still waiting for a node with room is withdrawn at once.
    assert facts["unplaced_stop"]["status"] == "cancelled" and facts["unplaced_stop"]["seconds"] < 10
    assert stopped["resumed_lines"] == [f"resuming from the checkpoint at step {stopped['stopped_at']}"]

    # A cluster whose worker nodes do not see the app's disk; one of them joined while the app ran.
    apart = facts["no_shared_disk"]
    assert apart["app_sees_data_dir"] and not apart["node_sees_data_dir"]
    assert apart["workers_at_start"] == ["ray-0"] and apart["workers_after_join"] == ["ray-0", "ray-1"]
    assert apart["status_at_kill"] == "running"
    assert "3 node(s), 2 CPU, 0 GPU" in apart["cluster_text"]
    killed = apart["killed"]
    assert f"'killed': running on node `{killed['node_before'][:8]}`" in apart["cluster_text"]
    # Its node was killed mid-training: it resumed on the other node from the checkpoint that had reached the app's
    # disk.
    assert killed["went_away"] and killed["attempts"] == 2 and killed["status"] == "ready"
    assert killed["raylet_ended"] and killed["node_after"] != killed["node_before"]
    resumed = [int(line.split()[-1]) for line in killed["resumed_lines"]]
    assert resumed and resumed[0] >= 10
    assert killed["object_store_lines"] == 2  # both attempts got their files through the object store
    # Everything it made is on the app's disk: the LoRA (the local backend's shapes), checkpoints, test images.
    assert killed["lora_in_data_dir"] and killed["local_shapes_match"] and killed["grid"]
    assert killed["recorded_checkpoints_on_disk"] and killed["test_images"] > 0
    assert killed["checkpoints"] and all(name.startswith("step-") for name in killed["checkpoints"])
    assert killed["left_on_nodes"] == []


def test_the_command_line_refuses_an_address_where_no_cluster_answers(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.__main__ import main

    photos = tmp_path / "photos"
    photos.mkdir()
    assert main(["train", str(photos), "--name", "x", "--data-dir", str(tmp_path / "data"), "--base-model", "tiny",
                 "--ray", "127.0.0.1:1"]) == 2
    assert "no Ray cluster answers at '127.0.0.1:1'" in capsys.readouterr().err


@pytest.mark.parametrize("address", ["127.0.0.1:1", "no-port-here"])
def test_an_address_where_no_cluster_answers_is_refused_at_once_with_the_fix(tmp_path: Path, address: str) -> None:
    from pipeline.settings import AppSettings
    from pipeline.workflow import Workflow

    with pytest.raises(ValueError, match="no Ray cluster answers .*ray start --head"):
        Workflow(AppSettings(data_dir=tmp_path, base_model="tiny", ray_address=address), start_worker=False)
