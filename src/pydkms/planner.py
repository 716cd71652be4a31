"""Many (module, version, kernel, arch) jobs at once: dependency order and one budget of make jobs.

A request that touches several modules or kernels (``build``/``install`` with several ``-k``,
``--all-kernels``, ``autoinstall``, ``kernel_postinst``, ``match``) becomes a list of :class:`Job`.
A job may name modules it needs on the same target (BUILD_DEPENDS); it starts only when each of them
ended in 0 or 77, or is satisfied outside the plan. The :class:`Executor` runs ready jobs in worker
threads at the same time, under one global budget of make jobs (spec defects.md P-04: ``-j`` /
``parallel_jobs``, capped by a ``-j`` in the caller's ``MAKEFLAGS``; concurrent makes get a share
each, never the whole budget). Commits (installs) happen one at a time under :attr:`commit_lock`;
depmod runs once per affected kernel at the end. Every job writes into its own buffered console;
the buffers are printed whole, in job order, so output is never interleaved, and a progress line
shows done/running/failed while stdout is a terminal.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import threading
import traceback
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Set, TextIO, Tuple

from . import runner
from .errors import DkmsError
from .failure import contained
from .output import Console
from .session import Session
from .tree import Target

#: exit status of a job whose dependencies can never be met (it was not attempted)
UNRESOLVED = -1


@dataclass(frozen=True)
class Job:
    """Build (and optionally install) module/version for one target."""

    module: str
    version: str
    target: Target
    #: module names that must be resolved on the same target before this job starts
    needs: Tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.module}/{self.version} for {self.target.kernel} ({self.target.arch})"


@dataclass
class Outcome:
    code: int
    #: for UNRESOLVED jobs: the dependency names that were never satisfied
    missing: Tuple[str, ...] = ()


# ---- the budget ------------------------------------------------------------------------------------
_MAKEFLAGS_J = re.compile(r"(?:^|\s)(?:-j|--jobs=?)\s*(\d+)")


def makeflags_cap(makeflags: str) -> Optional[int]:
    """The ``-jN`` of a MAKEFLAGS value (GNU make writes ``-jN``, older ones a bare first word ``jN``)."""
    m = _MAKEFLAGS_J.search(makeflags)
    if m:
        return int(m.group(1))
    words = makeflags.split()
    if words and not words[0].startswith("-"):
        m = re.search(r"j(\d+)", words[0])
        if m:
            return int(m.group(1))
    return None


def job_budget(parallel_jobs: str, makeflags: str = "") -> Optional[int]:
    """The global number of make jobs, or None for unlimited (``-j0`` and no cap)."""
    try:
        n: Optional[int] = int(parallel_jobs)
    except ValueError:
        n = 1
    if n is not None and n <= 0:
        n = None
    cap = makeflags_cap(makeflags)
    if cap is not None and cap > 0:
        n = cap if n is None else min(n, cap)
    return n


def shares(free: int, count: int) -> List[int]:
    """Split ``free`` make jobs among ``count`` builds starting now (each gets at least one)."""
    count = max(1, min(count, free))
    base, extra = divmod(free, count)
    return [base + (1 if i < extra else 0) for i in range(count)]


# ---- dependency order (pure; the executor follows the same rules) ---------------------------------
def simulate(
    jobs: Sequence[Job],
    result: Callable[[Job], int],
    satisfied: Callable[[str, Target], bool],
) -> Tuple[List[Job], Dict[Job, Outcome]]:
    """Run the plan sequentially with ``result`` standing for each job; return order and outcomes.

    This is the reference the executor's scheduling obeys: used by tests on generated graphs.
    """
    order: List[Job] = []

    def attempt(job: Job) -> int:
        order.append(job)
        return result(job)

    return order, _drain(_Schedule(jobs, satisfied), attempt)


def _drain(sched: _Schedule, attempt: Callable[[Job], int]) -> Dict[Job, Outcome]:
    """Attempt the first ready job until none is ready, one at a time; what is left is unresolved."""
    while True:
        ready = sched.ready()
        if not ready:
            break
        job = ready[0]
        sched.start(job)
        sched.finish(job, attempt(job))
    sched.close()
    return sched.outcomes


class _Schedule:
    """Which jobs may start, given what finished (not thread-safe: the executor holds a lock)."""

    def __init__(self, jobs: Sequence[Job], satisfied: Callable[[str, Target], bool]) -> None:
        self.jobs = list(jobs)
        self.by_key: Dict[Tuple[str, Target], Job] = {}
        for j in self.jobs:
            self.by_key.setdefault((j.module, j.target), j)
        self.satisfied = satisfied
        self.pending: List[Job] = list(self.jobs)
        self.running: Set[Job] = set()
        self.outcomes: Dict[Job, Outcome] = {}

    def _dep_state(self, job: Job, name: str) -> str:
        """'ok', 'wait' or 'never' for one dependency name of ``job``."""
        if name == job.module:
            return "never"  # self-dependency
        dep = self.by_key.get((name, job.target))
        if dep is None:
            return "ok" if self.satisfied(name, job.target) else "never"
        outcome = self.outcomes.get(dep)
        if outcome is None:
            return "wait"
        return "ok" if outcome.code in (0, 77) else "never"

    def ready(self) -> List[Job]:
        """Pending jobs whose dependencies are all met, in plan order; drops the hopeless ones."""
        out: List[Job] = []
        progress = True
        while progress:
            progress = False
            for job in list(self.pending):
                states = [self._dep_state(job, n) for n in job.needs]
                if "never" in states:
                    missing = tuple(n for n, s in zip(job.needs, states) if s != "ok")
                    self.pending.remove(job)
                    self.outcomes[job] = Outcome(UNRESOLVED, missing)
                    progress = True  # its dependents may now be hopeless too
                elif all(s == "ok" for s in states) and job not in out:
                    out.append(job)
        return out

    def start(self, job: Job) -> None:
        self.pending.remove(job)
        self.running.add(job)

    def finish(self, job: Job, code: int) -> None:
        self.running.discard(job)
        self.outcomes[job] = Outcome(code)

    def close(self) -> None:
        """Nothing runs and nothing is ready: what is left waits on a cycle."""
        for job in self.pending:
            missing = tuple(n for n in job.needs if self._dep_state(job, n) != "ok")
            self.outcomes[job] = Outcome(UNRESOLVED, missing)
        self.pending = []


# ---- output ------------------------------------------------------------------------------------------
class BufferedConsole(Console):
    """A job's console: everything is kept, in order, and printed whole when the job's turn comes."""

    def __init__(self, parent: Console) -> None:
        super().__init__()
        self.quiet = parent.quiet
        self.verbose = parent.verbose
        self.chunks: List[Tuple[bool, str]] = []  # (to stderr?, text)

    def _write(self, stream: TextIO, text: str) -> None:
        if not self.quiet:
            self.chunks.append((stream is self.err, text))

    @property
    def out(self) -> TextIO:
        return sys.stdout

    @property
    def err(self) -> TextIO:
        return sys.stderr

    def replay(self, target: Console) -> None:
        for to_err, text in self.chunks:
            target.raw(text, to_err)
        self.chunks = []


class Progress:
    """``[3/8 done, 2 running, 1 failed]`` on one terminal line, redrawn in place."""

    def __init__(self, console: Console, total: int) -> None:
        self.console = console
        self.total = total
        self.enabled = total > 1 and not console.quiet and _isatty(console.out)
        self.shown = False

    def show(self, done: int, running: int, failed: int) -> None:
        if not self.enabled:
            return
        text = f"[{done}/{self.total} done, {running} running, {failed} failed]"
        self.console.raw(f"\r\x1b[K{text}", False)
        self.shown = True

    def clear(self) -> None:
        if self.enabled and self.shown:
            self.console.raw("\r\x1b[K", False)
            self.shown = False


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _attempt(work: Callable[[Session, Job], int], js: Session, job: Job, trailer: Optional[str]) -> int:
    """Run one job, turning its failure into an exit status and a report on its console."""
    try:
        code = work(js, job)
    except DkmsError as exc:
        js.console.info("")
        js.console.failure(exc)
        code = exc.code
    except Exception as exc:  # anything that goes wrong in one job must not take the others down
        if runner.DEBUG:
            js.console.raw(traceback.format_exc(), True)
        error = contained(exc, f"{job.module}/{job.version} for {job.target.kernel} ({job.target.arch})")
        js.console.info("")
        js.console.failure(error)
        code = error.code
    if trailer is not None:
        js.console.info(trailer)
    return code


# ---- the executor --------------------------------------------------------------------------------------
@dataclass
class Executor:
    """Runs a plan of jobs; see the module docstring."""

    session: Session
    #: make jobs for all concurrent builds together; None = unlimited
    budget: Optional[int] = None
    #: held while a job commits (installs): one commit at a time
    commit_lock: threading.Lock = field(default_factory=threading.Lock)
    #: (kernel, arch) pairs whose depmod was deferred to the end
    depmod_kernels: List[Tuple[str, str]] = field(default_factory=list)

    @classmethod
    def for_session(cls, session: Session) -> Executor:
        return cls(session, job_budget(session.settings.parallel_jobs, os.environ.get("MAKEFLAGS", "")))

    @property
    def slots(self) -> int:
        return self.budget if self.budget is not None else max(1, os.cpu_count() or 1)

    def job_session(self, job: Job, share: Optional[int], console: Console, private_build: bool) -> Session:
        settings = self.session.settings
        if share is not None:
            settings = dataclasses.replace(settings, parallel_jobs=str(share))
        return dataclasses.replace(
            self.session,
            settings=settings,
            console=console,
            private_build=private_build,
            depmod_sink=self.defer_depmod,
        )

    def defer_depmod(self, kernel: str, arch: str) -> None:
        if (kernel, arch) not in self.depmod_kernels:
            self.depmod_kernels.append((kernel, arch))

    def run(
        self,
        jobs: Sequence[Job],
        work: Callable[[Session, Job], int],
        *,
        satisfied: Callable[[str, Target], bool] = lambda _n, _t: True,
        header: Optional[Callable[[Job], str]] = None,
        trailer: Optional[str] = None,
    ) -> Dict[Job, Outcome]:
        """Run every job (``work(job_session, job)`` in a worker thread); return their outcomes.

        ``header(job)`` is printed before a job's output and ``trailer`` after it. With one slot (or
        one job) the jobs run one after the other in this thread, printing as they go.
        """
        session = self.session
        # create what the job sessions share before they are cloned: conf cache, pipeline
        session.confs  # noqa: B018
        session.pipeline  # noqa: B018
        session.announce_directives()
        sched = _Schedule(jobs, satisfied)
        if self.slots == 1 or len(jobs) == 1:
            return self._run_sequential(sched, work, header, trailer)
        per_mv: Dict[Tuple[str, str], int] = {}
        for j in jobs:
            per_mv[(j.module, j.version)] = per_mv.get((j.module, j.version), 0) + 1
        consoles: Dict[Job, BufferedConsole] = {}
        printed = 0
        held: Dict[Job, int] = {}
        cond = threading.Condition()
        progress = Progress(session.console, len(jobs))

        def body(job: Job, js: Session) -> None:
            code = _attempt(work, js, job, trailer)
            with cond:
                sched.finish(job, code)
                held.pop(job, None)
                cond.notify_all()

        def flush() -> None:
            nonlocal printed
            while printed < len(jobs) and jobs[printed] in sched.outcomes:
                job = jobs[printed]
                printed += 1
                progress.clear()
                buf = consoles.get(job)
                outcome = sched.outcomes[job]
                if buf is None:  # never started
                    if outcome.code == UNRESOLVED:
                        continue
                    buf = BufferedConsole(session.console)
                buf.replay(session.console)

        threads: List[threading.Thread] = []
        with cond:
            while True:
                ready = sched.ready()
                free = self.slots - (sum(held.values()) if self.budget is not None else len(held))
                if ready and free > 0:
                    n = min(len(ready), free)
                    parts = shares(free, n) if self.budget is not None else [0] * n
                    for job, share in zip(ready[:n], parts):
                        sched.start(job)
                        held[job] = share if self.budget is not None else 1
                        buf = BufferedConsole(session.console)
                        if header is not None:
                            buf.info(header(job))
                        consoles[job] = buf
                        private = per_mv[(job.module, job.version)] > 1 and self.slots > 1
                        js = self.job_session(job, share if self.budget is not None else None, buf, private)
                        t = threading.Thread(target=body, args=(job, js), daemon=True)
                        threads.append(t)
                        t.start()
                    continue
                flush()
                if not sched.running and not ready:
                    break
                done = sum(1 for o in sched.outcomes.values() if o.code != UNRESOLVED)
                failed = sum(1 for o in sched.outcomes.values() if o.code not in (0, 77, UNRESOLVED))
                progress.show(done, len(sched.running), failed)
                cond.wait(timeout=0.5)
            sched.close()
            flush()
        for t in threads:
            t.join()
        progress.clear()
        return sched.outcomes

    def _run_sequential(
        self,
        sched: _Schedule,
        work: Callable[[Session, Job], int],
        header: Optional[Callable[[Job], str]],
        trailer: Optional[str],
    ) -> Dict[Job, Outcome]:
        def attempt(job: Job) -> int:
            js = self.job_session(job, None, self.session.console, False)
            if header is not None:
                js.console.info(header(job))
            return _attempt(work, js, job, trailer)

        return _drain(sched, attempt)

    def run_deferred_depmod(self) -> int:
        """depmod once per kernel that changed; returns 0, or 6 if a depmod failed."""
        from .installer import depmod_now

        status = 0
        for k, a in self.depmod_kernels:
            if not depmod_now(self.session, k, a):
                self.session.console.error(f"depmod failed for kernel {k} ({a}).")
                status = 6
        self.depmod_kernels = []
        return status
