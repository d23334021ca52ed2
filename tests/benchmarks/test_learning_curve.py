"""benchmarks/cpu_learning_curve.py: training hours of a paused, resumed run, known to the second."""

import pytest


def _process(run, started: float, logged: dict[int, float]) -> None:
    """One training process's TensorBoard file: created at ``started``, ``step/lr`` logged at the given wall times."""
    from torch.utils.tensorboard import SummaryWriter

    folder = run / "tb" / f"p{started}"
    writer = SummaryWriter(str(folder))
    for step, wall in logged.items():
        writer.add_scalar("step/lr", 0.1, step, walltime=wall)
    writer.close()
    (events,) = folder.glob("events.out.tfevents.*")
    parts = events.name.split(".")
    parts[3] = str(int(started))  # the file name's creation time is the process start
    events.rename(run / "tb" / ".".join(parts))
    folder.rmdir()


def test_hours_leave_out_pauses_evaluations_and_lost_steps(tmp_path):
    from benchmarks.cpu_learning_curve import curve_without_pauses

    run = tmp_path / "run"
    (run / "tb").mkdir(parents=True)
    # 10 steps an epoch. Process A: 2 s a step, a 3 s evaluation after step 10, dies after step 25 (lost past 20).
    _process(run, 1000, {5: 1010, 10: 1020, 15: 1033, 20: 1043, 25: 1053})
    # Process B resumes at step 20, 2 s a step, paused 3 s between 2012 and 2015, and earlier outside any step.
    _process(run, 2000, {25: 2010, 30: 2023})
    (run / "metrics.csv").write_text("epoch,step,seconds,eval_seconds,mIoU/L0,mIoU/L1\n1,10,23,3,0.5,0.25\n"
                                     "2,20,53,,,\n3,30,23,0,0.6,0.35\n")
    pauses = tmp_path / "pauses.tsv"
    pauses.write_text("900\t990\ttests\n2012\t2015\ttests\n")
    points = curve_without_pauses(run, pauses)
    assert [p["epoch"] for p in points] == [1, 3]
    assert points[0]["hours"] == pytest.approx(20 / 3600, abs=1e-5)
    # A: 43 s to step 20, less its 3 s evaluation; B: 23 s, less the 3 s pause
    assert points[1]["hours"] == pytest.approx((40 + 20) / 3600, abs=1e-5)
    assert points[1]["mIoU"] == [0.6, 0.35]
