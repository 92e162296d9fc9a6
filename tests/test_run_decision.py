"""The run / skip / resume / refuse decision for a stage, as a pure function: every case in milliseconds.

The slow end-to-end tests (test_pipelines.py: rerun trains nothing, SIGKILL then resume, --only, --force)
show the pipeline acts on these decisions; here each folder state is spelled out.
"""

from __future__ import annotations

import pytest

from finetune.pipeline import decide

FP, OTHER = "a" * 64, "b" * 64


@pytest.mark.parametrize(("state", "flags", "action"), [
    # nothing in the folder, or a start that left no checkpoint: train from scratch
    ({}, {}, "run"),
    ({"started_fingerprint": FP}, {}, "run"),
    ({"started_fingerprint": OTHER}, {}, "run"),  # stopped before any checkpoint: nothing to keep, any inputs
    # finished
    ({"done": True, "done_fingerprint": FP, "started_fingerprint": FP}, {}, "skip"),
    ({"done": True, "done_fingerprint": FP, "started_fingerprint": FP, "has_checkpoint": True}, {}, "skip"),
    ({"done": True, "done_fingerprint": OTHER, "started_fingerprint": OTHER}, {}, "refuse_changed"),
    ({"done": True, "done_fingerprint": OTHER, "started_fingerprint": OTHER}, {"force": True}, "retrain"),
    ({"done": True, "done_fingerprint": OTHER}, {}, "refuse_changed"),  # a run older than inputs.json
    ({"done": True, "done_fingerprint": FP}, {"force": True}, "skip"),  # --force retrains changed stages only
    # interrupted after a checkpoint
    ({"started_fingerprint": FP, "has_checkpoint": True}, {}, "resume"),
    ({"started_fingerprint": OTHER, "has_checkpoint": True}, {}, "refuse_changed"),
    ({"started_fingerprint": OTHER, "has_checkpoint": True}, {"force": True}, "retrain"),
    # --only
    ({"done": True, "done_fingerprint": OTHER}, {"only": "dpo"}, "reuse"),  # an earlier stage is trusted
    ({}, {"only": "dpo"}, "refuse_unfinished"),
    ({"started_fingerprint": FP, "has_checkpoint": True}, {"only": "dpo"}, "refuse_unfinished"),
    # after --only's stage: a finished stage still current is reported, anything else is left out
    ({"done": True, "done_fingerprint": FP}, {"only": "dpo", "only_finished": True}, "keep"),
    ({"done": True, "done_fingerprint": OTHER}, {"only": "dpo", "only_finished": True}, "leave_out"),
    ({"done": True, "done_fingerprint": OTHER}, {"only": "dpo", "only_finished": True, "force": True},
     "leave_out"),  # --force retrains only what --only names
    ({}, {"only": "dpo", "only_finished": True}, "leave_out"),
    ({"started_fingerprint": FP, "has_checkpoint": True}, {"only": "dpo", "only_finished": True}, "leave_out"),
    ({"done": True, "done_fingerprint": FP}, {"only": "sft"}, "skip"),  # --only names this stage
    ({}, {"only": "sft"}, "run"),
])
def test_decision(state, flags, action):
    folder = {"done": False, "done_fingerprint": None, "started_fingerprint": None, "has_checkpoint": False,
              **state}
    decision = decide("sft", FP, **folder, **flags)
    assert decision.action == action, decision
    assert decision.why


def test_decide_does_no_io(tmp_path, monkeypatch):
    """It never touches the disk: the same answer from a folder that does not exist."""
    monkeypatch.chdir(tmp_path)
    assert decide("x", FP, done=False, done_fingerprint=None, started_fingerprint=None,
                  has_checkpoint=False).action == "run"
    assert list(tmp_path.iterdir()) == []
