"""Config fingerprints (rca.engine.fingerprint): which keys count, refusal messages, --overwrite."""

import hashlib
import json
import typing

import pytest

from rca.config import Config, load_config
from rca.engine.fingerprint import (FILENAME, IGNORED_KEYS, STAGE_IGNORED_KEYS, StaleOutputsError,
                                    check_fingerprint, file_settings, fingerprint, read_fingerprint,
                                    stage_settings)


def config(*overrides):
    return load_config(None, list(overrides))


def test_stage_settings_hold_what_changes_outputs_and_nothing_else():
    cls = stage_settings(config(), "cls")
    assert cls["cls.lr"] == 0.05 and cls["seed"] == 0 and cls["data.options"] == {"image_size": 96, "num_classes": 4}
    assert cls["cls.resize_long"] == [80, 112]  # tuples as lists: equal to the JSON read back
    assert not any(key.startswith(("labels.", "seg.")) for key in cls)
    assert {"name", "data.num_workers", "cls.log_interval", "data.label_split"}.isdisjoint(cls)
    labels = stage_settings(config(), "labels")
    assert set(cls) < set(labels) and "labels.bg_threshold" in labels and "data.label_split" in labels
    seg = stage_settings(config(), "seg")
    assert set(labels) < set(seg) and "seg.lr" in seg and "seg.log_interval" not in seg
    gt = stage_settings(config("seg.labels=gt"), "seg")  # true masks: the classifier does not matter
    assert "seg.lr" in gt and not any(key.startswith(("cls.", "labels.")) for key in gt)
    with pytest.raises(ValueError, match="unknown stage"):
        stage_settings(config(), "train")


def test_ignored_keys_exist_in_the_config():
    # a renamed key must be renamed here too, or it would silently count again
    def paths(cls, prefix=""):
        for name, hint in typing.get_type_hints(cls).items():
            if hasattr(hint, "__dataclass_fields__"):
                yield from paths(hint, f"{name}.")
            else:
                yield prefix + name
    known = set(paths(Config))
    for keys in [IGNORED_KEYS, *STAGE_IGNORED_KEYS.values()]:
        assert keys <= known, keys - known


def test_fingerprint_is_a_stable_hash_of_the_settings():
    a = stage_settings(config(), "cls")
    assert fingerprint(a) == fingerprint(dict(reversed(list(a.items()))))  # key order does not matter
    assert fingerprint(a) != fingerprint(stage_settings(config("cls.lr=0.02"), "cls"))
    assert fingerprint(a) == fingerprint(stage_settings(config("data.num_workers=7", "cls.log_interval=1"), "cls"))
    assert len(fingerprint(a)) == 64


def test_check_writes_then_accepts_same_and_refuses_changed_settings(tmp_path):
    out = tmp_path / "cls"
    check_fingerprint(out, config(), "cls")  # first run: written
    stored = read_fingerprint(out)
    assert stored["stage"] == "cls" and stored["settings"] == stage_settings(config(), "cls")
    check_fingerprint(out, config("data.num_workers=0", "seg.lr=1"), "cls")  # no output-changing key
    with pytest.raises(StaleOutputsError) as error:
        check_fingerprint(out, config("cls.lr=0.02", "cls.epochs=3"), "cls")
    message = str(error.value)
    assert "cls.lr: 0.05 -> 0.02" in message and "cls.epochs: 12 -> 3" in message
    assert "--overwrite" in message and str(out) in message and "seg.lr" not in message
    assert read_fingerprint(out) == stored  # a refusal leaves the file as it was
    check_fingerprint(out, config("cls.lr=0.02"), "cls", overwrite=True)  # the outputs will be redone
    assert read_fingerprint(out)["settings"]["cls.lr"] == 0.02


def test_upstream_change_makes_later_outputs_stale(tmp_path):
    check_fingerprint(tmp_path / "labels", config(), "labels")
    check_fingerprint(tmp_path / "seg", config(), "seg")
    for stage in ("labels", "seg"):
        with pytest.raises(StaleOutputsError, match="cls.aggregation_temperature: 0.1 -> 0.2"):
            check_fingerprint(tmp_path / stage, config("cls.aggregation_temperature=0.2"), stage)
    with pytest.raises(StaleOutputsError, match=r'data.options: \{.*\} -> \{.*"seed": 3'):
        check_fingerprint(tmp_path / "labels", config("data.options.seed=3"), "labels")


def test_non_writing_rank_checks_but_writes_nothing(tmp_path):
    check_fingerprint(tmp_path / "seg", config(), "seg", write=False)
    assert not (tmp_path / "seg" / FILENAME).exists()


def test_added_and_removed_keys_are_named(tmp_path):
    out = tmp_path / "cls"
    check_fingerprint(out, config(), "cls")
    stored = read_fingerprint(out)
    stored["settings"]["cls.old_key"] = 1  # as after a key rename
    del stored["settings"]["cls.lr"]
    stored["hash"] = fingerprint(stored["settings"])
    (out / FILENAME).write_text(json.dumps(stored))
    with pytest.raises(StaleOutputsError) as error:
        check_fingerprint(out, config(), "cls")
    assert "cls.old_key: 1 -> (absent)" in str(error.value) and "cls.lr: (absent) -> 0.05" in str(error.value)


def test_another_checkpoint_makes_the_outputs_stale_and_a_deleted_one_does_not(tmp_path):
    """gen_labels passes the classifier checkpoint's hash: CAMs of other weights are refused."""
    out, weights = tmp_path / "labels", tmp_path / "best.pt"
    weights.write_bytes(b"epoch 5 weights")
    digest = hashlib.sha256(b"epoch 5 weights").hexdigest()
    assert file_settings("checkpoint", weights) == {"input.checkpoint.sha256": digest}
    check_fingerprint(out, config(), "labels", extra=file_settings("checkpoint", weights))
    assert read_fingerprint(out)["settings"]["input.checkpoint.sha256"] == digest
    check_fingerprint(out, config(), "labels", extra=file_settings("checkpoint", weights))  # same file
    weights.write_bytes(b"epoch 6 weights")
    with pytest.raises(StaleOutputsError, match=f'input.checkpoint.sha256: "{digest}" -> "'):
        check_fingerprint(out, config(), "labels", extra=file_settings("checkpoint", weights))
    weights.unlink()  # nothing to compare: the CAMs on disk stand
    assert file_settings("checkpoint", weights) == {}
    check_fingerprint(out, config(), "labels", extra=file_settings("checkpoint", weights))
    assert read_fingerprint(out)["settings"]["input.checkpoint.sha256"] == digest
