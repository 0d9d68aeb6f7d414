"""Prompt rendering: leakage, history cap, token budget, no-history rule, hashes, bad templates."""

from __future__ import annotations

import pytest

from feature_store.dataset import load_dataset
from knowledge_service.models import KnowledgeError, PromptTooLongError, load_tokenizer, model_info
from knowledge_service.prompts import load_template, scenario_prompts, user_prompts
from llm4msr.atomic import sha256_text
from tests.knowledge.conftest import tiny_dataset


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(model_info("minilm").path)


@pytest.fixture(scope="module")
def templates():
    return load_template("scenario_v1"), load_template("user_v1")


def test_user_prompts_use_only_training_rows(tok, templates):
    ds = tiny_dataset()
    users, no_hist = user_prompts(ds, templates[1], tok, budget=512, max_history_per_scenario=50)
    assert [p.entity_id for p in users] == ["u0", "u1", "u2", "u3", "u4"]
    assert no_hist == ["u5"]  # only valid/test rows: no prompt, no vector
    for p in users:
        assert "LEAK" not in p.text and "leak" not in p.text.lower()
        assert "Movies" in p.text and "Books" in p.text and "Music" in p.text
        assert p.n_history == 15 and p.n_dropped == 0
    scen = scenario_prompts(ds, templates[0], tok, budget=512)
    assert all("LEAKCAT" not in p.text for p in scen)  # statistics come from the train split only


def test_history_cap_keeps_most_recent_per_scenario(tok, templates):
    ds = tiny_dataset(per_scenario=5)
    users, _ = user_prompts(ds, templates[1], tok, budget=512, max_history_per_scenario=2, user_ids={"u0"})
    (p,) = users
    assert p.n_history == 6
    # u0's train items in s1 are i0..i4 in time order: the newest two are i3, i4
    assert "s1 title 3" in p.text and "s1 title 4" in p.text and "s1 title 2" not in p.text


def test_token_budget_drops_oldest_entries_first(tok, templates):
    ds = tiny_dataset(per_scenario=5)
    (full,), _ = user_prompts(ds, templates[1], tok, budget=512, max_history_per_scenario=10, user_ids={"u0"})
    budget = full.n_tokens - 30
    (cut,), _ = user_prompts(
        ds, templates[1], tok, budget=budget, max_history_per_scenario=10, user_ids={"u0"}
    )
    assert cut.n_tokens <= budget < full.n_tokens
    assert cut.n_dropped > 0 and cut.n_history + cut.n_dropped == 15
    assert len(tok.encode_batch([cut.text])[0]) == cut.n_tokens  # measured with the model's tokenizer
    # the oldest rows are s1 (timestamps 1..5): they go first, the newest (s3) stay
    assert "s1 title 0" not in cut.text and "s3 title 4" in cut.text


def test_prompt_that_cannot_fit_is_an_error(tok, templates):
    with pytest.raises(PromptTooLongError, match=r"user 'u0'.*budget of 20 tokens"):
        user_prompts(tiny_dataset(), templates[1], tok, budget=20, max_history_per_scenario=10)
    long_desc = "very long description " * 200
    with pytest.raises(
        PromptTooLongError, match=r"scenario 's1': prompt has \d+ tokens, over the budget of 256"
    ):
        scenario_prompts(tiny_dataset(scenario_description=long_desc), templates[0], tok, budget=256)


def test_hashes_and_versions(tok, templates):
    ds = tiny_dataset()
    scen = scenario_prompts(ds, templates[0], tok, budget=512)
    assert [p.entity_id for p in scen] == ["s1", "s2", "s3"]
    for p in scen:
        assert p.template_version == "scenario_v1" and p.prompt_hash == sha256_text(p.text)
        assert "Other scenarios:" in p.text and p.text.count("Movies") >= 1
    assert templates[1].version == "user_v1" and len(templates[1].sha256) == 64
    again = scenario_prompts(ds, templates[0], tok, budget=512)
    assert [p.prompt_hash for p in again] == [p.prompt_hash for p in scen]  # deterministic


def test_missing_or_broken_template(tmp_path):
    with pytest.raises(KnowledgeError, match="user_v9.j2 does not exist"):
        load_template("user_v9")
    (tmp_path / "bad.j2").write_text("{% for x in %}")
    with pytest.raises(KnowledgeError, match="bad.j2: line 1"):
        load_template("bad", tmp_path)


def test_written_dataset_roundtrip_keeps_cutoffs(tiny_dataset_dir):
    ds = load_dataset(tiny_dataset_dir)
    assert ds.users.filter(ds.users["user_id"] == "u5")["train_cutoff"].to_list() == [None]


def test_cli_prompts_renders_without_llm(tiny_dataset_dir, capsys):
    from pipelines.cli import main

    assert main(["knowledge", "prompts", "--data", str(tiny_dataset_dir)]) == 0
    out = capsys.readouterr().out
    assert out.count("=== scenario") == 3 and "Scenario: Movies." in out
    assert main(["knowledge", "prompts", "--data", str(tiny_dataset_dir), "--user", "u1"]) == 0
    out = capsys.readouterr().out
    assert "=== user u1" in out and "LEAK" not in out and "Profile: age group 25-34." in out
    assert main(["knowledge", "prompts", "--data", str(tiny_dataset_dir), "--user", "u5"]) == 0
    assert "no training history: no prompt, no vector" in capsys.readouterr().out
    assert main(["knowledge", "prompts", "--data", str(tiny_dataset_dir), "--user", "nobody"]) == 2
    assert "user 'nobody' is not in" in capsys.readouterr().err
    assert main(["knowledge", "prompts", "--data", str(tiny_dataset_dir), "--llm", "/no/such"]) == 2
    assert "folder /no/such does not exist" in capsys.readouterr().err


def test_described_rows_are_the_rows_prompts_list(tok, templates):
    """What the ranker masks (train.meta.mask_described) is what the prompts list with labels."""
    import polars as pl

    from knowledge_service.prompts import described_rows

    ds = tiny_dataset(per_scenario=5)
    users, _ = user_prompts(ds, templates[1], tok, budget=512, max_history_per_scenario=2)
    rows = described_rows(ds.interactions.lazy(), ds.users, 2).collect()["row"]
    listed = ds.interactions.with_row_index("row").filter(pl.col("row").is_in(rows.implode()))
    assert set(listed["split"]) == {"train"}  # valid/test rows are never listed
    per_user = listed.group_by("user_id").len()
    assert dict(per_user.iter_rows()) == {p.entity_id: p.n_history for p in users}
    u0 = next(p for p in users if p.entity_id == "u0")
    for r in listed.filter(pl.col("user_id") == "u0").join(ds.items, on="item_id").iter_rows(named=True):
        assert f"{r['title']} (" in u0.text  # the listed row (and its label) is in the prompt
