"""Configs: defaults, YAML recipes, key=value overrides, and errors that name the key."""
from __future__ import annotations

from pathlib import Path

import warnings

import pytest
import yaml

from vidlang.config import Config, config_from_dict, load_config, parse_overrides, save_config
from vidlang.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "configs").glob("*/*.yaml")) + sorted((REPO / "src" / "vidlang" / "recipes").glob("*.yaml"))


def test_defaults_are_the_paper_setting():
    cfg = load_config()
    assert cfg.task == "taco"
    assert cfg.model.text_trainable_layers == -1  # fine-tune the text encoder
    assert cfg.taco.pos_tags == ["NOUN", "VERB"]
    assert cfg.taco.token_weight == 0.5 and cfg.eval.token_scale == 0.5
    assert cfg.taco.negatives == "cascade"
    assert cfg.train.text_lr is None and cfg.data.feature_fps is None
    assert cfg.data.skip_bad is False
    # every call gets fresh defaults (no shared mutable list)
    cfg.taco.pos_tags.append("ADJ")
    assert load_config().taco.pos_tags == ["NOUN", "VERB"]


def test_yaml_recipe_then_overrides():
    cfg = load_config(REPO / "configs" / "taco" / "msrvtt-ae128.yaml", ["train.steps=7", "model.width=32"])
    # recipe values
    assert cfg.data.root == "../shared/data/msrvtt-ae128-dev"
    assert cfg.data.train_split == "index:0:700" and cfg.data.max_frames == 12
    assert cfg.model.dropout == 0.0 and cfg.train.lr == pytest.approx(1e-3)
    # overrides win over the recipe
    assert cfg.train.steps == 7 and cfg.model.width == 32
    # keys the recipe does not name keep their defaults
    assert cfg.taco.tau_sentence == 1.0 and cfg.train.grad_clip == 0.0 and cfg.eval.rerank_topk == 20


@pytest.mark.parametrize(
    "override, section, key, expected",
    [
        ("train.steps=12", "train", "steps", 12),
        ("train.lr=3e-4", "train", "lr", 3e-4),  # YAML 1.1 reads 3e-4 as a string: still a float
        ("train.lr=0.5", "train", "lr", 0.5),
        ("train.grad_clip=2", "train", "grad_clip", 2.0),
        ("data.skip_bad=true", "data", "skip_bad", True),
        ("model.normalize=yes", "model", "normalize", True),
        ("taco.symmetric=false", "taco", "symmetric", False),
        ("taco.pos_tags=[NOUN]", "taco", "pos_tags", ["NOUN"]),
        ("taco.pos_tags=[]", "taco", "pos_tags", []),
        ("taco.pos_tags=NOUN,VERB,ADJ", "taco", "pos_tags", ["NOUN", "VERB", "ADJ"]),
        ("taco.pos_tags=NOUN, ADJ", "taco", "pos_tags", ["NOUN", "ADJ"]),
        ("train.text_lr=none", "train", "text_lr", None),
        ("train.text_lr=null", "train", "text_lr", None),
        ("train.text_lr=1e-5", "train", "text_lr", 1e-5),
        ("data.feature_fps=2.5", "data", "feature_fps", 2.5),
        ("data.val_split=none", "data", "val_split", "none"),
        ("train.out_dir=runs/x=y", "train", "out_dir", "runs/x=y"),  # split on the first '=' only
    ],
)
def test_overrides_are_typed(override, section, key, expected):
    cfg = load_config(None, [override])
    value = getattr(getattr(cfg, section), key)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    "override, named",
    [
        ("train.lrr=1", "train.lrr"),
        ("trainer.steps=5", "trainer"),
        ("model.width.x=3", "model.width"),  # a value, not a section
        ("model=3", "model"),  # a section, not a value
    ],
)
def test_unknown_or_misplaced_key_names_it(override, named):
    with pytest.raises(ConfigError, match=f"'{named}'"):
        load_config(None, [override])


@pytest.mark.parametrize(
    "override, named",
    [
        ("train.steps=abc", "train.steps"),
        ("train.steps=1.5", "train.steps"),
        ("train.steps=yes", "train.steps"),  # YAML reads a bool: not silently int(True) == 1
        ("train.steps=null", "train.steps"),
        ("train.lr=fast", "train.lr"),
        ("train.lr=[1]", "train.lr"),
        ("train.out_dir=[a, b]", "train.out_dir"),
        ("data.skip_bad=maybe", "data.skip_bad"),
        ("taco.pos_tags={a: 1}", "taco.pos_tags"),
        ("train.text_lr=quick", "train.text_lr"),
    ],
)
def test_wrong_type_names_the_key(override, named):
    with pytest.raises(ConfigError, match=f"'{named}'"):
        load_config(None, [override])


def test_override_without_equals_sign():
    with pytest.raises(ConfigError, match="train.steps"):
        parse_overrides(["train.steps"])


def test_unknown_key_inside_yaml_names_it(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  steps: 3\n  lrr: 0.1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="'train.lrr'"):
        load_config(recipe)
    recipe.write_text("trian:\n  steps: 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="'trian'"):
        load_config(recipe)
    recipe.write_text("train:\n  steps: three\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="'train.steps'"):
        load_config(recipe)
    recipe.write_text("- train\n- steps\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(recipe)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_empty_yaml_is_an_error_naming_the_file(tmp_path):
    """An empty recipe is most likely a truncated or wrong file: refused, naming it and what was expected."""
    recipe = tmp_path / "empty.yaml"
    recipe.write_text("# nothing\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"empty\.yaml is empty; expected a mapping of sections"):
        load_config(recipe)
    recipe.write_text("{}\n", encoding="utf-8")  # an explicit empty mapping is the defaults
    assert load_config(recipe) == Config()


@pytest.mark.parametrize("text, named", [
    ("train:\n  lr: [1\n", "line 3"),  # invalid YAML: the file and the line
    ("train: !!python/object:os.system {}\n", "refused"),  # unsafe tag: refused, not a traceback
])
def test_bad_yaml_names_the_file(tmp_path, text, named):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"bad\.yaml.*{named}"):
        load_config(recipe)


@pytest.mark.parametrize("override, key", [
    ("train.lr=-0.1", "train.lr"), ("train.lr=nan", "train.lr"), ("train.lr=.nan", "train.lr"),
    ("train.batch_size=0", "train.batch_size"), ("train.steps=-3", "train.steps"), ("train.steps=0", "train.steps"),
    ("data.max_frames=0", "data.max_frames"), ("decode.beam_size=0", "decode.beam_size"),
    ("mvgpt.mask_prob=1.5", "mvgpt.mask_prob"), ("model.dropout=-0.1", "model.dropout"),
    ("decode.top_p=0", "decode.top_p"), ("train.save_every=0", "train.save_every"),
    ("train.weight_decay=inf", "train.weight_decay"), ("train.optimizer=sgd", "train.optimizer"),
    ("train.resume=maybe", "train.resume"),
])
def test_values_out_of_range_name_the_key(override, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_config(None, [override])


def test_zero_steps_scores_init_weights():
    assert load_config(None, ["train.steps=0", "train.init_from=runs/x"]).train.steps == 0


@pytest.mark.parametrize("override, expected", [
    ("train.out_dir=007", "007"), ("train.out_dir=1e3", "1e3"), ("train.out_dir=yes", "yes"),
    ("data.val_split=0.5", "0.5"), ("train.device=cuda:0", "cuda:0"),
])
def test_string_overrides_keep_their_text(override, expected):
    key = override.split("=")[0].split(".")
    value = getattr(getattr(load_config(None, [override]), key[0]), key[1])
    assert value == expected and type(value) is str


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_loads(recipe):
    raw = yaml.safe_load(recipe.read_text(encoding="utf-8"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # shipped recipes use no renamed key
        cfg = load_config(recipe)
    # every value the recipe gives arrives in the config
    for section, values in raw.items():
        if not isinstance(values, dict):
            assert getattr(cfg, section) == values
            continue
        for key, value in values.items():
            got = getattr(getattr(cfg, section), key)
            assert got == value, f"{recipe.name}: {section}.{key} = {got!r}, recipe says {value!r}"
    kind = "mvgpt" if "mvgpt" in (recipe.parent.name, recipe.name.split("-")[0]) else "taco"
    assert cfg.task == raw.get("task", kind)  # a recipe naming its task was checked above


def test_recipes_exist():
    assert len(RECIPES) >= 2


def test_save_and_reload_round_trip(tmp_path):
    cfg = load_config(None, ["train.text_lr=2e-5", "taco.pos_tags=[NOUN]", "data.feature_fps=1.5", "train.steps=9"])
    save_config(cfg, tmp_path / "config.yaml")
    again = config_from_dict(yaml.safe_load((tmp_path / "config.yaml").read_text(encoding="utf-8")))
    assert again == cfg


def test_flat_layout_recipe_loads_with_a_warning_naming_the_new_keys(tmp_path):
    recipe = tmp_path / "old.yaml"
    recipe.write_text("model:\n  name: mvgpt\n  width: 32\nloss:\n  token_weight: 0.25\n"
                      "mvgpt:\n  decode: greedy\n  max_decode_len: 12\n", encoding="utf-8")
    with pytest.warns(FutureWarning) as caught:
        cfg = load_config(recipe, ["loss.num_negatives=4"])
    said = " ".join(str(w.message) for w in caught)
    for old, new in [("model.name", "task"), ("loss.token_weight", "taco.token_weight"),
                     ("mvgpt.decode", "decode.method"), ("mvgpt.max_decode_len", "decode.max_len"),
                     ("loss.num_negatives", "taco.num_negatives")]:
        assert f"'{old}' is now '{new}'" in said
    assert (cfg.task, cfg.model.width, cfg.taco.token_weight, cfg.taco.num_negatives) == ("mvgpt", 32, 0.25, 4)
    assert (cfg.decode.method, cfg.decode.max_len) == ("greedy", 12)


def test_old_and_new_name_of_one_key_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="'loss.token_weight' and 'taco.token_weight' are the same key"):
        load_config(None, ["loss.token_weight=0.1", "taco.token_weight=0.2"])


def test_a_flat_layout_checkpoint_config_loads_silently():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = config_from_dict({"model": {"name": "taco", "width": 16}, "loss": {"fusion_weight": 0.0}})
    assert (cfg.task, cfg.model.width, cfg.taco.fusion_weight) == ("taco", 16, 0.0)
