"""Gallery example 10 (examples/10_char_lm.py): a character-level causal transformer and
an LSTM trained on the shipped sonnets, in --quick mode, checked against its claims."""

from __future__ import annotations

import math

import numpy as np
import pytest

from test_gallery import _figure_written, load

QUICK_BOUND = 2.5  # nats/char after --quick; a uniform guess over V = 60 scores log 60 ≈ 4.09


@pytest.mark.float32
def test_char_lm_quick_trains_both_models_below_the_bound_and_samples(tmp_path):
    r = load("10_char_lm").main(["--quick", "--out", str(tmp_path), "--temperature", "0.8"])
    assert r["vocab_size"] == 60 and r["uniform_loss"] == pytest.approx(math.log(60))
    for name in ("transformer", "lstm"):
        history = r[name]["history"]
        assert history[-1]["val_loss"] < QUICK_BOUND, (name, history)
        assert history[-1]["train_loss"] < history[0]["train_loss"], (name, history)
        text = r[name]["sample"]
        assert text.startswith("Shall I compare thee") and len(text) == len("Shall I compare thee") + 80
        assert set(text) <= set(r["vocab"].chars)
    weights = r["attention"]  # one head's causal attention on a 39-character line
    assert weights.shape == (39, 39)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-5)
    assert np.all(np.triu(weights, k=1) == 0.0)  # position t never looks at s > t
    _figure_written(r)


def test_sampling_rejects_a_non_positive_temperature():
    from fdl.models.charlm import Vocabulary, sample

    with pytest.raises(ValueError, match="sample: temperature must be a finite number > 0, "
                                         "got 0.0"):
        sample(None, None, Vocabulary("ab"), "a", 1, seq_len=4, temperature=0.0, key=None)


def test_the_corpus_is_shipped_with_its_licence():
    from importlib.resources import files

    text = files("fdl.data").joinpath("sonnets.txt").read_text(encoding="utf-8")
    licence = files("fdl.data").joinpath("SONNETS_LICENSE.txt").read_text(encoding="utf-8")
    assert text.startswith("I\n\nFrom fairest creatures we desire increase,")
    assert 10_000 < len(text) < 300_000
    assert "public domain" in licence
