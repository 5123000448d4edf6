"""Throughput of N queued short trainings: the in-process queue vs a Ray cluster of two worker processes on this
machine — with the data dir shared, and with worker nodes that do not see it (the job's files go through Ray's object
store) — and what dispatching a job to Ray costs. Prints JSON.

All sides run the same N trainings of the tiny model through the workflow's API. The Ray sides run inside a
private network namespace (``unshare -n``) so their clusters stay on loopback; the script re-runs itself there.

    python -m bench.queue [--jobs 4] [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


class TimedExecutor:
    """Wraps an executor: per job, seconds until it started somewhere and seconds in all."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.local = inner.local
        self.timings: list[dict[str, float]] = []

    def slots(self):
        return self.inner.slots()

    def close(self) -> None:
        self.inner.close()

    def view(self):
        return self.inner.view()

    def run(self, spec, model_folder, *, device, on_event, should_stop, on_placed):
        from pipeline import events as ev

        began = time.perf_counter()
        first_step: list[float] = []

        def event(e) -> None:
            if isinstance(e, ev.TrainStep) and not first_step:
                first_step.append(time.perf_counter() - began)
            on_event(e)

        outcome = self.inner.run(spec, model_folder, device=device, on_event=event, should_stop=should_stop,
                                 on_placed=on_placed)
        self.timings.append({"to_first_step_s": first_step[0] if first_step else float("nan"),
                             "job_s": time.perf_counter() - began, "training_s": outcome.result.seconds})
        return outcome


def run_jobs(data_dir: Path, jobs: int, steps: int, ray_address: str = "") -> dict:
    import photo_factory

    from pipeline.settings import AppSettings, TrainSettings
    from pipeline.workflow import Workflow, make_executor

    settings = AppSettings(data_dir=data_dir, base_model="tiny", ray_address=ray_address)
    from pipeline.generation.generators import Generators

    executor = TimedExecutor(make_executor(settings, Generators(data_dir)))
    slots = len(executor.slots() or ("local",))
    workflow = Workflow(settings, executor=executor)
    try:
        workflow.add_photos(photo_factory.portrait_set(data_dir.parent / "photos", 6))
        classification = workflow.classify()
        began = time.perf_counter()
        ids = [workflow.start_training(TrainSettings.quick(name=f"job-{i}", steps=steps, checkpoint_every=steps,
                                                           sample_every=1000, test_prompts=("{trigger}",)),
                                       classification=classification, anyway=True).id for i in range(jobs)]
        records = [workflow.wait_for(model_id, timeout=1800) for model_id in ids]
        wall = time.perf_counter() - began
        failed = [f"{r.name}: {r.error}" for r in records if r.status != "ready"]
        if failed:
            raise SystemExit("trainings did not finish: " + "; ".join(failed))
    finally:
        workflow.close()
        executor.close()
    timings = executor.timings

    def mean(key: str) -> float:
        return round(statistics.fmean(t[key] for t in timings), 2)

    return {"slots": slots, "all_ready": True, "wall_s": round(wall, 1),
            "jobs_per_minute": round(60 * jobs / wall, 2), "mean_job_s": mean("job_s"),
            "mean_training_s": mean("training_s"), "mean_to_first_step_s": mean("to_first_step_s"),
            "first_job_to_first_step_s": round(timings[0]["to_first_step_s"], 2) if timings else None}


def ray_side(jobs: int, steps: int, shared_disk: bool) -> dict:
    from local_ray import LocalCluster

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        if shared_disk:
            with LocalCluster(workers=1) as cluster:
                return run_jobs(data, jobs, steps, ray_address=cluster.address)
        data.mkdir()
        # The head (the app's node) takes no trainings; two worker nodes see an empty folder at the data dir.
        with LocalCluster(workers=0, head_cpus=0) as cluster:
            for _ in range(2):
                cluster.add_worker(hide=data, tmpdir=Path(tmp) / "nodes")
            return run_jobs(data, jobs, steps, ray_address=cluster.address)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--ray-side", choices=["shared", "apart"], help=argparse.SUPPRESS)  # the namespace re-run
    args = parser.parse_args()
    if args.ray_side:
        print(json.dumps(ray_side(args.jobs, args.steps, shared_disk=args.ray_side == "shared")))
        return
    with tempfile.TemporaryDirectory() as tmp:
        local = run_jobs(Path(tmp) / "data", args.jobs, args.steps)

    def in_namespace(side: str) -> dict:
        inner = f'exec "{sys.executable}" -m bench.queue --ray-side {side} --jobs {args.jobs} --steps {args.steps}'
        done = subprocess.run(["unshare", "-n", "--", "sh", "-c", f"ip link set lo up && {inner}"], cwd=ROOT,
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(done.stderr[-4000:])
        return json.loads(done.stdout.strip().splitlines()[-1])

    ray, apart = in_namespace("shared"), in_namespace("apart")
    print(json.dumps({
        "jobs": args.jobs, "steps": args.steps, "base_model": "tiny", "machine": "2 CPU cores (shared)",
        "local": local, "ray_two_worker_nodes": ray, "ray_two_worker_nodes_without_the_data_dir": apart,
        "throughput_ratio_ray_vs_local": round(ray["jobs_per_minute"] / local["jobs_per_minute"], 2),
        "throughput_ratio_ray_without_shared_disk_vs_local": round(apart["jobs_per_minute"] / local["jobs_per_minute"],
                                                                   2),
        # What handing a job to Ray adds before its first step (a worker process, its imports, the model load; and
        # without a shared disk the files' round trip through the object store).
        "dispatch_overhead_per_job_s": round(ray["mean_to_first_step_s"] - local["mean_to_first_step_s"], 2),
        "dispatch_overhead_per_job_without_shared_disk_s": round(
            apart["mean_to_first_step_s"] - local["mean_to_first_step_s"], 2),
    }, indent=2))


if __name__ == "__main__":
    main()
