"""Stage 2 over a prompt set on a Ray cluster: the same folder as :func:`evolve_many`.

Ray (the optional extra ``pip install 'trajectory[distributed]'``) runs a pool of
actors, :class:`EvolveWorker`; each loads the model and the SAE bank ONCE, from a
picklable :class:`WorkerSpec`, on its own GPU when ``gpus_per_worker > 0``. The driver
(:func:`evolve_many_ray`) never loads the model::

    driver                                 actors (one per worker, a GPU each if asked)
    ──────                                 ────────────────────────────────────────────
    start the actors ────────────────────► load model + bank (once)
    plan(prompts, out_dir) ──────────────► worker 0: plan_prompts — tokenise, check the
                                           settings and the existing files, as evolve_many
    rename old positional files; cut the prompts to do into the sequential run's groups
    (length_groups: similar token counts, ``batch_size`` prompts each)
    one group per idle actor ────────────► evolve_batch (ONE forward pass), write each
                                           out_dir/prompt_<hash>.safetensors atomically
    ◄──────────── per prompt: done, or why it failed
    a group whose actor died goes back to the queue (Ray restarts the actor); a group
    whose workers died ``max_attempts`` times is listed as failed with that reason
    write index.json last (one entry per prompt, in order); remove temporary files of
    writers that were killed

The output folder is the one :mod:`trajectory.evolution.batch` documents (same file
names, same ``index.json``), so a Ray run resumes a sequential one and vice versa. The
groups, hence the forward passes, are the sequential run's, so the files hold the same
tensors as :func:`evolve_many` with the same ``batch_size`` on the same kind of device
(on CPU: with as many torch threads as each worker's ``cpus_per_worker``, since the
order of float sums, hence their last bits, follows the thread count).
Files are overwritten, never appended, so a group done twice (its worker died after
writing) leaves one file per prompt and ``index.json`` one entry per prompt.

On a multi-node cluster the output folder must be on a filesystem that every node and
the driver see under the same path (NFS, a mounted bucket), and ``trajectory`` (with the
bank folder) must be installed / present on every node.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import resource
import socket
import sys
import uuid
from collections import Counter, deque
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from trajectory.evolution.batch import (
    DEFAULT_PROMPT_BATCH,
    Plan,
    evolve_batch,
    length_groups,
    plan_prompts,
    prompt_file_name,
    take_over_positional_files,
    write_index,
)

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens import HookedTransformer

    from trajectory.pipeline import EvolveConfig

log = logging.getLogger(__name__)

#: what to install when Ray is missing
EXTRA = "pip install 'trajectory[distributed]'"
#: Ray actor names: ``trajectory-evolve-<driver pid>-<random>-<i>`` (``ray.get_actor``)
WORKER_NAME = "trajectory-evolve"
#: seconds a dead worker has to come back (Ray restarts it: it loads model and bank again)
RESTART_TIMEOUT_S = 900.0
#: seconds between two probes of a restarting worker
PROBE_INTERVAL_S = 0.5
#: seconds to wait for a TCP answer from a Ray address before calling it unreachable
CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class WorkerSpec:
    """What every actor loads, once: picklable, sent to each actor.

    ``config``: the stage-2 settings (preset, bank folder, SAE dtype, device, layers and
    the engine options; see :class:`trajectory.pipeline.EvolveConfig`). ``model_factory``:
    a picklable callable with no arguments that builds the model (importable on every
    node, e.g. ``functools.partial(trajectory.testing.tiny_model, seed=0)``); default:
    the preset's model, as :func:`trajectory.pipeline.load_stage_inputs` loads it.
    """

    config: "EvolveConfig"
    model_factory: Callable[[], "HookedTransformer"] | None = None


@dataclass(frozen=True)
class RayOptions:
    """How the work is spread.

    ``address``: ``"auto"`` starts a local Ray cluster of ``workers * cpus_per_worker``
    CPUs for this run and shuts it down after; anything else is the address of a running
    cluster (``host:6379`` from ``ray start --head``, or ``ray://host:10001``). When the
    calling process is already connected (``ray.init`` done), that connection is used
    and left open. ``gpus_per_worker`` > 0 reserves that many GPUs per actor and
    computes there. ``max_attempts``: how often a group of prompts is tried when its
    worker dies (Ray restarts the actor in between) before it is listed as failed.
    """

    address: str = "auto"
    workers: int = 2
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    max_attempts: int = 3

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.gpus_per_worker < 0 or self.cpus_per_worker <= 0:
            raise ValueError("gpus_per_worker must be >= 0 and cpus_per_worker > 0 "
                             f"(got {self.gpus_per_worker}, {self.cpus_per_worker})")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")


# ----------------------------------------------------------------------------- actor
class EvolveWorker:
    """One Ray actor's state: the model, the bank and the engine options, loaded once."""

    def __init__(self, spec: WorkerSpec, gpus: float = 0.0, cpus: float = 1.0) -> None:
        import torch

        from trajectory.pipeline import load_stage_inputs, open_bank

        # as many torch threads as CPUs reserved: on CPU the float sums' order (hence the last
        # bits) depends on the thread count, so results equal a sequential run with as many
        torch.set_num_threads(max(1, int(cpus)))
        config = spec.config
        if config.device is None:  # the GPU Ray reserved (it sets CUDA_VISIBLE_DEVICES), else the CPU
            config = replace(config, device="cuda" if gpus > 0 else "cpu")
        if spec.model_factory is None:
            self.model, self.bank, device = load_stage_inputs(config)
        else:
            self.bank = open_bank(config.preset, config.bank, layers=config.layers, dtype=config.dtype)
            self.model, device = spec.model_factory().to(config.device), config.device
        self.options = config.engine_options(device)
        self.busy = 0  # prompts being evolved now

    def info(self) -> dict[str, Any]:
        """``pid``, ``host``, ``device``, ``busy`` (prompts being evolved now) and memory of
        this actor; answers during a task. ``peak_rss_bytes``: peak resident memory;
        Linux also gives the current ``rss_anon_bytes`` (private: model, work) and
        ``rss_file_bytes`` (file pages, e.g. the memory-mapped bank, shared by the
        workers of a node)."""
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        info = dict(pid=os.getpid(), host=socket.gethostname(), device=str(self.options["device"]), busy=self.busy,
                    peak_rss_bytes=int(peak if sys.platform == "darwin" else peak * 1024))
        with contextlib.suppress(OSError):
            for line in Path("/proc/self/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in ("RssAnon", "RssFile"):
                    info[f"rss_{key[3:].lower()}_bytes"] = int(value.split()[0]) * 1024
        return info

    def plan(self, prompts: Sequence[str], out_dir: str, overwrite: bool) -> "Plan":
        """The run's plan, made by :func:`~trajectory.evolution.batch.plan_prompts` as
        :func:`evolve_many` makes it (same checks, same errors); writes nothing."""
        return plan_prompts(self.model, self.bank, prompts, out_dir, overwrite=overwrite, **self.options)

    def evolve(self, group: Sequence[str], out_dir: str) -> dict[str, str | None]:
        """Evolve ``group`` (prompts of similar length) in ONE forward pass, as the
        sequential run does (:func:`~trajectory.evolution.batch.evolve_batch`), and save
        each file into ``out_dir`` atomically. Per prompt ``None`` (done) or why the group
        failed (an error that would stop a sequential run: the others go on)."""
        self.busy = len(group)
        try:
            evolutions = evolve_batch(self.model, self.bank, list(group), **self.options)
            for prompt, evo in zip(group, evolutions):
                evo.save(Path(out_dir) / prompt_file_name(prompt))
        except (ValueError, RuntimeError, MemoryError) as exc:
            log.warning("%d prompt(s) failed: %s", len(group), exc)
            return {prompt: f"{type(exc).__name__}: {_first_line(exc)}" for prompt in group}
        finally:
            self.busy = 0
        return {prompt: None for prompt in group}


# ----------------------------------------------------------------------------- driver
def evolve_many_ray(
    spec: WorkerSpec,
    prompts: Sequence[str],
    out_dir: str | Path,
    *,
    options: RayOptions | None = None,
    batch_size: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> list[Path]:
    """:func:`~trajectory.evolution.batch.evolve_many` on a Ray cluster (module docstring).

    Same folder, same resume rules, same errors for bad settings or existing files of
    other settings (raised before anything is written); prompts that cannot be evolved
    (too long, or whose workers kept dying) are logged and listed in ``index.json`` with
    their reason. ``batch_size``: prompts per forward pass, as for ``evolve_many``
    (default :data:`~trajectory.evolution.batch.DEFAULT_PROMPT_BATCH`); one group of
    them is one Ray task. Returns the paths of the evolved prompts, in the prompts' order.

    Raises:
        RuntimeError: Ray is not installed (names the extra), the address cannot be
            reached, a worker cannot load the model or bank, or the cluster has too few
            GPUs for ``workers * gpus_per_worker``.
        ValueError: as ``evolve_many`` (no prompt can be evolved, files of other settings).
    """
    options = options or RayOptions()
    if isinstance(prompts, str) or not prompts:
        raise ValueError("evolve_many_ray needs a non-empty list of prompts (one evolution file each)")
    groups_of = DEFAULT_PROMPT_BATCH if batch_size is None else int(batch_size)
    if groups_of < 1:
        raise ValueError(f"batch_size (prompts per forward pass) must be at least 1, got {batch_size}")
    out_dir = Path(out_dir)
    with ray_session(options) as ray:
        actors = _start_workers(ray, spec, options)
        try:
            plan = _plan(ray, actors, list(prompts), out_dir, overwrite, options)
            take_over_positional_files(plan, out_dir)
            groups = length_groups({p: len(plan.ids[p]) for p in plan.todo}, groups_of) if plan.todo else []
            failed = {**plan.failed, **_run_queue(ray, actors, groups, out_dir, options, progress)}
            write_index(out_dir, prompts, failed)
        finally:
            for actor in actors:
                ray.kill(actor)
    from trajectory.io import clean_stale_temp_files

    clean_stale_temp_files(out_dir)  # temporary files of workers killed mid-write
    return [out_dir / prompt_file_name(p) for p in prompts if p not in failed]


def _run_queue(ray, actors: list, groups: list[list[str]], out_dir: Path, options: RayOptions,
               progress: bool) -> dict[str, str]:
    """Hand ``groups`` out to idle actors until each is done or failed; returns the failed
    prompts with their reason. A group whose actor died is queued again, whole (the
    same forward pass as the sequential run), up to ``options.max_attempts`` times; the
    actor gets work again once Ray has restarted it (:class:`_Pool`)."""
    import time

    from tqdm.auto import tqdm

    queue = deque(enumerate(groups))
    attempts: Counter[int] = Counter()
    failed: dict[str, str] = {}
    running: dict[Any, tuple[int, int]] = {}  # task -> (actor, group)
    pool = _Pool(ray, actors)
    start, total = time.perf_counter(), sum(map(len, groups))
    with tqdm(total=total, desc="prompts", disable=not progress, unit="prompt") as bar:
        while queue or running:
            while queue and pool.idle:
                i, (g, group) = pool.idle.pop(0), queue.popleft()
                running[actors[i].evolve.remote(group, str(out_dir))] = (i, g)
            if not running and not pool.probes:  # every worker is gone
                for g, group in queue:
                    failed.update(dict.fromkeys(group, "every Ray worker died and none came back"))
                break
            ready, _ = ray.wait([*running, *pool.probes], num_returns=1)
            if pool.answered(ready[0]):
                continue
            i, g = running.pop(ready[0])
            try:
                done = _call(ray, ready[0])
            except _lost(ray) as exc:  # the worker died (killed, out of memory, node lost): Ray restarts it
                pool.probe(i)
                attempts[g] += 1
                if attempts[g] < options.max_attempts:
                    log.warning("worker %d died on a group of %d prompt(s); retrying (attempt %d of %d)",
                                i, len(groups[g]), attempts[g] + 1, options.max_attempts)
                    queue.append((g, groups[g]))
                else:
                    why = f"its worker died {attempts[g]} times ({_first_line(exc)})"
                    failed.update(dict.fromkeys(groups[g], why))
                    log.warning("giving up on %d prompt(s): %s", len(groups[g]), why)
                    bar.update(len(groups[g]))
                continue
            pool.idle.append(i)
            failed.update({p: why for p, why in done.items() if why is not None})
            bar.update(len(groups[g]))
    minutes = (time.perf_counter() - start) / 60
    log.info("evolved %d prompt(s) on %d Ray worker(s): %.1f prompts/min", total - len(failed), len(actors),
             (total - len(failed)) / minutes if minutes > 0 else float("inf"))
    return failed


class _Pool:
    """Which actors can take work: ``idle`` ones, and dead ones being ``probes``d with
    ``info`` until Ray has restarted them (a task sent while an actor restarts fails at
    once); an actor not back within :data:`RESTART_TIMEOUT_S` is given up."""

    def __init__(self, ray, actors: list) -> None:
        self.ray, self.actors = ray, actors
        self.idle = list(range(len(actors)))
        self.probes: dict[Any, int] = {}
        self.deadline: dict[int, float] = {}

    def probe(self, i: int) -> None:
        import time

        self.deadline.setdefault(i, time.monotonic() + RESTART_TIMEOUT_S)
        self.probes[self.actors[i].info.remote()] = i

    def answered(self, ref) -> bool:
        """Handle ``ref`` if it is a probe (``True``): the actor is back, or probe again."""
        import time

        if ref not in self.probes:
            return False
        i = self.probes.pop(ref)
        try:
            self.ray.get(ref)
        except _lost(self.ray):
            if time.monotonic() < self.deadline[i]:
                time.sleep(PROBE_INTERVAL_S)
                self.probe(i)
            else:
                log.warning("worker %d did not come back within %.0f s; going on without it", i, RESTART_TIMEOUT_S)
            return True
        del self.deadline[i]
        self.idle.append(i)
        return True


def _lost(ray) -> tuple[type[BaseException], ...]:
    """The errors that mean a worker process was lost, not that the work was wrong."""
    errors = ray.exceptions
    return (errors.RayActorError, errors.OutOfMemoryError, errors.WorkerCrashedError, errors.NodeDiedError)


def _plan(ray, actors: list, prompts: list[str], out_dir: Path, overwrite: bool, options: RayOptions) -> "Plan":
    """The plan, from the first worker that stays alive long enough (a worker lost while
    planning is restarted by Ray; the next one is asked)."""
    for attempt in range(options.max_attempts * len(actors)):
        i = attempt % len(actors)
        pool = _Pool(ray, actors)
        try:
            return _call(ray, actors[i].plan.remote(prompts, str(out_dir), overwrite))
        except _lost(ray) as exc:
            log.warning("worker %d was lost while planning (%s); asking again", i, _first_line(exc))
            pool.idle.clear()
            pool.probe(i)
            while pool.probes and not pool.idle:  # wait for Ray to restart it
                pool.answered(ray.wait(list(pool.probes), num_returns=1)[0][0])
            last = exc
    raise RuntimeError(f"the Ray workers kept dying while planning ({_first_line(last)}); see the Ray logs "
                       "(out of memory? `ray status`)")


def _start_workers(ray, spec: WorkerSpec, options: RayOptions) -> list:
    """``options.workers`` actors, restarted by Ray when they die; refuses a cluster with
    too few GPUs (the actors would wait forever)."""
    gpus = options.gpus_per_worker
    if gpus > 0:
        have = ray.cluster_resources().get("GPU", 0)
        if have < gpus * options.workers:
            raise RuntimeError(f"{options.workers} worker(s) x {gpus} GPU need {gpus * options.workers:g} GPUs; "
                               f"the Ray cluster has {have:g}. Use fewer --workers or --gpus-per-worker")
    run = f"{WORKER_NAME}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    log.info("starting %d Ray worker(s) %s-0..%d", options.workers, run, options.workers - 1)
    cls = ray.remote(EvolveWorker)
    # max_concurrency=2: ``info`` answers while ``evolve`` runs; the driver sends one group at a time
    return [cls.options(name=f"{run}-{i}", num_cpus=options.cpus_per_worker, num_gpus=gpus, max_concurrency=2,
                        max_restarts=options.max_attempts * options.workers, max_task_retries=0).remote(spec, gpus, options.cpus_per_worker)
            for i in range(options.workers)]


def _call(ray, ref):
    """``ray.get(ref)``, raising an actor's own exception (``ValueError`` ...) as itself."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        raise (cause if isinstance(cause, BaseException) else exc) from None
    except ray.exceptions.RayActorError as exc:
        if getattr(exc, "actor_init_failed", False):  # a bad spec: every restart would fail the same way
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            raise RuntimeError(f"a Ray worker could not load the model or the SAE bank: {lines[-1]}") from None
        raise


# ----------------------------------------------------------------------------- Ray session
def import_ray():
    """The ``ray`` module; ``RuntimeError`` naming the extra when it is not installed."""
    try:
        import ray
    except ImportError as err:
        raise RuntimeError(f"--ray needs Ray, an optional extra: {EXTRA}") from err
    return ray


@contextmanager
def ray_session(options: RayOptions) -> Iterator[Any]:
    """Connected to Ray for the ``with`` block: the caller's connection when there is one
    (left open), else a local cluster (``address="auto"``) or the cluster at
    ``options.address``; what this opened is shut down after."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    if options.address == "auto":
        cpus = max(1, math.ceil(options.workers * options.cpus_per_worker))
        ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING,
                 configure_logging=False, log_to_driver=True)
    else:
        check_reachable(options.address)
        try:
            ray.init(address=options.address, logging_level=logging.WARNING, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise RuntimeError(f"could not join the Ray cluster at {options.address!r}: {_first_line(err)}. "
                               "Start one with `ray start --head` and pass the address it prints, "
                               "or use --ray auto for a local cluster") from err
    try:
        yield ray
    finally:
        ray.shutdown()


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse quickly (``RuntimeError``) a Ray address nothing answers on, before Ray's own
    long retries: ``host:port`` or ``ray://host:port``."""
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise RuntimeError(f"Ray address {address!r} is not host:port (e.g. 10.0.0.5:6379 from `ray start "
                           "--head`, or ray://host:10001); use --ray auto for a local cluster")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as err:
        raise RuntimeError(f"cannot reach a Ray cluster at {address!r} ({err}); start one with `ray start --head` "
                           "on the head node and pass the address it prints, or use --ray auto for a local "
                           "cluster") from err


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


__all__ = ["EvolveWorker", "RayOptions", "WorkerSpec", "check_reachable", "evolve_many_ray", "import_ray",
           "ray_session"]
