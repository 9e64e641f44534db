"""The loss axis's labels stay short and span the data, whatever the loss did."""

from __future__ import annotations

import re

import pytest
from textual_plotext.plot import Plot

from trainlab.tui.plotting import draw_loss_chart
from trainlab.tui.series import Series

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _axis_labels(losses: list[float], *, log_y: bool) -> list[str]:
    train = Series()
    for step, loss in enumerate(losses, start=1):
        train.append(step, loss)
    plt = Plot()
    draw_loss_chart(plt, train=train, val_loss=Series(), val_accuracy=Series(), lr=Series(),
                    markers=[], log_y=log_y, width=60, height=14)
    lines = ANSI.sub("", plt.build()).splitlines()
    return [line.split("┤")[0].strip() for line in lines if "┤" in line]


@pytest.mark.parametrize("log_y", [False, True])
def test_a_diverged_loss_gets_short_labels_that_span_it(log_y: bool):
    losses = [2.3, 1.9e33, 5.0, 0.3, 0.2]
    labels = _axis_labels(losses, log_y=log_y)
    assert labels and all(len(label) <= 8 for label in labels), labels
    values = [float(label) for label in labels]
    assert max(values) <= max(losses) * 1.01
    if log_y:  # powers of ten: from at most the smallest loss's decade up to 1e33
        assert min(values) >= 0.1 and max(values) >= 1e27
    else:  # the extremes are labelled
        assert max(values) == pytest.approx(max(losses), rel=0.01)
        assert min(values) == pytest.approx(min(losses), rel=0.01)


def test_an_ordinary_loss_is_labelled_within_its_range():
    losses = [2.31, 1.7, 1.1, 0.62, 0.35, 0.21]
    values = [float(label) for label in _axis_labels(losses, log_y=False)]
    assert len(values) >= 3
    assert min(values) == pytest.approx(0.21, rel=0.01)
    assert max(values) == pytest.approx(2.31, rel=0.01)
    assert values == sorted(values, reverse=True)  # top to bottom
