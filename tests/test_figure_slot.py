"""A dashboard's figure slot shows each new figure as a fresh FigureWidget of it would."""

import numpy as np
import plotly.graph_objects as go

from wfexplore.widgets.base import FigureSlot


def shown(figure) -> dict:
    """The figure's properties without trace ids and empty containers (plotly.js reads an
    empty ``marker: {}`` or ``annotations: []`` as absent)."""

    def prune(value):
        if isinstance(value, dict):
            value = {k: prune(v) for k, v in value.items() if k != "uid"}
            return {k: v for k, v in value.items() if v not in ({}, [], None)}
        if isinstance(value, list):
            return [prune(v) for v in value]
        return value

    return prune(figure.to_plotly_json())


def figures():
    rng = np.random.default_rng(0)
    first = go.Figure(
        [
            go.Scatter(
                x=[1, 2], y=[3, 4], mode="markers", name="a", marker={"color": "red", "symbol": "x"}
            ),
            go.Heatmap(z=rng.random((4, 4)), colorscale="Viridis"),
        ],  # fmt: skip
        layout={
            "title": {"text": "A"},
            "xaxis": {"type": "log"},
            "annotations": [{"text": "note", "x": 1, "y": 1}],
        },  # fmt: skip
    )
    same_types = go.Figure(
        [
            go.Scatter(x=[5, 6, 7], y=[1, 1, 1], name="b", line={"dash": "dot"}),
            go.Heatmap(z=rng.random((3, 3))),
        ],  # fmt: skip
        layout={"title": {"text": "B"}, "yaxis": {"title": {"text": "y"}}},
    )
    other_types = go.Figure([go.Bar(x=["p", "q"], y=[2, 1])], layout={"barmode": "group"})
    return first, same_types, other_types


def count_messages(figure, sent: list) -> None:
    for name in ("_send_update_msg", "_send_restyle_msg", "_send_relayout_msg",
                 "_send_addTraces_msg", "_send_deleteTraces_msg"):  # fmt: skip
        original = getattr(figure, name)
        setattr(figure, name, lambda *a, _n=name, _o=original, **k: (sent.append(_n), _o(*a, **k)))


def test_each_drawn_figure_is_shown_as_a_fresh_widget_of_it_would_be():
    slot = FigureSlot("slot", {})
    widget = slot.figure
    for fig in (*figures(), figures()[0]):
        assert slot.draw(fig) is widget  # the one FigureWidget, never a new one
        assert shown(widget) == shown(go.FigureWidget(fig))


def test_traces_of_the_same_types_change_in_one_update():
    first, same_types, other_types = figures()
    slot = FigureSlot("slot", {})
    slot.draw(first)
    sent: list = []
    count_messages(slot.figure, sent)
    slot.draw(same_types)
    assert sent == ["_send_update_msg"]  # the page draws once
    sent.clear()
    slot.draw(other_types)
    assert sent == ["_send_deleteTraces_msg", "_send_update_msg", "_send_addTraces_msg"]


def test_a_trace_dropped_or_added_keeps_the_others_in_place():
    """A method dropped from a chart: the traces before it stay (changed in place), the rest
    are replaced; the widget still holds what a fresh one would."""
    first, _, _ = figures()
    slot = FigureSlot("slot", {})
    slot.draw(first)
    fewer = go.Figure([first.data[0]], layout=first.layout).update_layout(title="fewer")
    more = go.Figure([*first.data, go.Scatter(x=[0], y=[0])], layout=first.layout)
    more.update_layout(title="more")
    for fig, expected in (
        (fewer, ["_send_deleteTraces_msg", "_send_update_msg"]),
        (more, ["_send_update_msg", "_send_addTraces_msg"]),
    ):
        sent: list = []
        count_messages(slot.figure, sent)
        slot.draw(fig)
        assert sent == expected
        assert shown(slot.figure) == shown(go.FigureWidget(fig))
