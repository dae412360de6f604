"""One loop drives the decoding of many streams on one engine, from one thread, batching their engine calls.

Each stream's work is a generator of engine calls (decoding/calls.py): the same decoding code that runs
straight against an engine elsewhere. A round advances every job to its next call, then runs the calls
together:
- encoder windows of the same shape, as one batch (each job gets its own rows of the context back);
- one-token decoder steps, as one step per engine pool (serving/step_pools.py), each row at its own
  position; jobs join and leave pools between steps;
- prompt passes, passes that check a draft (decoding/draft.py) and language detection, one by one.
An engine error reaches the jobs whose call failed, as it would had they called alone. No thread is
handed anything: on a GPU a step costs less than a thread switch.
"""
from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Generator
from dataclasses import dataclass, field

import numpy as np

from edge_asr.runtime.decoding.calls import Decode, Encode, EngineCall, call_engine
from edge_asr.runtime.serving.step_pools import StepPools


@dataclass(eq=False)
class Job:
    """A generator of engine calls and where it stands: its pending call, or its result or error once done."""

    steps: Generator[EngineCall, object, object]
    call: EngineCall | None = None
    reply: object = None
    error: BaseException | None = None
    done: bool = False
    result: object = None
    started: float = field(default_factory=time.perf_counter)


@dataclass
class LoopStats:
    rounds: int = 0
    encode_calls: int = 0
    encode_rows: int = 0


class EngineLoop:
    def __init__(self, engine):
        self.engine = engine
        self.pools = StepPools(engine) if hasattr(engine, "new_pool") else None
        self.stats = LoopStats()

    def round(self, jobs: list[Job]) -> None:
        """Advance every unfinished job to its next engine call (or its end), then run those calls."""
        for job in jobs:
            if not job.done and job.call is None:
                self._advance(job)
        pending = [job for job in jobs if not job.done and job.call is not None]
        if not pending:
            return
        self.stats.rounds += 1
        encodes = [job for job in pending if isinstance(job.call, Encode)]
        steps = [job for job in pending if isinstance(job.call, Decode) and job.call.is_step and self.pools is not None]
        alone = [job for job in pending if job not in encodes and job not in steps]
        self._encode(encodes)
        self._step(steps)
        for job in alone:  # prompts, drafts' passes, steps of an engine without pools, word timing
            self._answer([job], lambda call=job.call: [call_engine(self.engine, call)])

    def run(self, jobs: list[Job]) -> None:
        """Rounds until every job is done."""
        while not all(job.done for job in jobs):
            self.round(jobs)

    def _advance(self, job: Job) -> None:
        try:
            if job.error is not None:
                error, job.error = job.error, None
                job.call = job.steps.throw(error)
            else:
                job.call = job.steps.send(job.reply)
        except StopIteration as end:
            job.done, job.result, job.call = True, end.value, None
        except Exception as err:  # the job's own failure: it ends with it
            job.done, job.error, job.call = True, err, None
        job.reply = None

    @staticmethod
    def _answer(jobs: list[Job], run) -> None:
        """Each job's reply from ``run()`` (a list, one per job), or the error it raised."""
        try:
            replies = run()
        except Exception as err:
            for job in jobs:
                job.error, job.call = err, None
            return
        for job, reply in zip(jobs, replies, strict=True):
            job.reply, job.call = reply, None

    def _encode(self, jobs: list[Job]) -> None:
        by_shape: dict[tuple, list[Job]] = defaultdict(list)
        for job in jobs:
            by_shape[job.call.mel.shape[1:]].append(job)
        for group in by_shape.values():
            self.stats.encode_calls += 1
            self.stats.encode_rows += sum(job.call.mel.shape[0] for job in group)
            self._answer(group, lambda group=group: _split(self.engine.encode(
                np.concatenate([job.call.mel for job in group])), [job.call.mel.shape[0] for job in group]))

    def _step(self, jobs: list[Job]) -> None:
        if not jobs:
            return
        members = {}
        for job in jobs:
            call = job.call
            pool, member = self.pools.ask(call.cache, call.audio, call.tokens[:, 0], call.offsets)
            members[id(member)] = job
        for pool in [p for p in self.pools.pools if any(m.step is not None for m in p.members.values())]:
            batch = pool.batch()
            waiting = [members[id(member)] for member in batch.waiting]
            try:
                logits = batch.run(pool)
            except Exception as err:
                for job in waiting:
                    job.error, job.call = err, None
            else:
                for member, job in zip(batch.waiting, waiting, strict=True):
                    job.reply, job.call = batch.logits_of(member, logits), None
            finally:
                self.pools.done(batch)


def _split(context, rows: list[int]) -> list:
    """One context per job: the rows of a batched encoder call, in order."""
    if len(rows) == 1:
        return [context]
    bounds = np.cumsum([0, *rows])
    return [context.take(np.arange(bounds[i], bounds[i + 1])) for i in range(len(rows))]
