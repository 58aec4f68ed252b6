"""Cache keys that cannot go stale: a reward function is keyed by a hash of its source code, plus the user's
`annotator_version`; changing either re-annotates (and says so), reformatting the code does not."""

from __future__ import annotations

import importlib.util
import logging
import sys
import textwrap

import pytest

from aepo_trainer import AEPOConfig
from aepo_trainer.annotation import AnnotationRequest, AnnotationService, AnnotationStore, RewardFunctionAnnotator
from aepo_trainer.annotation.reward_function import code_fingerprint

REQUESTS = [AnnotationRequest("Say hi", [" hi", " hello there"]), AnnotationRequest("Count", [" 1 2", " 1 2 3"])]

SOURCE = """
CALLS = []


def helpfulness(completions, **kwargs):
    CALLS.append(len(completions))
    return [float(len(c)) * {factor} for c in completions]
"""


def load_rewards(tmp_path, source: str):
    """(Re)write and import the user's reward module, as a user editing a file between two runs would."""
    path = tmp_path / "user_rewards.py"
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    spec = importlib.util.spec_from_file_location("user_rewards", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["user_rewards"] = module
    spec.loader.exec_module(module)
    return module


def annotate(module, store, version=None):
    args = AEPOConfig(
        output_dir="out", bf16=False, report_to="none", annotation_store=store.path, annotator_version=version
    )
    service = AnnotationService.from_config(args, RewardFunctionAnnotator(module.helpfulness), run_id="run")
    return service, service.annotate(REQUESTS)


@pytest.fixture
def store(tmp_path):
    return AnnotationStore(tmp_path / "annotations.sqlite")


def test_edited_reward_function_is_reannotated_and_says_so(tmp_path, store, caplog):
    v1 = load_rewards(tmp_path, SOURCE.format(factor=1))
    _, first = annotate(v1, store)
    assert first.paid == 4 and v1.CALLS == [4]
    assert first.scores == [[3.0, 12.0], [4.0, 6.0]]
    old_identity = RewardFunctionAnnotator(v1.helpfulness).identity  # read now: the file is edited below

    again = load_rewards(tmp_path, SOURCE.format(factor=1) + "\n# a comment, and the file re-imported\n")
    with caplog.at_level(logging.WARNING, logger="aepo_trainer"):
        service, second = annotate(again, store)
    assert second.paid == 0 and second.reused == 4 and again.CALLS == []  # same code: served from the store
    assert service.stale_identities == {} and "has changed" not in caplog.text

    edited = load_rewards(tmp_path, SOURCE.format(factor=10))
    with caplog.at_level(logging.WARNING, logger="aepo_trainer"):
        service, third = annotate(edited, store)
    assert third.paid == 4 and edited.CALLS == [4]  # the edit is re-annotated, not served stale
    assert third.scores == [[30.0, 120.0], [40.0, 60.0]]
    assert service.stale_identities == {old_identity: 4} and old_identity != service.identity
    assert "has changed since 4 annotation(s) were stored" in caplog.text and "NOT reused" in caplog.text


def test_annotator_version_reannotates(tmp_path, store, caplog):
    module = load_rewards(tmp_path, SOURCE.format(factor=1))
    service, first = annotate(module, store, version="rubric-1")
    assert first.paid == 4 and service.identity.endswith("|version=rubric-1")
    _, same = annotate(module, store, version="rubric-1")
    assert same.paid == 0 and module.CALLS == [4]
    with caplog.at_level(logging.WARNING, logger="aepo_trainer"):
        service, bumped = annotate(module, store, version="rubric-2")
    assert bumped.paid == 4 and module.CALLS == [4, 4]
    assert list(service.stale_identities) == [service.identity.replace("rubric-2", "rubric-1")]
    assert "has changed since" in caplog.text


def test_fingerprint_covers_partials_closures_and_lambdas():
    import functools

    def scaled(completions, factor, **kwargs):
        return [factor * len(c) for c in completions]

    assert code_fingerprint(functools.partial(scaled, factor=1)) != code_fingerprint(
        functools.partial(scaled, factor=2)
    )

    def make(threshold):
        return lambda completions, **kw: [float(len(c) > threshold) for c in completions]

    assert code_fingerprint(make(3)) != code_fingerprint(make(4))
    assert code_fingerprint(make(3)) == code_fingerprint(make(3))

    class Scorer:
        def __call__(self, completions, **kwargs):
            return [1.0] * len(completions)

    assert "return [1.0] * len(completions)" not in code_fingerprint(Scorer())  # normalised through the AST
    assert code_fingerprint(Scorer()) == code_fingerprint(Scorer())
    assert code_fingerprint(len)  # a builtin: keyed by its name
