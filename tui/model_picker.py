"""Choose a model: one from the node's catalog, or type any reference."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList

from rbee.control.keeper.words import ActionableError, checked_model_ref


class ModelPickerScreen(ModalScreen[str | None]):
    """Answers the chosen reference (checked), or None when dismissed."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, title: str, catalog: list[str], default: str) -> None:
        super().__init__()
        self.title_text = title
        self.catalog = catalog
        self.default = default

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(self.title_text, id="picker-title")
            yield Input(
                self.default, placeholder="pkg:…, file:/…, hf:ORG/REPO, https://…", id="model-ref"
            )
            yield Label("", markup=False, id="picker-problem")
            if self.catalog:
                yield Label("in the node's catalog:")
                yield OptionList(*self.catalog, id="catalog")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self._choose(str(event.option.prompt))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self._choose(event.value)

    def _choose(self, ref: str) -> None:
        try:
            self.dismiss(checked_model_ref(ref))
        except ActionableError as exc:
            self.query_one("#picker-problem", Label).update(exc.in_words())
