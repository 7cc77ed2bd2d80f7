"""The cached step runner behind `crmml run`."""

import pytest

from pipelines.steps import Pipeline, Step, StepFailed


def make_pipeline(workspace, calls, fail_at=None):
    def runner(name):
        def run(ctx):
            if name == fail_at:
                raise ValueError("boom")
            calls.append(name)
            return {"made": name, "param": ctx["params"].get(name)}

        return run

    steps = [
        Step("ingest", runner("ingest"), inputs=lambda ctx: ctx["params"].get("ingest")),
        Step("features", runner("features"), inputs=lambda ctx: ctx["params"].get("features"), after=("ingest",)),
        Step("train", runner("train"), inputs=lambda ctx: ctx["params"].get("train"), after=("features",)),
        Step("recs", runner("recs"), inputs=lambda ctx: None, after=("ingest",)),
    ]
    return Pipeline(workspace, steps)


def statuses(results):
    return {r.name: r.status for r in results}


def test_rerun_with_nothing_changed_is_all_cached(workspace):
    calls = []
    params = {"ingest": 1, "features": 1, "train": 1}
    make_pipeline(workspace, calls).run({"params": params})
    assert calls == ["ingest", "features", "train", "recs"]
    results = make_pipeline(workspace, calls).run({"params": params})
    assert set(statuses(results).values()) == {"cached"}
    assert results[1].summary == {"made": "features", "param": 1}


def test_changed_input_reruns_only_what_depends_on_it(workspace):
    calls = []
    make_pipeline(workspace, calls).run({"params": {"ingest": 1, "features": 1, "train": 1}})
    calls.clear()
    results = make_pipeline(workspace, calls).run({"params": {"ingest": 1, "features": 2, "train": 1}})
    assert calls == ["features", "train"]
    assert statuses(results) == {"ingest": "cached", "features": "ran", "train": "ran", "recs": "cached"}


def test_force_from_reruns_that_step_and_everything_after(workspace):
    calls = []
    params = {"ingest": 1}
    make_pipeline(workspace, calls).run({"params": params})
    calls.clear()
    make_pipeline(workspace, calls).run({"params": params}, force_from="train")
    assert calls == ["train", "recs"]
    with pytest.raises(ValueError, match="unknown step 'nope'"):
        make_pipeline(workspace, calls).run({"params": params}, force_from="nope")


def test_failed_step_names_itself_and_keeps_earlier_records(workspace):
    calls = []
    make_pipeline(workspace, calls).run({"params": {"train": 1}})
    with pytest.raises(StepFailed, match="step 'train' failed: ValueError: boom"):
        make_pipeline(workspace, calls, fail_at="train").run({"params": {"train": 2}})
    calls.clear()
    # the failed step's old record is untouched: the old parameters are still cached
    results = make_pipeline(workspace, calls).run({"params": {"train": 1}})
    assert calls == [] and set(statuses(results).values()) == {"cached"}
