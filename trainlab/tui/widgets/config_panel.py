"""The config panel: a form generated from the config schema, validated as you type.

Every field of ``trainlab.core.config`` appears here without UI code of its own: choices
become a select, everything else an input parsed exactly as ``--set`` parses it, so
the error a user sees names the field, the value and what is allowed. Hot fields
(marked *live*) apply to the running training when committed (Enter, or picking a
choice); cold fields are kept as edits until the user restarts with them.

A text field is typed into only in its edit mode (``ConfigInput``): Enter starts an
edit, Enter again commits it, Escape (or leaving the field) cancels it. Outside an edit
every key is the app's (1-5 switch views, r restarts...), so a key meant for the app
never lands in a value.
"""

from __future__ import annotations

from typing import Any, ClassVar

from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Button, Input, Label, Select, Static
from textual.widgets.input import Selection

from trainlab.core import config as schema
from trainlab.core.config import Config, ConfigError, FieldInfo
from trainlab.tui.feed import RunView
from trainlab.tui.state import CONFIG, RUN, RunState


def format_value(value: Any) -> str:
    """A field's value as the text its input shows (and ``parse_value`` reads back)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return ", ".join(str(item) for item in value)
    return repr(value) if isinstance(value, float) else str(value)


def widget_id(key: str, part: str = "field") -> str:
    """A DOM id for a dotted key's input ('optim.lr' -> 'field-optim-lr'), or for another
    ``part`` of its row ('error-optim-lr')."""
    return f"{part}-" + key.replace(".", "-")


EDIT_HELP = ("Enter edits a field, Enter again applies, Escape cancels; outside an edit "
             "keys are the app's (1-5, r, ...)")
"""The rule of the fields, as the config view's help line says it."""


class ConfigInput(Input):
    """A field's text input that types only while it is being edited.

    Focused but not editing, it takes no key that changes its text: printable keys,
    pastes and the delete/cut/paste bindings go to the app instead (so ``1`` switches
    the view and ``r`` restarts rather than landing in the value). Enter starts an edit
    (the text selected: typing replaces it), Enter again posts ``Submitted`` (the panel
    commits a valid value and ends the edit, or keeps the edit open on an error), Escape
    or leaving the field cancels it: the text before the edit comes back.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel_edit", "Cancel edit", show=False),
    ]

    EDITING_ACTIONS = frozenset({
        "delete_left", "delete_right", "delete_left_word", "delete_right_word",
        "delete_left_all", "delete_right_all", "cut", "paste", "cancel_edit"})
    """The Input's actions that change the text (and cancelling): only while editing."""

    class ModeChanged(Message):
        """The input started or ended an edit."""

        def __init__(self, field: ConfigInput) -> None:
            self.field = field
            super().__init__()

    def __init__(self, value: str, *, id: str | None = None) -> None:
        super().__init__(value, id=id, compact=True, select_on_focus=False)
        self.editing = False
        self.before = value
        """The text when the edit started: what Escape brings back."""

    def start_edit(self) -> None:
        """Type into the field from now on (its text selected)."""
        self.before, self.editing = self.value, True
        self._mode_changed()
        self.selection = Selection(0, len(self.value))

    def end_edit(self) -> None:
        """Keys are the app's again (the panel committed the text)."""
        self.editing = False
        self.before = self.value
        self._mode_changed()

    def cancel_edit(self) -> None:
        """Drop what was typed: the text before the edit comes back."""
        if not self.editing:
            return
        self.editing = False
        self.value = self.before  # its Changed lets the panel drop a typing error
        self._mode_changed()

    def _mode_changed(self) -> None:
        self.set_class(self.editing, "-editing")
        self.selection = Selection.cursor(len(self.value))  # no selection left over
        self.post_message(self.ModeChanged(self))

    def check_consume_key(self, key: str, character: str | None) -> bool:
        """Printable keys are the field's only while it is edited (else the app's)."""
        return self.editing and super().check_consume_key(key, character)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """The text-changing bindings act only while editing (else the key goes on up)."""
        if action in self.EDITING_ACTIONS and not self.editing:
            return False
        return super().check_action(action, parameters)

    async def _on_key(self, event: events.Key) -> None:
        if not self.editing and event.is_printable:
            event.prevent_default()  # not typed: it bubbles up to the app's bindings

    def _on_paste(self, event: events.Paste) -> None:
        if not self.editing:
            event.prevent_default()
            event.stop()

    def _on_blur(self, event: events.Blur) -> None:
        self.cancel_edit()

    async def action_submit(self) -> None:
        """Enter: start an edit, or ask the panel to commit the one under way."""
        if not self.editing:
            self.start_edit()
        else:
            await super().action_submit()

    def action_cancel_edit(self) -> None:
        """Escape while editing: cancel the edit."""
        self.cancel_edit()


class ConfigPanel(RunView, Widget, can_focus=False):
    """Every config field, grouped by section, with inline validation."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "leave_field", "Leave field", show=False),
    ]

    class HotEdited(Message):
        """The user committed a new value for a hot field."""

        def __init__(self, key: str, value: Any) -> None:
            self.key, self.value = key, value
            super().__init__()

    class RestartRequested(Message):
        """The user asked for a new run with the edited config."""

    def __init__(self, config: Config, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.config = config
        """The run's config (what the form shows where nothing was edited)."""
        self.edits: dict[str, Any] = {}
        """Valid values the user entered that differ from ``config``."""
        self.errors: dict[str, str] = {}
        """Fields whose text does not parse: the message for each."""
        self._fields = {info.key: info for info in schema.fields()}
        self._key_by_id = {widget_id(key): key for key in self._fields}

    def compose(self) -> ComposeResult:
        yield Static(id="config-summary")
        with Horizontal(id="config-buttons"):
            yield Button("Restart with edits", id="config-restart", variant="primary",
                         compact=True)
            yield Button("Revert edits", id="config-revert", compact=True)
        with VerticalScroll(id="config-form"):
            section = ""
            for info in self._fields.values():
                head, name = info.key.split(".", 1)
                if head != section:
                    section = head
                    yield Static(f"[b]{head}[/b]", classes="config-section")
                with Horizontal(classes="config-row"):
                    tag = " [green]live[/]" if info.spec.hot else ""
                    yield Label(f"{name}{tag}", classes="config-name")
                    yield self._make_input(info)
                yield Static("", classes="config-error", id=widget_id(info.key, "error"))
        yield Static("", id="config-doc")

    def _make_input(self, info: FieldInfo) -> Widget:
        value = self.config.get(info.key)
        wid = widget_id(info.key)
        if info.spec.choices and info.type is str:
            # A value of the field's pattern (run.device = cuda:1) is offered as it is.
            shown = (*info.spec.choices, *(() if value in info.spec.choices else (value,)))
            options = [(choice, choice) for choice in shown]
            return Select(options, value=value, allow_blank=False, id=wid, compact=True)
        if info.type is bool:
            return Select([("true", True), ("false", False)], value=value, allow_blank=False,
                          id=wid, compact=True)
        return ConfigInput(format_value(value), id=wid)

    def on_mount(self) -> None:
        self._summarize()

    # --- reading the form --------------------------------------------------------

    def _key_of(self, widget: Widget) -> str | None:
        return self._key_by_id.get(widget.id or "")

    def _record(self, key: str, value: Any) -> None:
        """Keep ``value`` as an edit unless it is what the run already has."""
        self.errors.pop(key, None)
        if value == self.config.get(key):
            self.edits.pop(key, None)
        else:
            self.edits[key] = value
        self._show_error(key, "")

    def _show_error(self, key: str, message: str) -> None:
        error = self.query_one(f"#{widget_id(key, 'error')}", Static)
        error.update(f"[red]{message}[/]" if message else "")
        error.display = bool(message)
        self.query_one(f"#{widget_id(key)}").set_class(bool(message), "-invalid")

    @on(Input.Changed)
    def _input_changed(self, event: Input.Changed) -> None:
        key = self._key_of(event.input)
        if key is None:
            return
        event.stop()
        field = event.input
        # The text now, not the message's: an edit cancelled since must not count.
        editing = isinstance(field, ConfigInput) and field.editing
        try:
            value = schema.parse_value(key, field.value)
        except ConfigError as exc:
            self.errors[key] = str(exc)
            if not editing:
                self.edits.pop(key, None)
            self._show_error(key, str(exc))
        else:
            if editing:  # checked as typed; it counts only once committed (Enter)
                self.errors.pop(key, None)
                self._show_error(key, "")
            else:  # set from code (not typed): an edit at once
                self._record(key, value)
        self._summarize()

    @on(Input.Submitted)
    def _input_submitted(self, event: Input.Submitted) -> None:
        key = self._key_of(event.input)
        if key is None:
            return
        event.stop()
        field = event.input
        try:
            value = schema.parse_value(key, field.value)
        except ConfigError as exc:  # the edit stays open, the error shown
            self.errors[key] = str(exc)
            self._show_error(key, str(exc))
            self._summarize()
            return
        if isinstance(field, ConfigInput):
            field.end_edit()
        self._record(key, value)
        self._summarize()
        if key in self.edits and self._fields[key].spec.hot:
            self.post_message(self.HotEdited(key, self.edits[key]))

    @on(ConfigInput.ModeChanged)
    def _mode_changed(self, event: ConfigInput.ModeChanged) -> None:
        event.stop()
        key = self._key_of(event.field)
        if key is not None:
            if not event.field.editing and key in self.errors:
                try:  # cancelled: the text before the edit is back
                    schema.parse_value(key, event.field.value)
                except ConfigError:
                    pass
                else:
                    self.errors.pop(key)
                    self._show_error(key, "")
                    self._summarize()
            self._show_doc(key)

    @on(Select.Changed)
    def _select_changed(self, event: Select.Changed) -> None:
        key = self._key_of(event.select)
        if key is None or event.value is Select.BLANK:
            return
        event.stop()
        self._record(key, event.value)
        self._summarize()
        if key in self.edits and self._fields[key].spec.hot:
            self.post_message(self.HotEdited(key, self.edits[key]))

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        key = self._key_of(event.widget)
        if key is not None:
            self._show_doc(key)

    def _show_doc(self, key: str) -> None:
        """The field's doc, and its mode: editing (keys type) or not (keys are the app's)."""
        info = self._fields[key]
        when = ("live: applies to the running training at the next step"
                if info.spec.hot else "cold: applies when you restart")
        allowed = schema.describe_allowed(info)
        widget = self.query_one(f"#{widget_id(key)}")
        if isinstance(widget, ConfigInput):
            mode = ("[b reverse] EDITING [/] keys type here: [b]Enter[/b] applies, "
                    "[b]Escape[/b] cancels" if widget.editing else
                    "[b]Enter[/b] to edit (until then keys are the app's: 1-5, r, ...)")
        else:
            mode = "[b]Enter[/b] to choose (until then keys are the app's)"
        self.query_one("#config-doc", Static).update(
            f"[b]{key}[/b]  {mode}\n{info.spec.doc}\n[dim]allowed: {allowed}; default "
            f"{format_value(info.default)}; {when}[/]")

    @on(Button.Pressed, "#config-restart")
    def _restart_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.post_message(self.RestartRequested())

    @on(Button.Pressed, "#config-revert")
    def _revert_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.revert()

    def action_leave_field(self) -> None:
        """Give the keys back to the app (a focused field types them instead)."""
        self.screen.set_focus(None)

    # --- the app's side ----------------------------------------------------------

    def show_run(self, state: RunState, changed: frozenset[str]) -> None:
        """A new run: its config, no edits; a live change: the run's new values."""
        if RUN in changed:
            self.reset(state.config)
        elif CONFIG in changed:
            self.sync(state.config)

    def edited_config(self) -> Config:
        """The run's config with every edit; ConfigError names the first bad field."""
        if self.errors:
            key, message = next(iter(self.errors.items()))
            raise ConfigError(message if key in message else f"{key}: {message}")
        return self.config.with_values(self.edits)

    def sync(self, config: Config) -> None:
        """Show ``config`` (the run's, after a live change) where the user has no edit.

        Only the fields whose value changed are touched: one DOM query each, not sixty.
        """
        previous, self.config = self.config, config
        for key in self._fields:
            new = config.get(key)
            if key in self.edits or key in self.errors:
                if self.edits.get(key) == new:
                    self.edits.pop(key)  # the run now has what the user asked for
            elif previous.get(key) != new:
                self._set_widget(key, new)
        self._summarize()

    def set_value(self, key: str, value: Any) -> None:
        """Put ``value`` in ``key``'s field as if the user had entered it (an edit for the
        next restart, e.g. the lr finder's suggestion after the run ended).

        Raises:
            ConfigError: ``key`` is not a field, or ``value`` is not allowed for it (the
                message names the field, the value and what is allowed).
        """
        checked = schema.check_value(key, value)
        self._set_widget(key, checked)
        self._record(key, checked)
        self._summarize()

    def revert(self) -> None:
        """Drop every edit and error; the form shows the run's config again."""
        keys = list(self.edits) + list(self.errors)
        self.edits.clear()
        self.errors.clear()
        for key in keys:
            self._set_widget(key, self.config.get(key))
            self._show_error(key, "")
        self._summarize()

    def reset(self, config: Config) -> None:
        """A new run: show ``config`` everywhere, with no edits and no errors."""
        self.revert()  # the edited fields show the old run's values again...
        self.sync(config)  # ...then every field the new run changes takes its value

    def _set_widget(self, key: str, value: Any) -> None:
        """Show ``value`` without it counting as the user's edit (no Changed message)."""
        widget = self.query_one(f"#{widget_id(key)}")
        if isinstance(widget, Select):
            if widget.value != value:
                with widget.prevent(Select.Changed):
                    widget.value = value
        elif isinstance(widget, ConfigInput) and widget.editing:
            widget.before = format_value(value)  # not under the user's typing: on cancel
        elif isinstance(widget, Input):
            text = format_value(value)
            if widget.value != text:
                with widget.prevent(Input.Changed):
                    widget.value = text

    def _summarize(self) -> None:
        cold = [k for k in self.edits if not self._fields[k].spec.hot]
        hot = [k for k in self.edits if self._fields[k].spec.hot]
        parts = []
        if self.errors:
            parts.append(f"[red]{len(self.errors)} invalid: {', '.join(self.errors)}[/]")
        if cold:
            parts.append(f"[yellow]restart to apply: {', '.join(cold)}[/]")
        if hot:
            parts.append(f"not yet applied (Enter): {', '.join(hot)}")
        text = "; ".join(parts) or (f"[dim]{EDIT_HELP}. [green]live[/] fields apply at "
                                    "once, the others on restart (r).[/]")
        self.query_one("#config-summary", Static).update(text)
