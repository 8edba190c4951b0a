"""``umx-separate --engine ray``: a catalogue separated by Ray tasks and actors.

Each track flows through three stages, chained by Ray object references so the
driver never holds audio: ``decode`` (a CPU task) -> ``SeparationWorker.separate_group``
(an actor holding the model, on a GPU or CPUs, taking ``--tracks-per-call`` tracks at
once so that their segments share batches) -> ``write`` (a CPU task that
encodes, stores the stems and then the track's ``_done.json``; tracks over
``--stream-over`` seconds are read and stored by their actor instead). The driver keeps
at most ``--max-in-flight`` tracks in the pipeline, so memory stays bounded
whatever the catalogue's size; it waits for any one to finish and submits the
next. Why tasks and actors rather than Ray Data: docs/catalogue.md.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import functools
import logging
import math
import os
import re
import secrets
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

from .. import storage
from ..errors import OpenUnmixLikeError
from ..fileio import HOST_TAG, held_lock, made_folders_removed_if_empty, process_alive, writable_folder
from ..naming import CLI_NAMES, rescale_message
from . import parse_storage_options, records
from .plan import Failure, Plan, gather_sources, make_plan
from .stages import NotShared, Options, SeparationWorker, StageError, Track, decode_or_error, write

NAMESPACE = "openunmix-like"
# A lost worker (node gone, process killed, out of memory) is retried this many times.
TASK_RETRIES = 3
ACTOR_TASK_RETRIES = 2
# A run that cannot reserve its actors and decode/write tasks within this many seconds says it waits.
RESERVE_NOTICE_S = 10.0
# A placement group part of which was lost with its node is checked this often while no track finishes, and
# given up (the run goes on with the nodes left) when Ray has found no room for that part within LOST_NODE_WAIT_S.
LOST_NODE_POLL_S = 2.0
LOST_NODE_WAIT_S = 10.0
# The hidden file a driver keeps in a local --outdir while it runs: <prefix><pid>-<host tag>-<random>, the host
# tagged as in partial files (fileio.HOST_TAG).
MARKER_PREFIX = ".umx-shared-"
MARKER_REST = re.compile(r"(?P<pid>[0-9]+)-(?P<host>[0-9a-f]{8})-[0-9a-f]+")
# Drivers writing one local --outdir take turns updating _failures.csv through this lock file.
FAILURES_LOCK = ".umx-failures.lock"


def import_ray():
    try:
        import ray
    except ImportError:
        raise OpenUnmixLikeError("--engine ray needs Ray: pip install 'openunmix-like[ray]'") from None
    return ray


def connect(address: Optional[str], verbose: bool, origin: str = "--address") -> bool:
    """Join the cluster at ``address`` or start a local Ray; return whether this call started the connection.
    ``origin`` names where the address came from in errors (``--address`` or ``RAY_ADDRESS``)."""
    ray = import_ray()
    if ray.is_initialized():  # a caller (a notebook, a test) already connected: use its cluster
        return False
    common = dict(namespace=NAMESPACE, log_to_driver=verbose,
                  logging_level=logging.INFO if verbose else logging.WARNING)
    if address:
        check_reachable(address, origin=origin)
    try:
        if address:
            ray.init(address=address, **common)
        else:
            # Ray 2.60 turns token authentication on for a new local cluster and says so in a warning there is
            # nothing to do about here (the cluster is this run's own): Ray's lines are for --verbose.
            if not verbose:
                logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
            # The local Ray reports no usage statistics, whatever the Ray build's default (nightly builds report
            # ray.init's); its processes inherit this. A cluster joined with --address keeps its own setting.
            os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
            ray.init(address="local", include_dashboard=False, **common)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"{origin} {address}" if address else "a local Ray"
        hint = ("; a head node that requires a token (Ray 2.59 and later, when it finds one) needs it here too: "
                "RAY_AUTH_TOKEN from 'ray get-auth-token' on the head node" if address else "")
        reason = records.one_line(exc) or type(exc).__name__  # some of Ray's errors carry no text
        raise OpenUnmixLikeError(f"{where}: cannot start or join Ray ({reason}); "
                                 f"check 'ray status' on the head node{hint}") from None
    return True


def send_token_if_any(address: str) -> None:
    """Have Ray send this machine's authentication token, when it has one, to a cluster at ``address`` that
    requires one.

    Since Ray 2.59, ``ray start --head`` requires a token when one is stored (``~/.ray/auth_token``, made
    by any local ``ray.init()``, such as an earlier ``--engine ray`` run without ``--address``), but a
    driver given an address sends one only under ``RAY_AUTH_MODE=token``, and fails after its retries.
    A driver in that mode joins a head without authentication too, but then requires the token of the
    cluster's own calls back to it, so the cluster takes it for dead and destroys every actor it makes:
    each track failed as "the separation actor died". So the head is asked first (:func:`head_requires_token`).
    """
    if address == "auto" or os.environ.get("RAY_AUTH_MODE"):
        return
    stored = Path.home() / ".ray" / "auth_token"
    if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") or stored.is_file()):
        return
    if head_requires_token(address) is not False:  # unknown (no grpcio, no answer): send it, as before
        os.environ["RAY_AUTH_MODE"] = "token"  # the driver's only: the cluster's workers are started by its nodes


def head_requires_token(address: str, timeout: float = 5.0) -> Optional[bool]:
    """Whether the Ray head at ``HOST:PORT`` refuses a call without a token; ``None`` where it cannot tell.

    One gRPC call to the head's GCS without credentials, as Ray's own first call (its cluster ID), made
    with grpcio rather than Ray: Ray reads its authentication mode once a process, at its first call.
    """
    if "://" in address:
        return None
    try:
        import grpc
    except ImportError:
        return None
    try:
        with grpc.insecure_channel(address) as channel:
            channel.unary_unary("/ray.rpc.NodeInfoGcsService/GetClusterId")(b"", timeout=timeout)
    except grpc.RpcError as exc:
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        return True if code == grpc.StatusCode.UNAUTHENTICATED else None
    except ValueError:  # not an address grpc can parse; check_reachable names it
        return None
    return False


def address_from_environment() -> Optional[str]:
    """``RAY_ADDRESS``, which Ray's own ``ray.init()`` joins when it is set (clusters set it for their jobs
    and shells), unless empty or ``local``: the cluster ``--engine ray`` joins without ``--address``."""
    address = os.environ.get("RAY_ADDRESS", "").strip()
    return address if address and address != "local" else None


def check_reachable(address: str, timeout: float = 5.0, origin: str = "--address") -> None:
    """Fail at once, with one line, when nothing listens at ``HOST:PORT`` (Ray itself retries for minutes)."""
    import socket

    if address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as exc:
        fix = ("start one with 'ray start --head' and pass the address it prints" if origin == "--address" else
               f"start one with 'ray start --head', or unset {origin} to start a local Ray")
        raise OpenUnmixLikeError(f"{origin} {address}: no Ray head node answers there ({exc}); {fix}") from None


def actor_layout(args: argparse.Namespace, resources: Dict[str, float]) -> Tuple[int, dict]:
    """How many separation actors, and the Ray resources each holds."""
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    if args.device == "cuda":
        if gpus <= 0:
            raise OpenUnmixLikeError("--device cuda: the Ray cluster has no GPUs; use --device cpu "
                                     "or add GPU nodes ('ray status' lists them)")
        count = args.actors or max(1, int(gpus // args.actor_gpus))
        if count * args.actor_gpus > gpus:
            raise OpenUnmixLikeError(f"{count} actors x --actor-gpus {args.actor_gpus:g} need more than the "
                                     f"cluster's {gpus:g} GPUs; lower --actors or --actor-gpus")
        return count, {"num_cpus": args.actor_cpus, "num_gpus": args.actor_gpus}
    # Leave an eighth of the CPUs (at least io_cpus) to the decode and write tasks.
    spare = max(args.io_cpus, cpus / 8)
    count = args.actors or max(1, int((cpus - spare) // args.actor_cpus))
    if count * args.actor_cpus + args.io_cpus > cpus:
        raise OpenUnmixLikeError(f"{count} actors x --actor-cpus {args.actor_cpus:g} leave no room for a decode or "
                                 f"write task (--io-cpus {args.io_cpus:g}) on the cluster's {cpus:g} CPUs; "
                                 "lower --actors or --actor-cpus, or pass --io-cpus 0")
    return count, {"num_cpus": args.actor_cpus}


def check_options(args: argparse.Namespace) -> None:
    for name, value, low in (("--actors", args.actors, 1), ("--max-in-flight", args.max_in_flight, 1),
                             ("--tracks-per-call", args.tracks_per_call, 1)):
        if value is not None and value < low:
            raise OpenUnmixLikeError(f"{name} must be at least {low}")
    if not math.isfinite(args.stream_over) or args.stream_over < 0:
        raise OpenUnmixLikeError("--stream-over must be at least 0")
    for name, value in (("--actor-cpus", args.actor_cpus), ("--actor-gpus", args.actor_gpus),
                        ("--io-cpus", args.io_cpus)):
        if not math.isfinite(value) or value < 0 or (name != "--io-cpus" and value == 0):
            raise OpenUnmixLikeError(f"{name} must be {'at least 0' if name == '--io-cpus' else 'above 0'}")


class Progress:
    """One bar of tracks done, with hours of audio and x real time; the final summary line."""

    def __init__(self, total: int, quiet: bool):
        from tqdm import tqdm

        self.start = time.monotonic()
        self.seconds = 0.0
        self.bar = tqdm(total=total, unit="track", desc="umx-separate", disable=quiet, file=sys.stderr,
                        dynamic_ncols=True)

    def done(self, audio_seconds: float) -> None:
        self.seconds += audio_seconds
        wall = max(time.monotonic() - self.start, 1e-9)
        self.bar.set_postfix_str(f"{self.seconds / 3600:.2f} h audio, {self.seconds / wall:.1f}x real time",
                                 refresh=False)
        self.bar.update(1)

    def failed(self, message: str) -> None:
        self.bar.write(f"umx-separate: error: {message}", file=sys.stderr)
        self.bar.update(1)

    def note(self, message: str) -> None:
        """A line about a finished track (the local engine's warnings), above the bar."""
        self.bar.write(message, file=sys.stderr)

    def close(self) -> float:
        self.bar.close()
        return time.monotonic() - self.start


def _failure_of(exc: BaseException, track: Track) -> Failure:
    """``(path, stage, reason)`` of an exception ``ray.get`` raised for ``track``."""
    ray = import_ray()
    cause = getattr(exc, "cause", None) if isinstance(exc, ray.exceptions.RayTaskError) else exc
    if isinstance(cause, StageError):
        return track.source, cause.stage, str(cause)
    if isinstance(exc, ray.exceptions.RayActorError):
        return track.source, "separate", (f"{track.source}: the separation actor died "
                                          f"{ACTOR_TASK_RETRIES + 1} times on this track ({type(exc).__name__}); "
                                          "out of memory? check the node's memory, lower --stream-over or "
                                          "--batch-segments")
    if isinstance(exc, (ray.exceptions.WorkerCrashedError, ray.exceptions.ObjectLostError)):
        return track.source, "worker", (f"{track.source}: a worker was lost {TASK_RETRIES + 1} times "
                                        f"({type(exc).__name__}); check the nodes' memory and logs")
    return track.source, "ray", f"{track.source}: {type(exc).__name__}: {records.one_line(exc)}"


def execute(plan: Plan, separator, options: Options, args: argparse.Namespace, progress: Progress,
            failures: List[Failure]) -> int:
    """Push every track of ``plan.todo`` through the three stages; return how many finished.

    Failed tracks are appended to ``failures`` as they come, so an interrupted run still lists them. When a
    node holding part of the run is lost and the nodes left have no room for that part, the run reserves
    anew on the nodes left and redoes its unfinished tracks there.
    """
    ray = import_ray()

    # The model goes into the object store once; each actor (and a restarted one) fetches it from there.
    model = functools.partial(_fetch, [ray.put(separator)])
    todo, finished, lost = list(plan.todo), 0, False
    with shared_marker(args.outdir) as marker:
        options = dataclasses.replace(options, shared_marker=marker)
        while todo:
            # separator.target_names: what the actors return, before --aggregate
            done, todo = execute_on_cluster(todo, model, separator.target_names, options, args, progress, failures,
                                            lost)
            finished, lost = finished + done, True
            if todo:
                progress.bar.write(f"umx-separate: a Ray node holding part of this run was lost and the nodes left "
                                   f"have no room for that part; going on with the nodes left ({len(todo)} tracks "
                                   "to go, unfinished ones from their start)", file=sys.stderr)
    return finished


def execute_on_cluster(todo: List[Track], model, targets, options: Options, args: argparse.Namespace,
                       progress: Progress, failures: List[Failure], lost: bool = False) -> Tuple[int, List[Track]]:
    """:func:`execute` on the cluster's nodes of now, reserved at once; return how many tracks finished, and
    the tracks left unfinished when part of the reservation was lost with its node (none otherwise).

    ``lost``: a node of an earlier reservation was lost (said in the error when the nodes left are too few)."""
    ray = import_ray()
    from ray.util import remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    resources = ray.cluster_resources()
    try:
        count, actor_resources = actor_layout(args, resources)
    except OpenUnmixLikeError as exc:
        if not lost:
            raise
        raise OpenUnmixLikeError(f"a Ray node holding part of this run was lost and the nodes left cannot hold the "
                                 f"run ({exc}); finished tracks are recorded: run the same command again when the "
                                 "cluster has room") from None
    count = min(count, max(1, len(todo)))
    group = tracks_per_call(args)
    window = args.max_in_flight or (2 * count + 1) * group + 1
    reserved = reserve(count, actor_resources, io_bundles(args, resources, count, window), args.io_cpus)
    pinned = PlacementGroupSchedulingStrategy(reserved)
    io = {"num_cpus": args.io_cpus, "max_retries": TASK_RETRIES, "scheduling_strategy": pinned}
    decode_task = ray.remote(decode_or_error).options(**io)
    write_task = ray.remote(write_or_not_shared).options(**io)
    worker = ray.remote(SeparationWorker)
    threads = max(1, math.ceil(args.actor_cpus))
    # A killed actor restarts (reloading the model) in its bundle and its queued tracks are retried there.
    # Named after their placement group too: a run that reserves again names its new actors anew.
    actors = [worker.options(name=f"umx-separate-{os.getpid()}-{reserved.id.hex()[:8]}-{k}", max_restarts=-1,
                             max_task_retries=ACTOR_TASK_RETRIES, **actor_resources,
                             scheduling_strategy=PlacementGroupSchedulingStrategy(reserved, k)
                             ).remote(args.device, threads)
              for k in range(count)]
    load = [0] * len(actors)
    queue = list(reversed(todo))
    pending: Dict[object, Tuple[Track, int]] = {}
    finished = 0
    watch = LostBundles(reserved)
    try:
        while queue or pending:
            while queue and len(pending) < window:
                tracks = [queue.pop() for _ in range(min(group, len(queue), window - len(pending)))]
                k = load.index(min(load))  # the least busy actor
                decoded = [decode_task.remote(track, options) for track in tracks]
                separated = actors[k].separate_group.options(num_returns=len(tracks)).remote(
                    tracks, options, model, *decoded)
                for track, result in zip(tracks, separated if len(tracks) > 1 else [separated]):
                    pending[write_task.remote(track, result, targets, options)] = (track, k)
                load[k] += len(tracks)
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=LOST_NODE_POLL_S)
            if not ready and watch.for_good():  # its tracks would wait forever
                ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
                left = [track for ref, (track, _) in pending.items() if ref not in ready]
                finished += collect(ready, pending, load, progress, failures)
                return finished, left + list(reversed(queue))
            finished += collect(ready, pending, load, progress, failures)
    finally:
        for actor in actors:
            ray.kill(actor)
        remove_placement_group(reserved)
    return finished, []


def collect(ready: list, pending: Dict[object, Tuple[Track, int]], load: List[int], progress: Progress,
            failures: List[Failure]) -> int:
    """Take the results of the ``ready`` tracks out of ``pending``; return how many finished."""
    ray = import_ray()
    finished = 0
    for ref in ready:
        track, k = pending.pop(ref)
        load[k] -= 1
        try:
            record = ray.get(ref)
        except Exception as exc:  # one track's failure never stops the run
            failure = _failure_of(exc, track)
            failures.append(failure)
            progress.failed(failure[2])
            continue
        if isinstance(record, NotShared):  # every track that node writes would be lost: stop
            raise OpenUnmixLikeError(f"--outdir {record.outdir} is not shared with node {record.host}: its stems "
                                     "would land on that node's own disk; use a folder every node mounts, or an "
                                     "s3:// URL")
        finished += 1
        rescaled = rescale_message(track.source, record.get("rescaled_db", 0.0), CLI_NAMES)
        if rescaled is not None:  # as the local engine says it
            progress.note(rescaled)
        progress.done(record["duration"])
    return finished


@contextlib.contextmanager
def shared_marker(outdir: str):
    """A hidden file in a local ``outdir`` while the run lasts (None for a URL), whose path goes to every write:
    a node that does not see it does not share the folder, and writes nothing (:class:`.stages.NotShared`)."""
    if storage.is_url(outdir):
        yield None
        return
    remove_stale_markers(outdir)
    path = os.path.join(outdir, f"{MARKER_PREFIX}{os.getpid()}-{HOST_TAG}-{secrets.token_hex(4)}")
    Path(path).touch()
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.remove(path)


def remove_stale_markers(outdir: str) -> None:
    """Remove the markers of drivers on this host that are gone (killed before they could remove theirs)."""
    for marker in Path(outdir).glob(f"{MARKER_PREFIX}*"):
        match = MARKER_REST.fullmatch(marker.name[len(MARKER_PREFIX):])
        if match and match["host"] == HOST_TAG and not process_alive(int(match["pid"])):
            with contextlib.suppress(OSError):
                marker.unlink()


def write_or_not_shared(track: Track, separated, target_names, options: Options):
    """:func:`.stages.write`, returning rather than raising :class:`.stages.NotShared`: the driver stops at the
    first, and Ray would print the others, never fetched, as unhandled errors."""
    try:
        return write(track, separated, target_names, options)
    except NotShared as exc:
        return exc


class LostBundles:
    """Whether part of a placement group was lost with its node and has found no room elsewhere for a while.

    Ray places the lost bundles again when the cluster has room (a node added, another run's resources given
    back); until then the actors and tasks pinned to them wait, without a word, forever.
    """

    def __init__(self, reserved):
        self.reserved, self.since = reserved, None

    def for_good(self) -> bool:
        from ray.util import placement_group_table

        if placement_group_table(self.reserved).get("state") != "RESCHEDULING":
            self.since = None
            return False
        now = time.monotonic()
        self.since = self.since if self.since is not None else now
        return now - self.since >= LOST_NODE_WAIT_S


def io_bundles(args: argparse.Namespace, resources: Dict[str, float], count: int, window: int) -> int:
    """How many decode or write tasks (``--io-cpus`` each) the run reserves room for: the CPUs its actors
    leave, but no more than its tracks in flight can use (a decode and a write each); none with
    ``--io-cpus 0``, whose tasks need no room."""
    if args.io_cpus <= 0:
        return 0
    left = resources.get("CPU", 0.0) - count * args.actor_cpus
    return max(1, min(int(left / args.io_cpus + 1e-9), 2 * window))


def reserve(count: int, actor_resources: dict, io: int, io_cpus: float):
    """A placement group holding the run's ``count`` actors and ``io`` decode/write tasks, taken all at once.

    Two drivers on one cluster each taking part of it deadlocked: actors holding every CPU, and the decode
    tasks of both runs waiting for one. Reserved whole, a second run waits (saying so) until the first gives
    its resources back, or runs beside it where the cluster has room for both.
    """
    ray = import_ray()
    from ray.util import placement_group, remove_placement_group

    actor = {"CPU": actor_resources["num_cpus"]}
    if actor_resources.get("num_gpus"):
        actor["GPU"] = actor_resources["num_gpus"]
    reserved = placement_group([dict(actor) for _ in range(count)] + [{"CPU": io_cpus} for _ in range(io)],
                               strategy="PACK")
    try:
        ready, _ = ray.wait([reserved.ready()], timeout=RESERVE_NOTICE_S)
        if not ready:
            each = ", ".join(f"{value:g} {name}" for name, value in actor.items())
            print(f"umx-separate: waiting for room on the cluster for {count} actors ({each} each)"
                  + (f" and {io} decode/write tasks ({io_cpus:g} CPU each)" if io else "")
                  + ": other runs hold its resources ('ray status' lists them); Ctrl+C to stop",
                  file=sys.stderr, flush=True)
            ray.get(reserved.ready())
    except BaseException:
        remove_placement_group(reserved)
        raise
    return reserved


def tracks_per_call(args: argparse.Namespace) -> int:
    """``--tracks-per-call``, or its default: 8 on GPUs, where short tracks alone leave batches half empty;
    1 on CPUs, whose models gain nothing from batches (docs/benchmarks.md)."""
    if args.tracks_per_call is not None:
        return args.tracks_per_call
    return 8 if args.device == "cuda" else 1


def _fetch(refs: list):
    """The object behind ``refs[0]`` (a reference inside a list is not resolved by Ray before the call)."""
    return import_ray().get(refs[0])


def write_failures(outdir: str, failures: List[Failure], storage_options, earlier: Optional[bytes] = None,
                   attempted: Optional[Set[str]] = None) -> Optional[str]:
    """``OUT/_failures.csv`` listing this run's failures; removed when there are none.

    With ``attempted`` (the inputs this run took on), the rows another run has written since this run read
    the file (``earlier``, its bytes then, None when there was none) are kept, but for the inputs this run
    took on: two drivers on one ``--outdir`` at once both get their failures listed. An earlier run's list
    that nobody changed meanwhile is replaced.
    """
    url = storage.join(outdir, records.FAILURES_NAME)
    local = None if storage.is_url(outdir) else os.path.join(outdir, FAILURES_LOCK)
    with held_lock(local) if local else contextlib.nullcontext():  # object storage has no locks
        rows = list(failures)
        current = read_failures_file(outdir, storage_options) if attempted is not None else None
        if current is not None and current != earlier:
            ours = set(attempted) | {path for path, _, _ in failures}
            rows = [row for row in _rows(current) if row[0] not in ours] + rows
        if rows:
            storage.write_bytes(url, records.failures_csv(rows), storage_options)
            return url
        try:
            storage.remove(url, storage_options)
        except OSError:
            pass
    return None


def read_failures_file(outdir: str, storage_options) -> Optional[bytes]:
    """The bytes of ``OUT/_failures.csv``, or None when there is none (or it cannot be read)."""
    try:
        return storage.read_bytes(storage.join(outdir, records.FAILURES_NAME), storage_options)
    except (OSError, OpenUnmixLikeError):
        return None


def _rows(data: bytes) -> List[Failure]:
    """The ``(path, stage, reason)`` rows of a ``_failures.csv`` (none of a damaged one)."""
    try:
        return [(row["path"], row["stage"], row["reason"]) for row in records.read_failures(data)
                if row.get("path") is not None]
    except (ValueError, KeyError):
        return []


def local_outdir(outdir: str) -> Optional[str]:
    """``--outdir`` as an absolute local path (a ``file://`` URL is one: written by rename, which is atomic),
    or None for another URL."""
    if outdir.startswith("file://"):
        outdir = outdir[len("file://"):]
    return None if storage.is_url(outdir) else os.path.abspath(outdir)


INTERRUPTED = "interrupted; finished tracks are recorded, run the same command again to do the rest"


def run(args: argparse.Namespace, sources_from_cli: Optional[List[str]] = None) -> int:
    """Run ``umx-separate --engine ray``; return the exit status."""
    from ..cli import sigterm_as_interrupt
    from ..cli.separate import _report

    with made_folders_removed_if_empty(local_outdir(args.outdir)):  # a run that writes nothing leaves none
        try:
            with sigterm_as_interrupt():  # a scheduler's stop while the catalogue is listed or the model loads
                return _run(args, sources_from_cli)
        except KeyboardInterrupt:
            _report(INTERRUPTED)
            return 130


def _run(args: argparse.Namespace, sources_from_cli: Optional[List[str]] = None) -> int:
    from ..cli import sigterm_as_interrupt
    from ..cli.separate import _report, load_separator, parse_aggregate

    args = copy.copy(args)  # the output folder is made absolute below
    try:
        check_options(args)
        origin = "--address"
        if not args.address and (from_environment := address_from_environment()):
            args.address, origin = from_environment, "RAY_ADDRESS"
        if args.address and "ray" not in sys.modules:  # Ray reads its authentication mode when imported
            send_token_if_any(args.address)
        import_ray()
        args.outdir = local_outdir(args.outdir) or args.outdir
        if not storage.is_url(args.outdir):
            if os.path.exists(args.outdir) and not os.path.isdir(args.outdir):
                raise OpenUnmixLikeError(f"--outdir {args.outdir}: is a file, not a folder; give a folder "
                                         "(created if missing)")
        storage_options = parse_storage_options(args.storage_options)
        # The driver loads the model on its CPU and ships it to the actors: worker nodes need no model files.
        separator = load_separator(_on_cpu(args))
        # What made the stems, so that a rerun without --niter skips them: the model's own where it was not given.
        args.niter = separator.niter
        args.input_level = separator.input_level  # likewise the level matched, the model's own under auto
        aggregate = parse_aggregate(args.aggregate, separator.target_names)
        names = list(aggregate) if aggregate else separator.target_names
        model_sha256 = records.model_fingerprint(separator)
        settings = records.settings_of(args)
        if not storage.is_url(args.outdir):
            writable_folder("--outdir", args.outdir)
        else:
            storage.check_folder(args.outdir, "--outdir", storage_options)
        sources, failures = gather_sources(args.inputs, args.manifest, storage_options, args.outdir)
        for _, _, message in failures:
            _report(message)
        # Inputs named directly are never taken for an earlier run's outputs (a URL naming a prefix matches none).
        named = [s if storage.is_url(s) else os.path.abspath(s) for s in args.inputs
                 if storage.is_url(s) or os.path.isfile(s)]
        plan = make_plan(sources, names, args, model_sha256, settings, storage_options, named)
        for _, _, message in plan.failures:
            _report(message)
        failures.extend(plan.failures)
        # What _failures.csv says now: rows other drivers add while this one runs are kept (write_failures).
        listed = (read_failures_file(args.outdir, storage_options), {*sources, *(path for path, _, _ in failures)})
        options = Options(args.start, args.duration, args.segment, args.overlap, args.batch_segments,
                          args.keep_model_rate, aggregate, args.ext, args.bits, args.clip,
                          args.model or "default", model_sha256, settings, storage_options, args.stream_over,
                          args.mp3_bitrate)
        started = connect(args.address, args.verbose, origin) if plan.todo else False
    except OpenUnmixLikeError as exc:
        _report(str(exc))
        return 1
    progress = Progress(len(plan.todo), args.quiet)
    run_failures: List[Failure] = []
    try:
        # Set again after ray.init, whose own SIGTERM handler dumps a stack and exits with status 15.
        with sigterm_as_interrupt():
            finished = execute(plan, separator, options, args, progress, run_failures) if plan.todo else 0
    except OpenUnmixLikeError as exc:  # the run cannot go on (a folder a node does not share, a cluster too small)
        progress.close()
        list_failures(args.outdir, failures + run_failures, storage_options, *listed)
        _report(str(exc))
        return 1
    except KeyboardInterrupt:
        progress.close()
        # This run's failures so far replace an earlier run's list, which may name tracks finished since.
        list_failures(args.outdir, failures + run_failures, storage_options, *listed)
        _report(INTERRUPTED)
        return 130
    finally:
        if started:
            import_ray().shutdown()
    wall = progress.close()
    failures.extend(run_failures)
    return summarize(args, plan, finished, failures, progress.seconds, wall, storage_options, listed)


def _on_cpu(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` loading on the CPU, with the precision the actors' device resolves to."""
    from ..cli.separate import precision_of

    cpu = copy.copy(args)
    cpu.precision = precision_of(args)
    cpu.device = "cpu"
    return cpu


def list_failures(outdir: str, failures: List[Failure], storage_options, earlier: Optional[bytes] = None,
                  attempted: Optional[Set[str]] = None) -> Optional[str]:
    """:func:`write_failures`, saying in one line when it cannot."""
    from ..cli.separate import _report

    try:
        return write_failures(outdir, failures, storage_options, earlier, attempted)
    except (OpenUnmixLikeError, OSError) as exc:
        _report(f"{storage.join(outdir, records.FAILURES_NAME)}: cannot write the list of failures "
                f"({records.one_line(exc)}); check --outdir")
        return None


def summarize(args, plan: Plan, finished: int, failures: List[Failure], seconds: float, wall: float,
              storage_options, seen: Tuple[Optional[bytes], Optional[Set[str]]] = (None, None)) -> int:
    """Write ``_failures.csv`` (``seen``: :func:`write_failures`'s ``earlier`` and ``attempted``), print the
    summary line; return the exit status."""
    from ..cli.separate import _report

    listed = list_failures(args.outdir, failures, storage_options, *seen)
    if not args.quiet:
        speed = f", {seconds / wall:.1f}x real time" if wall > 0 and seconds else ""
        print(f"umx-separate: {finished} done, {len(plan.skipped)} skipped (finished before), {len(failures)} failed; "
              f"{seconds / 3600:.2f} h of audio in {wall:.0f} s{speed}", file=sys.stderr)
    if failures:
        where = f"; listed in {listed}" if listed else ""
        _report(f"{len(failures)} track{'s' if len(failures) != 1 else ''} failed{where}")
        return 1
    return 0
