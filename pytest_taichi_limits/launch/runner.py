"""Which child runs each supervised test: start mode, isolation, and the workers' lifetimes.

A *worker* is one supervised child (forked, or a fresh interpreter from the zygote) that runs
tests one at a time on command. Tests share a worker when they share a key:
- isolation `test` (default): a forked child per test; a module that needs a fresh interpreter
  (launch/startplan.py) runs all its tests in one worker, as they share module state in plain
  pytest;
- isolation `module`: one worker per module, forked or fresh;
- isolation `session`: one forked worker (and one fresh one, where modules need it) for all.
A worker lives while consecutive tests share its key; a violation or a crash ends it, and the
next test with that key starts a new one. Each test keeps its own budget, figures and report.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import pytest

from ..child.loop import ChildStart, run_forked
from ..child.session import reimport_worker
from ..config.budget import Budget
from ..config.settings import BUDGET_KEY, LEAK_ROUNDS_KEY, Settings
from ..ipc.requests import WorkerRequest, fingerprint
from ..measure import cgroup
from ..measure.meter import MemoryMethod, MemoryPlan, MeterError, choose, memory_for
from ..model.records import Admitted, RunResult
from ..supervise.supervisor import STOP_TIMEOUT_S, Worker, WorkerGone
from ..taichi_support import reinit
from . import forksafety, startplan
from .forking import ChildBody, ForkLaunch, LaunchError
from .spawn import SpawnError, SpawnLaunch, Zygote, new_temp_dir, worker_args


def _supervised(item: pytest.Item) -> bool:
    return BUDGET_KEY in item.stash  # plugin.py puts each supervised test's budget there


@dataclass(frozen=True)
class Key:
    mode: str  # "fork" or "spawn"
    scope: str  # a nodeid, a module path, or "session"


class Refused(Exception):
    """The test cannot start as configured; the message is its failure text."""


class Runner:
    """Owns the workers, the zygote and the start plan of one pytest process."""

    def __init__(
        self, config: pytest.Config, settings: Settings, recorder: startplan.InitRecorder
    ) -> None:
        self.config = config
        self.settings = settings
        self.recorder = recorder
        self.modules: dict[str, startplan.ModuleStart] = {}
        self._items: list[pytest.Item] = []
        self._index: dict[str, int] = {}
        self._isolation: dict[str, str] = {}
        self._worker: Worker | None = None
        self._worker_key: Key | None = None
        self._worker_env: dict[str, str] = {}
        self._worker_items: list[pytest.Item] = []
        self._cgroup: cgroup.TestCgroup | None = None  # the current worker's, where writable
        self._cgroups_made = 0
        #: how memory is measured (measure/meter.py); chosen by `choose_memory`, in the
        #: process that launches workers, before any test runs
        self.memory_plan: MemoryPlan | None = None
        self._zygote: Zygote | None = None
        self._cuda: str | None = None
        self._temp_dir: str | None = None
        self._count = 0
        # Unsupervised tests that have not run yet (under xdist: or that run in another worker):
        # pytest runs them in this process, on its Taichi state.
        self._plain_left: set[str] = set()
        self._kept: str | None = None  # keeps_taichi_state(), while _kept_known
        self._kept_known = False

    def choose_memory(self) -> MemoryPlan:
        """The memory method of this run (--taichi-limits-memory-method), once, before any
        test: cgroups of earlier sessions whose pytest is gone are swept away first."""
        if self.memory_plan is None:
            try:
                self.memory_plan = choose(self.settings.memory_method)
            except MeterError as error:
                raise pytest.UsageError(str(error)) from None
            if self.memory_plan.support is not None:
                cgroup.sweep_stale(self.memory_plan.support.parent)
        return self.memory_plan

    # -- after collection -------------------------------------------------------------------

    def plan(self, items: list[pytest.Item], supervised: dict[str, str]) -> None:
        """`supervised`: nodeid -> isolation of every supervised item, in run order."""
        self.recorder.recording = False
        self._items = list(items)
        self._index = {item.nodeid: number for number, item in enumerate(items)}
        self._isolation = dict(supervised)
        self._plain_left = {item.nodeid for item in items if item.nodeid not in supervised}
        self._kept_known = False
        modules = {
            str(item.path): getattr(item, "module", None)
            for item in items
            if item.nodeid in supervised
        }
        conftests = [str(path) for path in _conftest_paths(self.config)]
        self.modules = startplan.plan_modules(
            modules, self.recorder.events, conftests, str(self.config.rootpath)
        )
        self._cuda = forksafety.cuda_initialised_here()
        if self._cuda is not None:  # "Cannot re-initialize CUDA in forked subprocess"
            self.modules = {path: startplan.ModuleStart(True, self._cuda) for path in self.modules}
        kept = self.settings.mode == "auto" and self.keeps_taichi_state() is not None
        if self.modules and (self._fresh_kind() == "spawn" or kept):
            self._start_zygote()  # warms up while the forked (or unsupervised) tests run

    def plain_test_starts(self, item: pytest.Item) -> None:
        """pytest is about to run an unsupervised test here itself."""
        self._plain_left.discard(item.nodeid)
        self._kept_known = False  # it may make or drop Taichi objects here

    def keeps_taichi_state(self) -> str | None:
        """Why the next supervised test must start without a Taichi reset here (None: it may).

        A fork needs `ti.reset()` in this process first, and the reset destroys every field and
        ndarray of its program. Unsupervised tests that are still to run here may use those
        (a module that makes a field at import, a fixture that holds one): while any is alive,
        supervised tests start in a fresh interpreter instead, and this process is left alone.
        Without any such object, the reset is harmless: the init is replayed on the next use.
        """
        if not self._kept_known:  # asked per test and per candidate: decided once per test
            self._kept, self._kept_known = self._taichi_state_kept(), True
        return self._kept

    def _taichi_state_kept(self) -> str | None:
        if not self._plain_left or not reinit.taichi_initialised():
            return None
        held = self.recorder.held.describe()
        if held is None:
            return None
        left = len(self._plain_left)
        return (
            f"the pytest process holds {held} that {left} unsupervised "
            f"test{'s' if left != 1 else ''} still to run there may use, and a fork would "
            "need a Taichi reset there first"
        )

    def _fresh_kind(self) -> str:
        """How a module that cannot simply fork starts: imported again in a forked child
        (after a Taichi reset here), or in a fresh interpreter where nothing in this process
        can be reset (CUDA initialised by another library) or spawn mode was asked for."""
        return "spawn" if self.settings.mode == "spawn" or self._cuda is not None else "reimport"

    def header_lines(self) -> list[str]:
        rootpath = self.config.rootpath
        fresh = {path: plan for path, plan in self.modules.items() if plan.fresh}
        kept = None if self.settings.mode == "spawn" else self.keeps_taichi_state()
        lines: list[str] = []
        if self.settings.mode == "spawn":
            lines.append(
                "taichi-limits: start mode spawn (--taichi-limits-mode=spawn): every "
                "supervised test runs in a fresh interpreter"
            )
        elif kept is not None:
            lines.append(
                f"taichi-limits: start mode spawn while unsupervised tests remain ({kept}): "
                "supervised tests run in a fresh interpreter, so that Taichi is never reset "
                "under the unsupervised ones"
            )
        elif fresh:
            how = (
                "each in a worker of its own"
                if self.settings.isolation != "session"
                else "in one shared worker"
            )
            if self._fresh_kind() == "spawn":
                what = f"need a fresh interpreter ({how})"
            else:
                what = (
                    f"import Taichi state, and run {how} that imports them again (forked "
                    "after a Taichi reset)"
                )
            lines.append(
                f"taichi-limits: start mode fork, except {len(fresh)} of "
                f"{len(self.modules)} modules that {what}:"
            )
            for path, plan in sorted(fresh.items()):
                lines.append(f"  {os.path.relpath(path, rootpath)}: {plan.reason}")
        else:
            lines.append(
                f"taichi-limits: start mode fork for all {len(self.modules)} "
                f"supervised modules (isolation {self.settings.isolation})"
            )
        sites = self.recorder.init_sites
        if (
            sites
            and kept is None
            and self.settings.mode != "spawn"
            and len(fresh) < len(self.modules)
        ):
            shown = sites[-1].describe(rootpath)
            lines.append(
                f"taichi-limits: Taichi was initialised in the pytest process (last "
                f"ti.init at {shown}): it is reset before each fork, and that init "
                "is replayed in a forked test that uses Taichi without its own ti.init"
            )
        return lines

    # -- one test ---------------------------------------------------------------------------

    def key_of(self, item: pytest.Item) -> Key:
        module = str(item.path)
        plan = self.modules.get(os.path.abspath(module))
        isolation = self._isolation.get(item.nodeid, self.settings.isolation)
        per_isolation = {"test": item.nodeid, "module": module}.get(isolation, "session")
        if self.settings.mode == "spawn":
            return Key("spawn", per_isolation)
        fresh_reason = plan.reason if plan is not None and plan.fresh else None
        kept_reason = self.keeps_taichi_state()
        if self.settings.mode == "fork" and (fresh_reason or kept_reason):
            if fresh_reason:
                what = f"this module cannot simply be forked: {fresh_reason}"
            else:
                what = f"this test cannot simply be forked: {kept_reason}"
            raise Refused(
                f"taichi_limits: not started: --taichi-limits-mode=fork, but {what}. A forked "
                "child of a process holding Taichi state hangs at its first kernel launch. Use "
                "--taichi-limits-mode=auto, or create the Taichi state inside tests or fixtures "
                "so that fork mode works."
            )
        if fresh_reason:
            # Its tests share the module's state, as in plain pytest: one worker per module.
            kind = "spawn" if kept_reason else self._fresh_kind()
            return Key(kind, "session" if isolation == "session" else module)
        return Key("spawn" if kept_reason else "fork", per_isolation)

    def run(
        self,
        item: pytest.Item,
        nextitem: pytest.Item | None,
        budget: Budget,
        env: Mapping[str, str] | None = None,
        admission: Admitted | None = None,
    ) -> RunResult:
        """`budget`: the test's, as the budget hook left it (every other supervised item's is
        on its stash). `env`: variables for the child (the GPU admission chose): a worker
        started with other values is not reused, as CUDA reads them once. `admission`: what
        admission reserved for the test, for its usage."""
        self._kept_known = False  # what pytest's Taichi state holds now
        key = self.key_of(item)
        env = dict(env or {})
        if (
            self._worker is None
            or self._worker_key != key
            or not self._worker.alive
            or self._worker_env != env
        ):
            self.stop_worker()
            self._launch(key, item, env)
        worker = self._worker
        assert worker is not None
        index = self._worker_index(item)
        next_index = None
        if nextitem is not None and _supervised(nextitem) and self._same_key(nextitem, key):
            next_index = self._worker_index(nextitem)
        try:
            rounds = item.stash.get(LEAK_ROUNDS_KEY, None)
            result = worker.run_test(index, next_index, item.nodeid, budget, admission, rounds)
        except WorkerGone as gone:
            raise SpawnError(str(gone)) from None
        if next_index is None or not worker.alive or result.violation or result.crash:
            self.stop_worker()
        return result

    def mode_of(self, item: pytest.Item) -> str:
        """How `item` starts, or would have started: fork, reimport or spawn."""
        try:
            return self.key_of(item).mode
        except Refused:
            return "fork"  # refused because fork mode was asked for a module that needs more

    def _same_key(self, item: pytest.Item, key: Key) -> bool:
        try:
            return self.key_of(item) == key
        except Refused:
            return False

    def _worker_index(self, item: pytest.Item) -> int:
        if self._worker_key is not None and self._worker_key.mode == "fork":
            return self._index[item.nodeid]
        return next(
            number
            for number, candidate in enumerate(self._worker_items)
            if candidate.nodeid == item.nodeid
        )

    def _launch(self, key: Key, item: pytest.Item, env: dict[str, str]) -> None:
        if key.mode != "fork":
            self._worker_items = [
                candidate
                for candidate in self._items
                if _supervised(candidate) and self._same_key(candidate, key)
            ]
            self._worker_items = self._worker_items[self._worker_items.index(item) :]
        launched: ForkLaunch | SpawnLaunch
        why_not = self._new_cgroup()
        procs = None if self._cgroup is None else self._cgroup.procs_file()
        if key.mode == "spawn":
            try:
                launched = self._spawn(self._request(self._worker_items, env, procs))
            except SpawnError:
                self._close_cgroup()
                raise
        else:
            # A forked child of a process holding a Taichi program hangs: reset it here, and
            # let the child (and a plain test here) replay the init lazily.
            reinit.reset_for_fork(self.recorder.last_init)
            try:
                with _environment(env):  # the child inherits it at the fork
                    launched = ForkLaunch(self._fork_body(key), procs)
            except LaunchError as error:
                self._close_cgroup()
                raise SpawnError(str(error)) from None
        why_not = why_not or self._check_joined(launched.pid)
        self._worker = Worker(launched, self.settings, key.mode, self._memory(launched, why_not))
        self._worker_key = key
        self._worker_env = env

    def _new_cgroup(self) -> str:
        """A memory cgroup of its own for the next worker, where this run measures by
        cgroup; "" when made (or not wanted), else why it could not be made."""
        plan = self.choose_memory()
        if plan.support is None:
            return ""
        self._cgroups_made += 1
        try:
            self._cgroup = cgroup.TestCgroup.create(
                plan.support, cgroup.cgroup_name(self._cgroups_made)
            )
        except OSError as error:
            return f"the worker's memory cgroup could not be made ({error}): smaps instead"
        return ""

    def _check_joined(self, pid: int) -> str:
        """Whether the worker is in its cgroup (its keeper moved itself in before it forked
        it); "" when it is, else why the worker is measured by smaps instead."""
        if self._cgroup is None or pid in self._cgroup.pids():
            return ""
        self._close_cgroup()
        return "the worker could not join its memory cgroup: smaps instead"

    def _memory(self, launched: ForkLaunch | SpawnLaunch, why_not: str) -> MemoryMethod:
        return memory_for(
            launched.origin_pid, launched.keeper_pid, self.memory_plan, self._cgroup, why_not
        )

    def _fork_body(self, key: Key) -> ChildBody:
        if key.mode == "fork":
            self._worker_items = items = self._items
            settings = self.settings

            def run_items(channel_fd: int, stack_fd: int, control_fd: int, parent_pid: int) -> None:
                run_forked(
                    items,
                    ChildStart(channel_fd, stack_fd, control_fd, parent_pid, settings),
                )

            return run_items
        # (the keeper moved itself into the worker's cgroup: the worker is born inside)
        request = self._request(self._worker_items, {})
        return functools.partial(reimport_worker, request, startplan.project_modules())

    def _request(
        self, items: list[pytest.Item], env: dict[str, str], cgroup_procs: str | None = None
    ) -> WorkerRequest:
        args, options = worker_args(self.config)
        self._count += 1
        files = list(dict.fromkeys(str(item.path) for item in items))
        return WorkerRequest(
            tests=[fingerprint(item) for item in items],
            budgets=[item.stash[BUDGET_KEY] for item in items],
            args=[*args, f"--basetemp={self._basetemp(self._count)}", *files],
            options=options,
            invocation_dir=str(self.config.invocation_params.dir),
            settings=self.settings,
            env=env,
            cgroup_procs=cgroup_procs,
        )

    def _spawn(self, request: WorkerRequest) -> SpawnLaunch:
        try:
            return SpawnLaunch(self._start_zygote(), request)
        except SpawnError:
            self._close_zygote()  # the next test gets a new one
            raise

    def _start_zygote(self) -> Zygote:
        if self._zygote is not None and not self._zygote.usable():
            self._close_zygote()
        if self._zygote is None:
            self._temp_dir = self._temp_dir or new_temp_dir()
            self._zygote = Zygote.start(
                self.config.invocation_params.dir, startplan.third_party_modules(), self._temp_dir
            )
        return self._zygote

    def _basetemp(self, number: int) -> str:
        given = self.config.getoption("basetemp", None)
        if given:
            # pytest makes the worker's --basetemp without parents, and this run's own
            # basetemp may not exist yet (it is made on first use).
            root = os.path.abspath(str(given))
            os.makedirs(root, exist_ok=True)
            return os.path.join(root, f"taichi-limits-spawn-{number}")
        self._temp_dir = self._temp_dir or new_temp_dir()
        return os.path.join(self._temp_dir, str(number))

    # -- ending -----------------------------------------------------------------------------

    def stop_worker(self) -> None:
        worker, self._worker, self._worker_key = self._worker, None, None
        if worker is not None:
            try:
                worker.stop(STOP_TIMEOUT_S)
            finally:
                worker.close()
        self._close_cgroup()

    def _close_cgroup(self) -> None:
        if self._cgroup is not None:
            # Whatever of the test is left, wherever it was re-parented: killed, then the
            # cgroup removed (a deadline each; what a SIGKILL of pytest leaves, the next
            # session's sweep removes).
            self._cgroup.kill()
            self._cgroup.remove(cgroup.REMOVE_DEADLINE_S)
            self._cgroup = None

    def _close_zygote(self) -> None:
        if self._zygote is not None:
            self._zygote.close()
            self._zygote = None

    def close(self) -> None:
        self.stop_worker()
        self._close_zygote()
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None


def _conftest_paths(config: pytest.Config) -> list[str]:
    paths = []
    for plugin in config.pluginmanager.get_plugins():
        path = getattr(plugin, "__file__", None)
        if path and os.path.basename(path) == "conftest.py":
            paths.append(path)
    return paths


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """os.environ with `values` set for the block, then as it was."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
