"""The planner: dependency order on generated graphs, and the executor's budget under real threads."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pydkms.framework import Settings
from pydkms.output import Console
from pydkms.planner import UNRESOLVED, Executor, Job, job_budget, makeflags_cap, shares, simulate
from pydkms.session import Session
from pydkms.tree import Target

T = Target("6.1.0-1-amd64", "x86_64")


@st.composite
def dags(draw: st.DrawFn) -> Tuple[List[Job], Set[str]]:
    """A random DAG of modules (edges only to lower indices, then shuffled) and a set of failures."""
    n = draw(st.integers(1, 9))
    names = [f"m{i}" for i in range(n)]
    jobs = []
    for i, name in enumerate(names):
        deps = draw(st.lists(st.sampled_from(names[:i]), unique=True, max_size=3)) if i else []
        jobs.append(Job(name, "1", T, tuple(deps)))
    order = draw(st.permutations(jobs))
    failing = set(draw(st.lists(st.sampled_from(names), unique=True, max_size=2)))
    return list(order), failing


def _transitively_blocked(jobs: List[Job], failing: Set[str]) -> Set[str]:
    deps = {j.module: set(j.needs) for j in jobs}
    blocked: Set[str] = set()
    changed = True
    while changed:
        changed = False
        for m, ds in deps.items():
            if m not in blocked and ds & (failing | blocked):
                blocked.add(m)
                changed = True
    return blocked


@settings(max_examples=200, deadline=None)
@given(dags())
def test_any_dag_is_built_in_a_valid_order(case: Tuple[List[Job], Set[str]]) -> None:
    jobs, failing = case
    order, outcomes = simulate(jobs, lambda j: 10 if j.module in failing else 0, lambda _n, _t: False)
    position = {j.module: i for i, j in enumerate(order)}
    blocked = _transitively_blocked(jobs, failing)
    for job in jobs:
        if job.module in blocked:
            assert job.module not in position, f"{job.module} ran although a dependency failed"
            assert outcomes[job].code == UNRESOLVED
            assert outcomes[job].missing
        else:
            assert job.module in position
            for dep in job.needs:
                assert position[dep] < position[job.module], f"{job.module} ran before {dep}"
            assert outcomes[job].code == (10 if job.module in failing else 0)


@settings(max_examples=100, deadline=None)
@given(dags())
def test_skips_satisfy_dependencies(case: Tuple[List[Job], Set[str]]) -> None:
    """A BUILD_EXCLUSIVE skip (77) satisfies a dependency like a success (spec §1.5)."""
    jobs, skipped = case
    order, outcomes = simulate(jobs, lambda j: 77 if j.module in skipped else 0, lambda _n, _t: False)
    assert len(order) == len(jobs)
    assert all(o.code in (0, 77) for o in outcomes.values())


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 6), st.data())
def test_cycles_are_reported_not_run(n: int, data: st.DataObject) -> None:
    names = [f"c{i}" for i in range(n)]
    cycle = [Job(names[i], "1", T, (names[(i + 1) % n],)) for i in range(n)]
    free = Job("free", "1", T, ())
    after = Job("after", "1", T, (names[0],))
    jobs = data.draw(st.permutations([*cycle, free, after]))
    order, outcomes = simulate(list(jobs), lambda _j: 0, lambda _n, _t: False)
    assert [j.module for j in order] == ["free"]
    for job in [*cycle, after]:
        assert outcomes[job].code == UNRESOLVED
        assert outcomes[job].missing


def test_self_and_unknown_dependencies_are_unresolved() -> None:
    selfish = Job("selfish", "1", T, ("selfish",))
    orphan = Job("orphan", "1", T, ("nowhere",))
    present = Job("present", "1", T, ("outside",))
    order, outcomes = simulate([selfish, orphan, present], lambda _j: 0, lambda n, _t: n == "outside")
    assert order == [present]
    assert outcomes[selfish].missing == ("selfish",)
    assert outcomes[orphan].missing == ("nowhere",)


@pytest.mark.parametrize(
    ("makeflags", "cap"),
    [("", None), (" -j4 --jobserver-auth=3,4", 4), ("j3", 3), ("-k -j 6", 6), ("--jobs=5", 5), ("w", None)],
)
def test_makeflags_cap(makeflags: str, cap: object) -> None:
    assert makeflags_cap(makeflags) == cap


def test_budget_is_capped_by_makeflags_and_zero_is_unlimited() -> None:
    assert job_budget("8", " -j2") == 2
    assert job_budget("2", " -j8") == 2
    assert job_budget("0", "") is None
    assert job_budget("0", "-j3") == 3
    assert job_budget("junk", "") == 1


@given(st.integers(1, 64), st.integers(1, 64))
def test_shares_never_exceed_what_is_free(free: int, count: int) -> None:
    parts = shares(free, count)
    assert sum(parts) == free
    assert all(p >= 1 for p in parts)
    assert len(parts) == min(free, count)


class _Recorder:
    """Stands in for a build: holds its share of make jobs for a while and records it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active: Dict[str, int] = {}
        self.peak_jobs = 0
        self.peak_builds = 0
        self.done: List[str] = []

    def work(self, session: Session, job: Job) -> int:
        share = int(session.settings.parallel_jobs)
        with self.lock:
            for dep in job.needs:
                assert dep in self.done, f"{job.module} started before {dep} finished"
            self.active[job.module] = share
            self.peak_jobs = max(self.peak_jobs, sum(self.active.values()))
            self.peak_builds = max(self.peak_builds, len(self.active))
        session.console.info(f"{job.module}: line 1")
        time.sleep(0.05)
        session.console.info(f"{job.module}: line 2")
        with self.lock:
            del self.active[job.module]
            self.done.append(job.module)
        return 0


class _Capture(Console):
    def __init__(self) -> None:
        super().__init__()
        self.text: List[str] = []

    def _write(self, stream: object, text: str) -> None:
        self.text.append(text)


@pytest.mark.parametrize("budget", [1, 2, 3, 5])
def test_executor_keeps_the_budget_and_the_order(tmp_path: Path, budget: int) -> None:
    console = _Capture()
    session = Session(settings=Settings(dkms_tree=tmp_path, parallel_jobs=str(budget)), console=console)
    jobs = [Job(f"m{i}", "1", T, ("m0",) if i in (4, 5) else ()) for i in range(7)]
    rec = _Recorder()
    executor = Executor(session, budget)
    outcomes = executor.run(jobs, rec.work)
    assert all(o.code == 0 for o in outcomes.values())
    assert rec.peak_jobs <= budget
    if budget > 1:
        assert rec.peak_builds > 1, "independent jobs should overlap"
    # each job's lines are printed together, in plan order
    lines = [t.strip() for t in "".join(console.text).splitlines() if t.strip()]
    assert lines == [f"m{i}: line {n}" for i in range(7) for n in (1, 2)]
