from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from warmstart.distill.checkpoint import StudentState, load_student, save_student
from warmstart.distill.data import GroupDataset, PairGroups, Task, synthetic_groups
from warmstart.distill.dispatch import SampleLedger
from warmstart.distill.losses import KDLossConfig
from warmstart.distill.student import BagOfWordsStudent
from warmstart.distill.teacher import SyntheticTeacher, TeacherSpec, build_teacher
from warmstart.distill.trainer import (
    NoTeacher,
    OfflineTeacher,
    OnlineTeacher,
    StudentConfig,
    precompute_outputs,
    train_student,
)


def tiny_dataset(n: int = 24, group: int = 3) -> GroupDataset:
    return synthetic_groups(n, group, seed=0)


CONFIG = StudentConfig(epochs=2, batch_size=5, lr=1e-2, checkpoint_every=3, seed=1)


class CountingTeacher(SyntheticTeacher):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def predict(self, batch: PairGroups) -> np.ndarray:
        self.calls += 1
        return super().predict(batch)


def test_modes_share_the_loop_and_online_equals_offline() -> None:
    data = tiny_dataset()
    teacher = CountingTeacher()
    results = {}
    for name, source in {
        "online": OnlineTeacher(teacher, data),
        "offline": OfflineTeacher(precompute_outputs(SyntheticTeacher(), data, 7)),
    }.items():
        student = BagOfWordsStudent(seed=0)
        results[name] = (train_student(student, data, CONFIG, source, progress=False), student)
    online, offline = results["online"], results["offline"]
    assert online[0].steps == offline[0].steps == 10
    assert teacher.calls == 10
    assert (online[0].ledger.counts == 1).all()
    np.testing.assert_allclose(online[0].losses, offline[0].losses, rtol=1e-5)
    torch.testing.assert_close(online[1].state_dict(), offline[1].state_dict())


def test_no_kd_records_no_teacher_outputs() -> None:
    data = tiny_dataset()
    config = StudentConfig(epochs=1, batch_size=6, loss=KDLossConfig.no_kd())
    result = train_student(BagOfWordsStudent(), data, config, NoTeacher(), progress=False)
    assert result.steps == 4 and result.ledger.counts.sum() == 0
    with pytest.raises(ValueError, match="needs teacher outputs"):
        train_student(BagOfWordsStudent(), data, CONFIG, NoTeacher(), progress=False)


def test_kd_student_learns_the_teachers_order() -> None:
    data = tiny_dataset(60)
    config = StudentConfig(epochs=8, batch_size=6, lr=5e-2, loss=KDLossConfig(hard_weight=0.0))
    student = BagOfWordsStudent(seed=3)
    teacher = SyntheticTeacher()
    batch = data.take(range(len(data)))
    target = teacher.predict(batch)

    def agreement() -> float:
        with torch.no_grad():
            s = student.scores(batch).numpy()
        return float((s.argmax(1) == target.argmax(1)).mean())

    before = agreement()
    train_student(student, data, config, OnlineTeacher(teacher, data), progress=False)
    assert agreement() > max(before, 0.6)


def test_resume_after_a_kill_gives_the_same_model_and_ledger(tmp_path: Path) -> None:
    data = tiny_dataset()
    whole = BagOfWordsStudent(seed=0)
    full = train_student(
        whole, data, CONFIG, OnlineTeacher(SyntheticTeacher(), data), progress=False
    )

    class Killed(Exception):
        pass

    class DiesAfter:  # a source whose process "dies" after step 7 (last checkpoint: 6)
        def stream(self, tasks):
            for task, out in OnlineTeacher(SyntheticTeacher(), data).stream(tasks):
                if task.step == 8:
                    raise Killed
                yield task, out

    with pytest.raises(Killed):
        train_student(
            BagOfWordsStudent(seed=0), data, CONFIG, DiesAfter(), workdir=tmp_path, progress=False
        )
    resumed = BagOfWordsStudent(seed=0)
    again = train_student(
        resumed,
        data,
        CONFIG,
        OnlineTeacher(SyntheticTeacher(), data),
        workdir=tmp_path,
        progress=False,
    )
    assert again.resumed_from == 6 and again.steps == 10
    np.testing.assert_array_equal(again.ledger.counts, full.ledger.counts)
    torch.testing.assert_close(resumed.state_dict(), whole.state_dict())
    np.testing.assert_allclose(again.losses, full.losses, rtol=1e-5)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model = BagOfWordsStudent(seed=1)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model.scores(tiny_dataset().take([0, 1])).sum().backward()
    opt.step()
    ledger = SampleLedger(2, 5)
    ledger.record(Task(1, 0, (1, 3)))
    save_student(tmp_path, model, opt, StudentState(4, [0.5, 0.25], {"mode": "edl"}), ledger)
    save_student(tmp_path, model, opt, StudentState(5, [0.5, 0.25, 0.1], {"mode": "edl"}), ledger)
    assert len(list(tmp_path.glob("step-*"))) == 1
    other = BagOfWordsStudent(seed=2)
    opt2 = torch.optim.AdamW(other.parameters(), lr=0.1)
    state, ledger2 = load_student(tmp_path, other, opt2, (2, 5))
    assert state.step == 5 and state.losses == [0.5, 0.25, 0.1] and state.extra == {"mode": "edl"}
    np.testing.assert_array_equal(ledger2.counts, ledger.counts)
    torch.testing.assert_close(other.state_dict(), model.state_dict())
    torch.testing.assert_close(opt2.state_dict()["state"], opt.state_dict()["state"])
    fresh, empty = load_student(tmp_path / "none", other, opt2, (2, 5))
    assert fresh.step == 0 and empty.counts.sum() == 0


def test_teacher_spec_validation_and_synthetic_build() -> None:
    with pytest.raises(ValueError, match="kind='x'"):
        TeacherSpec(kind="x")
    with pytest.raises(ValueError, match="needs path"):
        TeacherSpec()
    teacher = build_teacher(TeacherSpec(kind="synthetic"))
    out = teacher.predict(PairGroups(("a b", "c"), (("a b", "x"), ("c", "c d"))))
    assert out.shape == (2, 2) and out[0, 0] > out[0, 1]


def test_idle_priority_applies_to_the_calling_thread_only() -> None:
    import os
    import threading

    from warmstart.distill.teacher import use_idle_priority

    if not hasattr(os, "SCHED_IDLE"):
        pytest.skip("no SCHED_IDLE on this OS")
    before = os.sched_getscheduler(0)
    seen: list[int] = []

    def worker() -> None:
        assert use_idle_priority()
        seen.append(os.sched_getscheduler(0))

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == [os.SCHED_IDLE]
    assert os.sched_getscheduler(0) == before  # the test's own thread keeps its policy


def test_unlabelled_samples_train_on_the_teacher_only() -> None:
    labelled = tiny_dataset(12)
    extra = synthetic_groups(12, 3, seed=5).unlabelled()
    mixed = labelled + extra
    assert len(mixed) == 24 and mixed.labelled == (True,) * 12 + (False,) * 12
    assert not mixed.all_labelled and labelled.all_labelled
    batch = mixed.take([0, 13])
    assert batch.labelled == (True, False) and batch.queries[1] == extra.queries[1]
    with pytest.raises(ValueError, match="need a teacher loss"):
        config = StudentConfig(epochs=1, batch_size=6, loss=KDLossConfig.no_kd())
        train_student(BagOfWordsStudent(), mixed, config, NoTeacher(), progress=False)
    result = train_student(
        BagOfWordsStudent(seed=0),
        mixed,
        CONFIG,
        OnlineTeacher(SyntheticTeacher(), mixed),
        progress=False,
    )
    assert result.steps == 10 and (result.ledger.counts == 1).all()
    with pytest.raises(ValueError, match="group sizes"):
        _ = labelled + synthetic_groups(4, 4, seed=1)
    with pytest.raises(ValueError, match="labelled flags"):
        PairGroups(("a",), (("b",),), (True, False))
