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

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass

import pytest

from ..child.loop import ChildStart, prepare_fork_server, run_forked
from ..child.session import reimport_worker
from ..config.budget import Budget
from ..config.settings import BUDGET_KEY, LEAK_ROUNDS_KEY, Settings
from ..config.units import counted
from ..ipc.protocol import ForkOrder, RunCommand, decode_command
from ..ipc.requests import WorkerRequest, decode_reimport, encode_reimport, fingerprint
from ..measure import cgroup
from ..measure.memory import rollup
from ..measure.meter import MemoryMethod, MemoryPlan, MeterError, choose, memory_for
from ..model.records import Admitted, RunResult
from ..supervise.supervisor import STOP_TIMEOUT_S, Worker, WorkerGone
from ..taichi_support import reinit
from . import forksafety, startplan
from .forkserver import ChildBody, ChildFds, ForkServer, LaunchError, ServerLaunch
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
        #: forks every fork-mode and reimport worker (launch/forkserver.py); started at the
        #: first one, replaced when a test stopped or killed it, or when pytest ran an
        #: unsupervised test since (its children would not see what that test changed)
        self._server: ForkServer | None = None
        self._server_stale = False
        #: the cgroup the server moved (or is moving) into: the next forked worker's
        self._server_cgroup: cgroup.TestCgroup | None = None
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

    def session_starts(self) -> None:
        """Before the first test: the fork server, where a supervised test will be forked and
        nothing of pytest's Taichi state is kept for unsupervised tests (starting it resets
        Taichi here). Started now, it is there before any test, as pytest's other children
        are; otherwise it is started at the first forked test."""
        if self.settings.mode == "spawn" or self._cuda is not None:
            return
        if self.keeps_taichi_state() is not None:
            return
        if any(_supervised(item) and self.mode_of(item) != "spawn" for item in self._items):
            server = self._fork_server()
            if self.choose_memory().support is not None:
                self._order_server_cgroup(server)  # in the first worker's cgroup, in time

    def session_ends(self) -> None:
        """After the last test: the last worker stops (its fixtures torn down), and the fork
        server leaves (no test is forked any more)."""
        try:
            self.stop_worker()
        finally:
            self._close_server()

    def plain_test_starts(self, item: pytest.Item) -> None:
        """pytest is about to run an unsupervised test here itself."""
        self._plain_left.discard(item.nodeid)
        self._kept_known = False  # it may make or drop Taichi objects here
        self._server_stale = True  # and change what the next supervised test should inherit

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
            f"the pytest process holds {held} that {counted(left, 'unsupervised test')} "
            "still to run there may use, and a fork would "
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
                if self.settings.isolation == "test"
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
            # Its tests share the module's state, as in plain pytest: one worker per module
            # with isolation test. With module (or session) isolation, consecutive modules
            # that import Taichi state share one worker: in plain pytest they share that
            # state in one process too (the application module that called ti.init at import
            # is imported once), and each worker would import and initialise it again.
            kind = "spawn" if kept_reason else self._fresh_kind()
            return Key(kind, module if isolation == "test" else "session")
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
        launched: ServerLaunch | SpawnLaunch
        if key.mode == "spawn":
            why_not = self._new_cgroup()
            procs = None if self._cgroup is None else self._cgroup.procs_file()
            try:
                launched = self._spawn(self._request(self._worker_items, env, procs))
            except SpawnError:
                self._close_cgroup()
                raise
            why_not = why_not or self._check_joined(launched.pid)
        else:
            launched, why_not = self._fork_launch(key, env)
        self._worker = Worker(launched, self.settings, key.mode, self._memory(launched, why_not))
        self._worker_key = key
        self._worker_env = env

    def _fork_launch(self, key: Key, env: dict[str, str]) -> tuple[ServerLaunch, str]:
        """A worker forked by the fork server: unborn until its first test (it is forked with
        that test's command), or, for a reimport worker, started now; and why it is not
        measured by cgroup, if it is not."""
        if key.mode == "fork":
            self._worker_items = self._items
        server = self._fork_server()
        why_not = self._take_server_cgroup(server)
        request = None
        if key.mode != "fork":
            request = encode_reimport(
                self._request(self._worker_items, {}), startplan.project_modules()
            )
        try:
            launched = ServerLaunch(server, env, request)
            if launched.unborn and self._cgroup is None and self._maps_shared_memory(server):
                # The smaps method cannot know what such a child holds at birth: it reports
                # ready, and its start figures are read while it waits, as before.
                launched.start(None)
        except LaunchError as error:
            self._close_cgroup()
            raise SpawnError(str(error)) from None
        if self.memory_plan is not None and self.memory_plan.support is not None:
            launched.after_start = lambda: self._order_server_cgroup(server)
            if not launched.unborn:
                self._order_server_cgroup(server)
        return launched, why_not

    def _fork_server(self) -> ForkServer:
        """The fork server, started (or replaced) now if it has to be."""
        if self._server is not None and (self._server_stale or not self._server.usable()):
            self._close_server()
        if self._server is None:
            # A forked child of a process holding a Taichi program hangs: reset it here (once
            # per server), and let the children (and a plain test here) replay the init lazily.
            reinit.reset_for_fork(self.recorder.last_init)
            items = self._items
            self._server = ForkServer(self._child_body(), lambda: prepare_fork_server(items))
            self._server_stale = False
        return self._server

    def _child_body(self) -> ChildBody:
        """What a child of the fork server runs: the collected items (inherited, as the server
        was forked after collection), or a reimport worker's session."""
        items, settings = self._items, self.settings

        def run_child(fds: ChildFds, order: ForkOrder) -> None:
            if order.request is not None:
                request, modules = decode_reimport(order.request)
                reimport_worker(
                    request, modules, fds.channel, fds.stack, fds.control, fds.parent_pid
                )
            first = None if order.first is None else decode_command(order.first.encode())
            start = ChildStart(fds.channel, fds.stack, fds.control, fds.parent_pid, settings)
            run_forked(items, start, first if isinstance(first, RunCommand) else None)

        return run_child

    def _maps_shared_memory(self, server: ForkServer) -> bool:
        """Whether the server maps shared memory (tmpfs, memfd, MAP_SHARED) that its children
        inherit: read once per server, from its smaps_rollup."""
        if server.maps_shared_memory is None:
            figures = rollup(server.pid)
            server.maps_shared_memory = figures is None or figures.get("Pss_Shmem", 0) > 0
        return server.maps_shared_memory

    def _take_server_cgroup(self, server: ForkServer) -> str:
        """The cgroup the server sits in becomes the new worker's (the server moved in while
        the last worker ran); "" when it is (or none is wanted), else why not."""
        plan = self.choose_memory()
        if plan.support is None:
            return ""
        if self._server_cgroup is None:
            why_not = self._order_server_cgroup(server)
            if why_not:
                return why_not
        error = server.moved()
        self._cgroup, self._server_cgroup = self._server_cgroup, None
        if not error:
            return ""
        # It is still where it was: replaced before the next worker, and the cgroup dropped.
        self._close_cgroup()
        self._close_server()
        return f"the worker could not be born in its memory cgroup ({error}): smaps instead"

    def _order_server_cgroup(self, server: ForkServer) -> str:
        """Make the next worker's cgroup and order the server into it (while the current
        worker runs, if there is one); "" when ordered, else why it could not be made."""
        made = self._make_cgroup()
        if isinstance(made, str):
            return made
        self._server_cgroup = made
        server.move_to(made.procs_file())
        return ""

    def _new_cgroup(self) -> str:
        """A memory cgroup of its own for the next (spawn-mode) worker, where this run
        measures by cgroup; "" when made (or not wanted), else why it could not be made."""
        if self.choose_memory().support is None:
            return ""
        made = self._make_cgroup()
        if isinstance(made, str):
            return made
        self._cgroup = made
        return ""

    def _make_cgroup(self) -> cgroup.TestCgroup | str:
        """A new memory cgroup, or why it could not be made."""
        plan = self.choose_memory()
        assert plan.support is not None
        self._cgroups_made += 1
        try:
            return cgroup.TestCgroup.create(plan.support, cgroup.cgroup_name(self._cgroups_made))
        except OSError as error:
            return f"the worker's memory cgroup could not be made ({error}): smaps instead"

    def _check_joined(self, pid: int) -> str:
        """Whether the worker is in its cgroup (its keeper moved itself in before it forked
        it); "" when it is, else why the worker is measured by smaps instead."""
        if self._cgroup is None or pid in self._cgroup.pids():
            return ""
        self._close_cgroup()
        return "the worker could not join its memory cgroup: smaps instead"

    def _memory(self, launched: ServerLaunch | SpawnLaunch, why_not: str) -> MemoryMethod:
        return memory_for(
            launched.origin_pid, launched.keeper_pid, self.memory_plan, self._cgroup, why_not
        )

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
        found, self._cgroup = self._cgroup, None
        if found is not None:
            _end_cgroup(found, self._server)

    def _close_server(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()  # it kills whatever is left below it, and leaves
        found, self._server_cgroup = self._server_cgroup, None
        if found is not None:
            _end_cgroup(found, None)

    def _close_zygote(self) -> None:
        if self._zygote is not None:
            self._zygote.close()
            self._zygote = None

    def close(self) -> None:
        self.stop_worker()
        self._close_server()
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


def _end_cgroup(found: cgroup.TestCgroup, server: ForkServer | None) -> None:
    """Whatever of the test is left in `found`, wherever it was re-parented: killed, then the
    cgroup removed (a deadline each; what a SIGKILL of pytest leaves, the next session's sweep
    removes). The fork server, which moved in to fork the worker, has moved on to the next
    worker's cgroup by now (its answer is waited for); it is never killed here."""
    spared: set[int] = set()
    if server is not None:
        server.moved()
        spared.add(server.pid)
    found.kill(spare=spared)
    found.remove(cgroup.REMOVE_DEADLINE_S)
