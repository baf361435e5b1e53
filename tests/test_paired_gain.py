"""memecap.metrics.paired: the paired bootstrap that says whether a change of a split's score is more than chance."""
import pytest

from memecap.metrics.paired import paired_gain


def test_the_same_gain_on_every_meme_gives_a_point_interval():
    result = paired_gain([1.0, 2.0, 3.0, 4.0], [[1.5, 2.5, 3.5, 4.5]])
    assert result.gain == pytest.approx(0.5)
    assert result.low == pytest.approx(0.5) and result.high == pytest.approx(0.5)


def test_gains_that_cancel_leave_zero_inside_the_interval():
    before = [1.0] * 50
    after = [2.0] * 25 + [0.0] * 25
    result = paired_gain(before, [after])
    assert result.gain == pytest.approx(0.0)
    assert result.low < 0 < result.high
    assert -1 <= result.low and result.high <= 1


def test_one_meme_carrying_the_score_widens_the_interval():
    """Ten memes of 0.5 and one of 8: losing the one costs most of the mean, but the memes cannot rule out no loss."""
    before = [8.0] + [0.5] * 10
    after = [0.0] + [0.6] * 10
    result = paired_gain(before, [after], top=1)
    assert result.gain < 0
    assert result.low < result.gain < result.high
    assert result.high > 0  # resamples without the big meme see only the small gains
    assert result.top_share == pytest.approx(8.0 / 13.0)


def test_runs_are_averaged_per_meme_before_the_gain():
    result = paired_gain([1.0, 1.0], [[2.0, 0.0], [0.0, 2.0]])
    assert result.after == pytest.approx(1.0)
    assert result.low == pytest.approx(0.0) and result.high == pytest.approx(0.0)  # each meme's mean is 1


def test_the_interval_is_seeded_and_narrows_with_more_memes():
    small = paired_gain([1.0, 0.0] * 10, [[0.0, 1.0] * 10], seed=3)
    assert small == paired_gain([1.0, 0.0] * 10, [[0.0, 1.0] * 10], seed=3)
    large = paired_gain([1.0, 0.0] * 1000, [[0.0, 1.0] * 1000], seed=3)
    assert large.high - large.low < (small.high - small.low) / 5


def test_wrong_inputs_are_refused():
    with pytest.raises(ValueError, match=r"after_runs\[1\] has 2 scores but before has 3"):
        paired_gain([1, 2, 3], [[1, 2, 3], [1, 2]])
    with pytest.raises(ValueError, match="at least one run"):
        paired_gain([1, 2], [])
    with pytest.raises(ValueError, match="non-empty"):
        paired_gain([], [[]])
    with pytest.raises(ValueError, match="level"):
        paired_gain([1.0], [[1.0]], level=1.5)


def test_describe_reads_the_gain_and_interval():
    line = paired_gain([1.0, 1.0], [[1.1, 1.1]]).describe("CIDEr-D", 2)
    assert line == "CIDEr-D 1.000 -> 1.100: +0.100 (+10.0%), 95% interval +0.100 .. +0.100 over 2 memes"
