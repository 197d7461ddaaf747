"""docs/api.md's job contract and reply tables, README's common fields, docs/runpod.md's CUDA flavours and
docs/settings.md's environment table are the schema's, the reply's, the flavours' and the settings' own, row for
row."""

from __future__ import annotations

from dev.docs import (
    API_PAGE,
    PAGES,
    README,
    RUNPOD_PAGE,
    SETTINGS_PAGE,
    common_fields_table,
    contract_table,
    environment_table,
    main,
    update,
)
from sdxl_worker.contract.job_schema import JobInput
from sdxl_worker.settings import environment_fields


def test_the_pages_tables_match_the_fields() -> None:
    for page in PAGES:
        text = page.read_text()
        assert update(text) == text, f"{page.name}'s generated tables are stale: run python -m dev.docs"
    assert "<!-- generated: job contract -->" in API_PAGE.read_text()
    assert "<!-- generated: cuda flavours -->" in RUNPOD_PAGE.read_text()
    assert "<!-- generated: common fields -->" in README.read_text()
    assert "<!-- generated: environment -->" in SETTINGS_PAGE.read_text()
    assert main(["--check"]) == 0


def test_every_field_and_variable_has_a_row() -> None:
    contract, environment = contract_table(), environment_table()
    assert all(f"| `{name}` |" in contract for name in JobInput.model_fields)
    assert all(f"| `{variable}` |" in environment for variable, _ in environment_fields())
    assert "| `width` | integer | `1024` | >= 256; <= 2048; multiple of 8 |" in contract
    assert "| `width` | `1024` | >= 256; <= 2048; multiple of 8 |" in common_fields_table()
    assert "| `COMPILE_SCOPE` | `full` | `full`, `blocks` |" in environment


def test_every_reply_field_has_a_row() -> None:
    from dev.docs import reply_table
    from sdxl_worker.delivery.reply import Reply

    table = reply_table()
    assert all(f"| `{name}` |" in table for name in Reply.model_fields)
    assert "| `timings.upload_s` | number | Only when set: With bucket URLs: the upload. |" in table


def test_a_changed_description_makes_the_page_stale() -> None:
    text = API_PAGE.read_text()
    stale = text.replace("| Sampling steps. |", "| Steps. |")
    assert stale != text and update(stale) == text
