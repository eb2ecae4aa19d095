"""Config loading: defaults merge, overrides, validation errors, derived keys, reference parity."""
import copy
import glob
import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from libs.core import config as config_mod
from libs.core.config import DEFAULTS, load_config, load_default_config, parse_overrides, save_config
from libs.core.errors import ConfigError
from libs.utils.paths import REPO_ROOT
from tests.conftest import fixture_path

CONFIG_DIR = os.path.join(REPO_ROOT, "configs")
FINETUNE = os.path.join(CONFIG_DIR, "ego4d_nlq_v2_pretrain_finetune_internvideo_2.5e-5.yaml")

# keys this project adds to the reference's model / test_cfg sections
OUR_MODEL_KEYS = {"video_pad_mode", "text_pad_mode", "use_sdpa", "local_attn_impl", "trim_pyramid", "sparse_reg_head",
                  "fused_layer_norm", "chunked_mlp", "text_side_cross_attn",
                  "compile"}
OUR_TEST_CFG_KEYS = {"nms_backend", "nms_early_stop", "half_window_offset"}

# golden/README.md: the tiny model = the finetune config with these overrides
TINY_OVERRIDES = [
    "dataset.input_vid_dim=48", "dataset.input_txt_dim=24", "dataset.max_seq_len=256",
    "model.embd_dim=32", "model.fpn_dim=32", "model.head_dim=32",
    "model.backbone_arch=[2, 2, 2, 0, 3]",
    "model.regression_range=[[0, 4], [2, 8], [4, 16], [8, 10000]]",
]


def write_yaml(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def as_json(obj):
    """Tuples -> lists, ints and floats compared by value."""
    return json.loads(json.dumps(obj))


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(CONFIG_DIR, "*.yaml"))),
                         ids=os.path.basename)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg["dataset_name"] in ("ego4d", "demo")
    assert cfg["model"]["max_seq_len"] == cfg["dataset"]["max_seq_len"]
    assert cfg["model"]["train_cfg"] == cfg["train_cfg"]
    assert cfg["model"]["test_cfg"] == cfg["test_cfg"]


def test_shipped_configs_values():
    """The reference's per-config values (spec section 2 table), lr per GPU with scaling on."""
    expect = {  # name: (arch, lr, epochs, warmup, batch, max_seg_num, jitter)
        "ego4d_narrations_nlq_internvideo": ([2, 4, 4, 0, 6], 5e-5, 6, 4, 4, 50, True),
        "ego4d_nlq_v2_internvideo_1e-4": ([2, 4, 4, 0, 6], 5e-5, 8, 5, 2, 5, False),
        "ego4d_nlq_v2_internvideo_1e-4_groundnlq_star": ([2, 4, 4, 6, 0], 5e-5, 8, 5, 2, 5, False),
        "ego4d_nlq_v2_pretrain_finetune_internvideo_2.5e-5": ([2, 4, 4, 0, 6], 2.5e-5, 6, 4, 2, 5, False),
        "ego4d_nlq_v2_pretrain_finetune_internvideo_2.5e-5_train+val": ([2, 4, 4, 0, 6], 2.5e-5, 6, 4, 2, 5, False),
        "ego4d_nlq_v2_pretrain_finetune_internvideo_2.5e-5_groundnlq_star_train+val":
            ([2, 4, 4, 6, 0], 5e-5, 6, 4, 2, 5, False),
        "ego4d_nlq_v2_internvideo_inference_test": ([2, 4, 4, 0, 6], 2.5e-5, 6, 4, 2, 5, False),
    }
    for name, (arch, lr, epochs, warmup, batch, max_seg, jitter) in expect.items():
        cfg = load_config(os.path.join(CONFIG_DIR, name + ".yaml"))
        assert list(cfg["model"]["backbone_arch"]) == arch, name
        assert cfg["opt"]["learning_rate"] == lr, name
        assert (cfg["opt"]["epochs"], cfg["opt"]["warmup_epochs"]) == (epochs, warmup), name
        assert cfg["loader"]["batch_size"] == batch, name
        assert cfg["test_cfg"]["max_seg_num"] == max_seg, name
        assert cfg["dataset"]["enable_temporal_jittering"] is jitter, name
        assert cfg["trainer"]["scale_lr_by_world_size"] is True, name
        assert cfg["dataset"]["feat_stride"] == cfg["dataset"]["num_frames"] == 16.043
        assert cfg["test_cfg"]["nms_sigma"] == 0.75 and cfg["train_cfg"]["init_loss_norm"] == 200
    finetune = load_config(FINETUNE)["dataset"]
    assert finetune["train_jsonl_file"].endswith("ego4d_nlq_train_v2.jsonl")  # held-out val
    test = load_config(os.path.join(CONFIG_DIR, "ego4d_nlq_v2_internvideo_inference_test.yaml"))["dataset"]
    assert test["val_jsonl_file"].endswith("ego4d_nlq_test_v2.jsonl")


def test_finetune_model_section_matches_reference_golden():
    golden = json.load(open(fixture_path("golden", "tiny_model", "config.json")))
    cfg = load_config(FINETUNE, overrides=TINY_OVERRIDES)
    model = as_json(cfg["model"])
    for key in OUR_MODEL_KEYS:
        model.pop(key)
    for key in OUR_TEST_CFG_KEYS:
        model["test_cfg"].pop(key)
    assert model == golden["model"]
    # the reference's defaults for the sections the configs leave alone
    assert as_json({k: cfg["opt"][k] for k in golden["opt"]}) == golden["opt"]


def test_defaults_are_not_mutated_and_fresh_copies(tmp_path):
    before = copy.deepcopy(DEFAULTS)
    path = write_yaml(tmp_path, "model:\n  n_head: 8\ntrain_cfg:\n  head_empty_cls: [3]\n")
    cfg = load_config(path, overrides=["opt.schedule_steps=[1, 2]"])
    cfg["model"]["regression_range"].append((1, 2))
    cfg["train_cfg"]["head_empty_cls"].append(7)
    load_default_config()["opt"]["schedule_steps"].append(9)
    assert DEFAULTS == before
    assert load_config(path)["opt"]["schedule_steps"] == []


def test_yaml_merge_keeps_unset_defaults(tmp_path):
    path = write_yaml(tmp_path, "dataset:\n  max_seq_len: 1024\ntest_cfg: {max_seg_num: 5}\n")
    cfg = load_config(path)
    assert cfg["dataset"]["max_seq_len"] == 1024 and cfg["dataset"]["feat_stride"] == 16
    assert cfg["test_cfg"]["max_seg_num"] == 5 and cfg["test_cfg"]["nms_sigma"] == 0.5
    assert cfg["model"]["max_seq_len"] == 1024 and cfg["model"]["input_vid_dim"] == 2304
    assert cfg["model"]["test_cfg"]["max_seg_num"] == 5
    # copies, not the same objects (the reference shared them)
    assert cfg["model"]["train_cfg"] is not cfg["train_cfg"]
    assert cfg["trainer"]["ema_decay"] == 0.999 and cfg["output_folder"] == "./ckpt/"


def test_empty_yaml_gives_defaults(tmp_path):
    cfg = load_config(write_yaml(tmp_path, ""))
    assert as_json(cfg) == as_json(load_default_config())


def test_parse_overrides_types():
    parsed = parse_overrides([
        "model.n_head=8", "opt.learning_rate=0.5", "dataset.enable_temporal_jittering=true",
        "model.backbone_arch=[2, 4, 4, 0, 6]", "test_cfg.nms_method=hard", "dataset.default_fps=null",
        "dataset.json_file=a=b.json",
    ])
    assert parsed == {
        "model": {"n_head": 8, "backbone_arch": [2, 4, 4, 0, 6]},
        "opt": {"learning_rate": 0.5},
        "dataset": {"enable_temporal_jittering": True, "default_fps": None, "json_file": "a=b.json"},
        "test_cfg": {"nms_method": "hard"},
    }
    assert isinstance(parsed["model"]["n_head"], int)


def test_overrides_apply_and_coerce_scientific_floats(tmp_path):
    path = write_yaml(tmp_path, "opt:\n  learning_rate: 1e-4\n")  # PyYAML reads 1e-4 as a string
    cfg = load_config(path, overrides=["opt.weight_decay=5e-2", "loader.batch_size=4", "trainer.amp=none"])
    assert cfg["opt"]["learning_rate"] == 1e-4 and isinstance(cfg["opt"]["learning_rate"], float)
    assert cfg["opt"]["weight_decay"] == 0.05
    assert cfg["loader"]["batch_size"] == 4 and cfg["trainer"]["amp"] == "none"


def test_parse_overrides_nests_empties_and_rejects():
    assert parse_overrides(["a.b.c=1", "a.b.d=x", "a.e="]) == {"a": {"b": {"c": 1, "d": "x"}, "e": ""}}
    with pytest.raises(ConfigError, match="^" + re.escape("override 'a.b.c=2': a.b was already set to a value") + "$"):
        parse_overrides(["a.b=1", "a.b.c=2"])
    with pytest.raises(ConfigError, match="^" + re.escape("override 'model.n_head=[1': value is not valid YAML (")):
        parse_overrides(["model.n_head=[1"])


@pytest.mark.parametrize("bad", ["model.n_head", "=3", "model..n_head=3"])
def test_malformed_override(bad, tmp_path):
    with pytest.raises(ConfigError, match="KEY.PATH=VALUE"):
        load_config(write_yaml(tmp_path, ""), overrides=[bad])


def test_unknown_key_names_path_file_and_suggestion(tmp_path):
    path = write_yaml(tmp_path, "model:\n  n_heads: 4\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "'model.n_heads'" in msg and path in msg and "did you mean 'model.n_head'" in msg


@pytest.mark.parametrize("text, message", [
    ("devicez: [cpu]\n", "unknown key 'devicez' in the top level; did you mean 'devices'?"),
    ("model:\n  devices: [cpu]\n", "unknown key 'model.devices' in section 'model'; did you mean 'devices' (top level)?"),
    ("model:\n  zzzzzz: 1\n", "unknown key 'model.zzzzzz' in section 'model'"),
])
def test_unknown_key_messages_exactly(tmp_path, text, message):
    path = write_yaml(tmp_path, text)
    with pytest.raises(ConfigError, match="^" + re.escape(f"config file {path}: {message}") + "$"):
        load_config(path)


def test_unknown_key_in_wrong_section_suggests_right_section(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'loader.batch_size'"):
        load_config(write_yaml(tmp_path, "dataset:\n  batch_size: 4\n"))


def test_unknown_key_from_override(tmp_path):
    with pytest.raises(ConfigError, match="override: unknown key 'opt.learning_rat'.*'opt.learning_rate'"):
        load_config(write_yaml(tmp_path, ""), overrides=["opt.learning_rat=1"])


@pytest.mark.parametrize("text, key, expected, got", [
    ("loader:\n  batch_size: two\n", "loader.batch_size", "an integer", "'two' (str)"),
    ("loader:\n  batch_size: 2.5\n", "loader.batch_size", "an integer", "2.5 (float)"),
    ("loader:\n  batch_size: true\n", "loader.batch_size", "an integer", "True (bool)"),
    ("model:\n  use_abs_pe: 1\n", "model.use_abs_pe", "a bool (true/false)", "1 (int)"),
    ("opt:\n  learning_rate: fast\n", "opt.learning_rate", "a number", "'fast' (str)"),
    ("model:\n  backbone_arch: 5\n", "model.backbone_arch", "a list", "5 (int)"),
    ("test_cfg:\n  nms_method: [soft]\n", "test_cfg.nms_method", "a str", "['soft'] (list)"),
    # keys that take a second type besides their default's
    ("devices: 3\n", "devices", "a list or a str", "3 (int)"),
    ("model:\n  compile: 3\n", "model.compile", "a bool (true/false) or a str", "3 (int)"),
])
def test_wrong_type_names_key_expected_got(tmp_path, text, key, expected, got):
    path = write_yaml(tmp_path, text)
    with pytest.raises(ConfigError, match="^" + re.escape(f"config file {path}: '{key}' must be {expected} (default ")
                       + r".*" + re.escape(f"), got {got}") + "$"):
        load_config(path)


def test_a_section_given_a_value_is_named(tmp_path):
    path = write_yaml(tmp_path, "model: 3\n")
    with pytest.raises(ConfigError, match="^" + re.escape(f"config file {path}: 'model' must be a section (mapping), got 3") + "$"):
        load_config(path)


@pytest.mark.parametrize("text, key, expected", [
    ("trainer:\n  cpu_threads: 0\n", "trainer.cpu_threads", "a positive integer"),
    ("trainer:\n  early_stop_epochs: two\n", "trainer.early_stop_epochs", "a positive integer"),
    ("dataset:\n  json_file: {a: 1}\n", "dataset.json_file", "a path (str)"),
    ("dataset:\n  video_feat_dir: 3\n", "dataset.video_feat_dir", "a path (str)"),
    ("dataset:\n  default_fps: thirty\n", "dataset.default_fps", "a number"),
    ("dataset:\n  crop_ratio: 0.9\n", "dataset.crop_ratio", "a list"),
    ("test_cfg:\n  ext_score_file: [a]\n", "test_cfg.ext_score_file", "a path (str)"),
])
def test_keys_unset_by_default_are_checked_when_set(tmp_path, text, key, expected):
    path = write_yaml(tmp_path, text)
    with pytest.raises(ConfigError, match="^" + re.escape(f"config file {path}: '{key}' must be {expected} or null, got ")):
        load_config(path)


def test_every_key_unset_by_default_says_what_it_takes():
    unset = [(section, key) for section, content in DEFAULTS.items() if isinstance(content, dict)
             for key, value in content.items() if value is None]
    assert unset and sorted(unset) == sorted(config_mod._OPTIONAL_VALUES)


def test_accepted_type_variants(tmp_path):
    path = write_yaml(tmp_path, (
        "devices: cuda\ntrain_split: [training]\n"
        "dataset: {feat_stride: 16, default_fps: 30, trunc_thresh: 0.3, crop_ratio: [0.9, 1.0]}\n"
        "model: {backbone_arch: [2, 4, 4, 0, 6]}\ntrainer: {early_stop_epochs: 3}\n"))
    cfg = load_config(path)
    assert cfg["devices"] == "cuda" and cfg["train_split"] == ["training"]
    assert load_config(path, overrides=["model.compile=inductor"])["model"]["compile"] == "inductor"
    assert cfg["dataset"]["crop_ratio"] == [0.9, 1.0] and cfg["trainer"]["early_stop_epochs"] == 3


def test_derived_model_keys(tmp_path):
    # a saved config repeats the derived keys: accepted when consistent
    saved = tmp_path / "run"
    cfg = load_config(FINETUNE, overrides=["test_cfg.max_seg_num=7"])
    save_config(cfg, str(saved))
    again = load_config(str(saved / "config.yaml"), overrides=["dataset.max_seq_len=512"])
    assert again["model"]["max_seq_len"] == 512 and again["model"]["test_cfg"]["max_seg_num"] == 7
    with pytest.raises(ConfigError, match="^override: 'model.max_seq_len' is derived from 'dataset.max_seq_len'; "
                                          "set that instead \\(got 128, derived 2560\\)$"):
        load_config(FINETUNE, overrides=["model.max_seq_len=128"])
    for section in ("train_cfg", "test_cfg"):
        path = write_yaml(tmp_path, f"model:\n  {section}: {{droppath: 0.5}}\n")
        with pytest.raises(ConfigError, match="^" + re.escape(f"config file {path}: 'model.{section}' is derived from "
                                                              f"'{section}'; set that instead")):
            load_config(path)
    # a consistent derived key does not end the section: the keys after it still apply
    path = write_yaml(tmp_path, "model:\n  max_seq_len: 2560\n  n_head: 8\n", name="consistent.yaml")
    assert load_config(path)["model"]["n_head"] == 8


def test_derived_sections_are_copies(tmp_path):
    cfg = load_config(write_yaml(tmp_path, "train_cfg:\n  head_empty_cls: [3]\n"))
    cfg["model"]["train_cfg"]["head_empty_cls"].append(4)
    assert cfg["train_cfg"]["head_empty_cls"] == [3]


def test_save_config_round_trip(tmp_path):
    cfg = load_config(FINETUNE, overrides=["loader.num_workers=0"])
    save_config(cfg, str(tmp_path))
    assert as_json(yaml.safe_load((tmp_path / "config.yaml").read_text())) == as_json(cfg)
    assert as_json(load_config(str(tmp_path / "config.yaml"))) == as_json(cfg)
    text = (tmp_path / "config.txt").read_text()
    assert text.startswith("{") and "'learning_rate': 2.5e-05" in text
    saved = (tmp_path / "config.yaml").read_text()
    sections = [line.split(":")[0] for line in saved.splitlines() if line and not line.startswith(" ")]
    assert sections == list(cfg)  # the config's own order, not sorted
    assert "  backbone_arch: [2, 4, 4, 0, 6]" in saved.splitlines()  # short lists on one line


def test_check_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ann.jsonl").write_text("")
    path = write_yaml(tmp_path, "dataset:\n  train_jsonl_file: ann.jsonl\n  video_feat_dir: feats/video.h5\n")
    assert load_config(path)["dataset"]["video_feat_dir"] == "feats/video.h5"  # not checked by default
    assert config_mod.resolve_config(path)[0]["dataset"]["video_feat_dir"] == "feats/video.h5"
    with pytest.raises(ConfigError, match="^" + re.escape(f"config file {path}: dataset.video_feat_dir = 'feats/video.h5' "
                                                          f"does not exist (relative paths are relative to {tmp_path})")):
        load_config(path, check_paths=True)
    (tmp_path / "feats").mkdir()
    (tmp_path / "feats" / "video.h5").write_bytes(b"")
    assert load_config(path, check_paths=True)["dataset"]["train_jsonl_file"] == "ann.jsonl"


def test_paths_read_are_the_keys_a_run_reads():
    cfg = load_default_config()
    cfg["dataset"].update(val_jsonl_file="val.jsonl", val_text_feat_dir="val_text.h5")
    cfg["trainer"]["eval_freq"] = 0
    train_only = ["train_jsonl_file", "video_feat_dir", "text_feat_dir"]
    assert config_mod.paths_read(cfg, training=True) == train_only
    cfg["trainer"]["eval_freq"] = 1  # validates: the evaluation split's keys too, each once
    assert config_mod.paths_read(cfg, training=True) == train_only + ["val_jsonl_file", "val_text_feat_dir", "json_file"]
    assert config_mod.paths_read(cfg, training=False) == ["val_jsonl_file", "video_feat_dir", "val_text_feat_dir",
                                                          "json_file"]
    assert config_mod.paths_read(cfg, training=False, with_ground_truth=False)[-1] == "val_text_feat_dir"
    cfg["dataset"]["val_text_feat_dir"] = None  # evaluation falls back to the training text store
    assert config_mod.paths_read(cfg, training=False) == ["val_jsonl_file", "video_feat_dir", "text_feat_dir", "json_file"]
    cfg["dataset"]["val_jsonl_file"] = None  # no split to validate on: validation is off, nothing of it is read
    assert config_mod.paths_read(cfg, training=True) == train_only


def test_check_paths_exist_names_the_source_of_the_first_missing_path(tmp_path):
    there = tmp_path / "there.jsonl"
    there.write_text("")
    cfg = {"dataset": {"train_jsonl_file": str(there), "json_file": None, "text_feat_dir": "nope.h5", "video_feat_dir": "gone"}}
    config_mod.check_paths_exist(cfg, {}, ["train_jsonl_file", "json_file"])  # present or unset: fine
    sources = {("dataset", "video_feat_dir"): "override"}
    with pytest.raises(ConfigError, match="^" + re.escape("override: dataset.video_feat_dir = 'gone' does not exist")):
        config_mod.check_paths_exist(cfg, sources, ["train_jsonl_file", "video_feat_dir", "text_feat_dir"])
    with pytest.raises(ConfigError, match="^" + re.escape("the defaults: dataset.text_feat_dir = 'nope.h5' does not exist")):
        config_mod.check_paths_exist(cfg, sources, ["text_feat_dir"])


def test_a_config_in_utf8_loads_under_any_locale(tmp_path):
    """YAML files are UTF-8 (a comment in French, a Chinese path); an ASCII locale must not matter."""
    path = write_yaml(tmp_path, "# données du démonstrateur\ndataset:\n  json_file: 数据/nlq.json\n")
    env = {**os.environ, "LC_ALL": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0", "PYTHONIOENCODING": "utf-8"}
    code = ("import sys; from libs.core.config import load_config; "
            "print(load_config(sys.argv[1])['dataset']['json_file'])")
    out = subprocess.run([sys.executable, "-c", code, path], cwd=REPO_ROOT, env=env, capture_output=True,
                         text=True, encoding="utf-8")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "数据/nlq.json"


def test_missing_or_invalid_file(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="^" + re.escape(f"cannot read config file {missing}: No such file or directory") + "$"):
        load_config(missing)
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write_yaml(tmp_path, "model: {n_head: [\n"))
    path = write_yaml(tmp_path, "- 1\n- 2\n")
    with pytest.raises(ConfigError, match="^" + re.escape(f"config file {path}: expected a mapping of sections, got list") + "$"):
        load_config(path)


def test_every_default_key_is_commented():
    """Each key of DEFAULTS has a comment line right above it (or shares a commented group)."""
    source = open(config_mod.__file__).read()
    block = source[source.index("DEFAULTS: dict"):source.index("\n}\n", source.index("DEFAULTS: dict"))]
    lines = block.splitlines()
    uncommented = []
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith('"') and ":" in stripped:
            j = i - 1
            while j > 0 and lines[j].strip().startswith('"') and not lines[j].strip().endswith("{"):
                j -= 1  # consecutive keys share the comment above the group
            if not lines[j].strip().startswith("#"):
                uncommented.append(stripped.split(":")[0])
    assert uncommented == []


def test_reference_mode_sets_every_switch_away_from_the_defaults():
    fast, reference = load_config(FINETUNE), load_config(FINETUNE, mode="reference")
    with open(config_mod.mode_path("reference")) as f:
        switches = yaml.safe_load(f)
    for section, keys in switches.items():
        for key, value in keys.items():
            assert reference[section][key] == value and fast[section][key] != value, f"{section}.{key}"
    assert reference["model"]["test_cfg"]["nms_backend"] == "cpp"  # the derived copy follows
    assert load_config(FINETUNE, mode="reference", overrides=["trainer.amp=bf16"])["trainer"]["amp"] == "bf16"
    with pytest.raises(ConfigError, match=r"unknown mode 'fastest'; known modes: \['reference'\]"):
        load_config(FINETUNE, mode="fastest")


def test_bases_merge_mappings_deeply_and_replace_lists_and_scalars(tmp_path):
    (tmp_path / "bases").mkdir()
    write_yaml(tmp_path, "model:\n  n_head: 8\n  backbone_arch: [2, 2, 2, 0, 6]\nopt:\n  epochs: 9\n",
               name="bases/root.yaml")
    write_yaml(tmp_path, "_base_: root.yaml\nmodel:\n  embd_dim: 64\n  backbone_arch: [1, 1, 1, 0, 2]\n",
               name="bases/middle.yaml")
    write_yaml(tmp_path, "opt:\n  epochs: 3\n  learning_rate: 1.0e-3\n", name="other.yaml")
    path = write_yaml(tmp_path, "_base_: [bases/middle.yaml, other.yaml]\nopt:\n  learning_rate: 5.0e-4\n")
    cfg, sources = config_mod.resolve_config(path)
    assert cfg["model"]["n_head"] == 8 and cfg["model"]["embd_dim"] == 64  # merged across files
    assert cfg["model"]["backbone_arch"] == [1, 1, 1, 0, 2]  # a list replaces, never appends
    assert cfg["opt"]["epochs"] == 3 and cfg["opt"]["learning_rate"] == 5e-4  # later files win
    assert cfg["model"]["fpn_dim"] == DEFAULTS["model"]["fpn_dim"]  # untouched keys keep their defaults
    assert sources[("model", "n_head")] == f"config file {tmp_path / 'bases' / 'root.yaml'}"
    assert sources[("opt", "epochs")] == f"config file {tmp_path / 'other.yaml'}"
    assert sources[("opt", "learning_rate")] == f"config file {path}"
    assert config_mod.load_config(path, overrides=["opt.epochs=4"])["opt"]["epochs"] == 4


def test_base_cycles_bad_bases_and_bad_keys_name_their_files(tmp_path):
    a = write_yaml(tmp_path, "_base_: b.yaml\n", name="a.yaml")
    b = write_yaml(tmp_path, "_base_: [a.yaml]\n", name="b.yaml")
    with pytest.raises(ConfigError, match="^" + re.escape(f"config files include each other: {a} -> {b} -> {a}") + "$"):
        load_config(a)
    with pytest.raises(ConfigError, match=re.escape("'_base_' must be a path or a list of paths (relative to the file), got 3")):
        load_config(write_yaml(tmp_path, "_base_: 3\n", name="c.yaml"))
    for bad_list in ("[3]", "['']", "[a.yaml, 3]"):
        with pytest.raises(ConfigError, match=re.escape("'_base_' must be a path or a list of paths")):
            load_config(write_yaml(tmp_path, f"_base_: {bad_list}\n", name="e.yaml"))
    with pytest.raises(ConfigError, match=re.escape(f"cannot read config file {tmp_path / 'nope.yaml'}")):
        load_config(write_yaml(tmp_path, "_base_: nope.yaml\n", name="d.yaml"))
    bad = write_yaml(tmp_path, "model:\n  n_heads: 4\n", name="bad_base.yaml")
    top = write_yaml(tmp_path, "_base_: bad_base.yaml\nopt:\n  epochs: 2\n", name="top.yaml")
    with pytest.raises(ConfigError, match="^" + re.escape(f"config file {bad}: unknown key 'model.n_heads' in section "
                                                          "'model'; did you mean 'model.n_head'?") + "$"):
        load_config(top)
    wrong = write_yaml(tmp_path, "_base_: bad_type.yaml\n", name="top2.yaml")
    write_yaml(tmp_path, "opt:\n  epochs: three\n", name="bad_type.yaml")
    with pytest.raises(ConfigError, match=re.escape(f"config file {tmp_path / 'bad_type.yaml'}: 'opt.epochs' must be an integer")):
        load_config(wrong)


def test_shipped_variants_are_small_files_on_their_bases():
    for name, base in (("ego4d_nlq_v2_pretrain_finetune_internvideo_2.5e-5_train+val.yaml",
                        "ego4d_nlq_v2_pretrain_finetune_internvideo_2.5e-5.yaml"),
                       ("ego4d_nlq_v2_internvideo_1e-4_groundnlq_star.yaml", "ego4d_nlq_v2_internvideo_1e-4.yaml")):
        path = os.path.join(CONFIG_DIR, name)
        text = open(path).read()
        assert f"_base_: {base}" in text and len([l for l in text.splitlines() if not l.startswith("#")]) <= 8
        cfg, base_cfg = load_config(path), load_config(os.path.join(CONFIG_DIR, base))
        differing = {(s, k) for s in cfg if isinstance(cfg[s], dict) for k in cfg[s] if cfg[s][k] != base_cfg[s][k]}
        assert differing and differing <= {("dataset", "train_jsonl_file"), ("model", "backbone_arch")}


def test_print_config_shows_the_resolved_config_and_where_values_came_from(tmp_path, capsys):
    import train

    base = write_yaml(tmp_path, "model:\n  n_head: 8\nopt:\n  weight_decay: 0.0\n", name="base.yaml")  # the default
    path = write_yaml(tmp_path, "_base_: base.yaml\nopt:\n  epochs: 3\n")
    assert train.main([path, "--print-config", "--opt", "opt.learning_rate=1e-4", "--mode", "reference"]) == 0
    printed = capsys.readouterr().out
    resolved = yaml.safe_load(printed)  # the YAML part (the sources are comments)
    assert resolved["model"]["n_head"] == 8 and resolved["opt"]["learning_rate"] == 1e-4
    assert f"#   model.n_head = 8  (config file {base})" in printed
    assert f"#   opt.epochs = 3  (config file {path})" in printed
    assert "#   opt.learning_rate = 0.0001  (override)" in printed
    assert "#   model.video_pad_mode = 'reference'  (config file " in printed and "modes/reference.yaml)" in printed
    assert "opt.weight_decay" not in printed.split("where they came from")[1]  # defaults are not listed
    # sections and keys in the defaults' order (not sorted), lists on one line, one blank line before the sources
    assert list(resolved) == list(DEFAULTS) and list(resolved["opt"]) == list(DEFAULTS["opt"])
    assert "\n  backbone_arch: [" in printed and "\n\n\n" not in printed and printed.startswith("init_rand_seed:")
