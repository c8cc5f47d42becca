"""Every data option takes what a `datasets` user has at hand: files, a folder written by
`save_to_disk` (a `Dataset` or one split of a `DatasetDict`), a folder of data files, and a
hub dataset `NAME[:CONFIG]` (read through the same `load_dataset` call; offline here, so its
call is checked by a stand-in)."""

from __future__ import annotations

import json

import datasets
import pytest

from forgetscope.data import check_data_sources, read_documents, split_spec
from forgetscope.errors import UserInputError

TEXTS = ["In the beginning was the word.", "And the word was with God.", "All things were made by him."]


def test_a_save_to_disk_folder_is_a_domain_named_after_it(tmp_path):
    datasets.Dataset.from_dict({"text": TEXTS}).save_to_disk(str(tmp_path / "gospel"))
    assert read_documents(tmp_path / "gospel") == {"gospel": TEXTS}


def test_a_dataset_dict_folder_gives_train_or_the_split_asked_for(tmp_path):
    saved = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": TEXTS[:2]}),
                                  "test": datasets.Dataset.from_dict({"text": TEXTS[2:]})})
    saved.save_to_disk(str(tmp_path / "wiki"))
    assert read_documents(tmp_path / "wiki") == {"wiki": TEXTS[:2]}
    assert read_documents(f"{tmp_path / 'wiki'}@test") == {"wiki": TEXTS[2:]}
    with pytest.raises(UserInputError, match="has no split 'validation' \\(splits: train, test\\)"):
        read_documents(f"{tmp_path / 'wiki'}@validation")


@pytest.mark.parametrize("kind", ["parquet", "jsonl"])
def test_a_folder_of_data_files_is_read_as_one_dataset(tmp_path, kind):
    folder = tmp_path / "shards"
    folder.mkdir()
    for i, text in enumerate(TEXTS):
        if kind == "parquet":
            datasets.Dataset.from_dict({"text": [text]}).to_parquet(str(folder / f"part-{i}.parquet"))
        else:
            (folder / f"part-{i}.jsonl").write_text(json.dumps({"text": text}) + "\n")
    assert sorted(read_documents(folder)["shards"]) == sorted(TEXTS)


def test_a_hub_dataset_goes_through_load_dataset_with_its_config_and_split(monkeypatch):
    calls = []

    def load_dataset(name, config=None, split=None, **kwargs):
        calls.append((name, config, split))
        return datasets.Dataset.from_dict({"text": TEXTS})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    assert read_documents("wikitext:wikitext-103-raw-v1@test") == {"wikitext-103-raw-v1": TEXTS}
    assert read_documents("Salesforce/wikitext") == {"Salesforce-wikitext": TEXTS}
    assert calls == [("wikitext", "wikitext-103-raw-v1", "test"), ("Salesforce/wikitext", None, "train")]


def test_a_hub_name_that_cannot_be_reached_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserInputError, match="no-such-dataset-xyz: no such file or folder, and the hub has no dataset"):
        read_documents("no-such-dataset-xyz")


def test_a_missing_data_file_is_refused_before_any_model_loads_and_folders_pass(tmp_path):
    (tmp_path / "folder").mkdir()
    check_data_sources([tmp_path / "folder", "wikitext:wikitext-2-raw-v1"], "eval data file")
    with pytest.raises(UserInputError, match="eval data file not found: .*missing.jsonl"):
        check_data_sources([tmp_path / "missing.jsonl"], "eval data file")
    with pytest.raises(UserInputError, match="holds no data files"):
        read_documents(tmp_path / "folder")


def test_a_split_is_what_follows_the_last_at_unless_the_path_exists(tmp_path):
    odd = tmp_path / "a@b.txt"
    odd.write_text("x\n")
    assert split_spec(odd) == (str(odd), None)
    assert split_spec("wikitext:wikitext-2-raw-v1@test") == ("wikitext:wikitext-2-raw-v1", "test")
