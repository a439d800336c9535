"""A stand-in for timing.time_calls that returns (or raises) a script of outcomes, one per call, in order: for
testing how tuning and kernel plans react to timings and refusals without a GPU."""

from prunekit.sparse import timing


def script_time_calls(monkeypatch, outcomes) -> None:
    """Make timing.time_calls return the next of `outcomes` (milliseconds), raising it where it is an exception."""
    outcomes = iter(outcomes)

    def scripted(calls, repeats=20, graphed=True):
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(timing, "time_calls", scripted)
