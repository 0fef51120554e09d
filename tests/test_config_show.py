"""`optiml config show`: the resolved recipe with each value's origin and doc, loadable again."""

from pathlib import Path

import pytest

from optiml_engine.cli import main
from optiml_engine.config import load_recipe, recipe_origins, show_recipe

RECIPES = sorted(str(p) for p in (Path(__file__).parents[1] / "recipes").glob("*.yaml"))
RECIPE = """\
model: {hidden_size: 32, num_layers: 2, num_heads: 4, vocab_size: 300,
        max_position_embeddings: 128}
data: {seq_length: 128, tokenizer: "1e5"}
train: {steps: 3, seed: 9}
"""


@pytest.mark.parametrize("overrides", [[], ["train.steps=50", "optim.lr=1e-3",
                                            "optim.betas=[0.8, 0.9]", "data.bench=null"]])
@pytest.mark.parametrize("path", RECIPES)
def test_output_loads_back_as_the_same_recipe(path, overrides, tmp_path, capsys):
    assert len(RECIPES) == 5  # demo, demo-parallel, opt-iml-1.3b/30b/175b
    assert main(["config", "show", path, *overrides]) == 0
    shown = tmp_path / "shown.yaml"
    shown.write_text(capsys.readouterr().out)
    assert load_recipe(shown) == load_recipe(path, overrides)


def test_each_value_says_where_it_came_from(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE)
    overrides = ["train.steps=50", "optim.lr=1e-3"]
    recipe, origins = recipe_origins(path, overrides)
    assert (origins["train.steps"], origins["optim.lr"]) == ("override", "override")
    assert (origins["train.seed"], origins["model.vocab_size"]) == ("file", "file")
    assert (origins["optim.eps"], origins["train.micro_batch_size"]) == ("default", "default")
    assert (origins["model.ffn_hidden_size"], origins["model.pre_layer_norm"]) == (
        "derived", "derived")
    assert sorted(set(origins.values())) == ["default", "derived", "file", "override"]
    lines = {" ".join(line.split()) for line in show_recipe(path, overrides).splitlines()}
    for line in (
        "steps: 50 # [override] optimizer steps to run (>= 1)",
        "seed: 9 # [file] seed for weights, data order and dropout (>= 0)",
        "lr: 0.001 # [override] peak learning rate (OPT-IML: 5e-5) (>= 0.0)",
        "eps: 1.0e-08 # [default] Adam epsilon (>= 0.0)",
        "ffn_hidden_size: 128 # [derived] ReLU FFN width (OPT: 4 x hidden_size) (>= 1; <= 262144)",
        "dtype: fp32 # [default] compute dtype of the model (one of fp32, bf16, fp16)",
        "tokenizer: \"1e5\" # [file] 'byte' (needs no files), a tokenizer.json, or a directory "
        "with vocab.json + merges.txt",  # a string the recipe loader would read as a float
        "train: # training loop",
    ):
        assert line in lines, line
    assert recipe.data.tokenizer == "1e5"


def test_a_section_given_whole_replaces_the_file_section(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE)
    recipe, origins = recipe_origins(path, ["train={steps: 4}"])
    assert (recipe.train.steps, recipe.train.seed) == (4, 1234)  # as load_recipe merges it
    assert (origins["train.steps"], origins["train.seed"]) == ("override", "default")


def test_train_help_lists_the_sections_and_points_to_config_show(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "  model       the OPT model\n" in text and "  logging     console and " in text
    assert "`optiml config show RECIPE [overrides]`" in text


def test_config_show_names_a_bad_override(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE)
    assert main(["config", "show", str(path), "train.stepz=5"]) == 2
    assert capsys.readouterr().err == ("optiml: error: command line: train.stepz=5: unknown key "
                                       "(did you mean 'train.steps'?)\n")
