"""The app's flows, one small class each, owned by ``trainlab.tui.app.TrainlabApp``.

- ``engine``: the engine's lifecycle: start, restart, stop, leave (quit), the event pump
  and the live changes sent but not yet acknowledged;
- ``fixes``: one-key fixes from alerts, and the alert pop-up;
- ``lr_finder``: the learning-rate range test, live or on the config, and its answer;
- ``labs``: a lab's runs one after another, their curves on the chart.

The app keeps the layout, the key bindings and the steering keys; it routes each event
to the flows that react to it (``TrainlabApp._react``). A flow reaches the screen
through the app, and runs what must wait on a dialog as one of the app's workers.
"""
