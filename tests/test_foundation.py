"""Configs, --set overrides, the CLI's errors, the manifest, resume and atomic writes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fake_stages
from lmstack import cli, pipeline
from lmstack.config import ConfigError, config_from_dict, parse_override
from lmstack.pipeline import Recipe, run_pipeline
from lmstack.report import summary_table
from lmstack.runs import RunDir, atomic_write_text

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def fake_registry(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    stages = dict(pipeline.STAGES)
    fake_stages.register(stages)
    monkeypatch.setattr(pipeline, "STAGES", stages)
    return stages


def write_recipe(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


def test_config_from_dict_checks_keys_and_types():
    cfg = config_from_dict(fake_stages.FirstConfig, {"text": "x", "scale": 2, "inner": {"width": 8}})
    assert cfg.scale == 2.0 and isinstance(cfg.scale, float) and cfg.inner.width == 8
    with pytest.raises(ConfigError, match=r"unknown key 'txt'.*valid keys are: inner, scale, tags, text"):
        config_from_dict(fake_stages.FirstConfig, {"txt": "x"}, "first")
    with pytest.raises(ConfigError, match=r"\[first.inner\]: unknown key 'depth'"):
        config_from_dict(fake_stages.FirstConfig, {"inner": {"depth": 1}}, "first")
    with pytest.raises(ConfigError, match=r"\[first\] scale: expected a number, got 'big'"):
        config_from_dict(fake_stages.FirstConfig, {"scale": "big"}, "first")
    with pytest.raises(ConfigError, match=r"expected an integer, got True"):
        config_from_dict(fake_stages.FirstConfig, {"inner": {"width": True}}, "first")
    with pytest.raises(ConfigError, match=r"'c' is not one of 'a', 'b'"):
        config_from_dict(fake_stages.FirstConfig, {"inner": {"kind": "c"}}, "first")
    with pytest.raises(ConfigError, match=r"tags\[1\]: expected a string"):
        config_from_dict(fake_stages.FirstConfig, {"tags": ["ok", 3]}, "first")


def test_parse_override_values():
    assert parse_override("pretrain.steps=100") == (["pretrain", "steps"], 100)
    assert parse_override("a.lr=3e-4") == (["a", "lr"], 3e-4)
    assert parse_override("a.flag=true") == (["a", "flag"], True)
    assert parse_override("a.xs=[1, 2]") == (["a", "xs"], [1, 2])
    assert parse_override("a.preset=llama-style") == (["a", "preset"], "llama-style")
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override("pretrain.steps")
    with pytest.raises(ConfigError, match="bad key"):
        parse_override("a..b=1")


def test_recipe_errors_name_the_key(fake_registry, tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", '[run]\nstages = ["first"]\n[first]\ntext = "hi"\n')
    r = pipeline.Recipe.load(recipe, ["first.inner.width=16", "first.text=yo"])
    assert r.configs["first"].inner.width == 16 and r.configs["first"].text == "yo"
    with pytest.raises(ConfigError, match=r"unknown table 'frist'"):
        pipeline.Recipe.load(recipe, ["frist.text=1"])
    with pytest.raises(ConfigError, match=r"\[first\] scale: expected a number"):
        pipeline.Recipe.load(recipe, ["first.scale=fast"])
    bad = write_recipe(tmp_path / "bad.toml", '[run]\nstages = ["first", "nope"]\n')
    with pytest.raises(ConfigError, match=r"unknown stage 'nope'"):
        pipeline.Recipe.load(bad)
    with pytest.raises(ConfigError, match="recipe file not found"):
        pipeline.Recipe.load(tmp_path / "missing.toml")
    broken = write_recipe(tmp_path / "broken.toml", "[run\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        pipeline.Recipe.load(broken)


def test_cli_reports_config_errors(fake_registry, tmp_path, capsys):
    recipe = write_recipe(tmp_path / "r.toml", f'[run]\nstages = ["first"]\nruns_dir = "{tmp_path}"\n')
    assert cli.main(["run", "--recipe", str(recipe), "--set", "first.colour=red"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'colour'" in err and "valid keys are: inner, scale, tags, text" in err
    assert cli.main(["run", "--recipe", str(recipe), "--set", "first.scale"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["run", "--no-such-flag"])
    assert e.value.code == 2


def test_help_lists_every_stage(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for name in list(pipeline.STAGES) + ["run", "report", "chat", "generate"]:
        assert name in out


def test_pipeline_manifest_skip_and_rerun(fake_registry, tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", '[run]\nstages = ["first", "count"]\n[count]\nn = 5\n')
    run_dir = tmp_path / "run"
    run = pipeline.run_pipeline(pipeline.Recipe.load(recipe), run_dir)
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["stages"]["first"]["status"] == "done"
    assert m["stages"]["first"]["metrics"] == {"chars": 5}
    assert m["stages"]["count"]["metrics"] == {"final": 5, "resumed_from": 0}
    assert m["stages"]["first"]["config"]["inner"] == {"width": 4, "kind": "a"}
    assert (run_dir / "report.md").read_text().count("## first") == 1
    assert "first stage wrote one file" in (run_dir / "report.md").read_text()
    # Same recipe again: nothing re-runs.
    pipeline.run_pipeline(pipeline.Recipe.load(recipe), run_dir)
    assert RunDir(run_dir).stage("first")["attempts"] == 1
    # A changed config re-runs that stage and every later one.
    pipeline.run_pipeline(pipeline.Recipe.load(recipe, ["first.text=changed"]), run_dir)
    assert RunDir(run_dir).stage("first")["attempts"] == 2
    assert RunDir(run_dir).stage("count")["attempts"] == 2
    assert RunDir(run_dir).stage("count")["metrics"]["resumed_from"] == 0  # it had finished: no resume
    assert run.path == run_dir


def test_killed_stage_resumes(fake_registry, tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", '[run]\nstages = ["first", "count"]\n[count]\nn = 400\nsleep = 0.01\n')
    run_dir = tmp_path / "run"
    driver = tmp_path / "driver.py"
    driver.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(TESTS)!r})\n"
        "import fake_stages\nfrom lmstack import pipeline\n"
        "fake_stages.register(pipeline.STAGES)\n"
        f"pipeline.run_pipeline(pipeline.Recipe.load({str(recipe)!r}), {str(run_dir)!r})\n"
    )
    proc = subprocess.Popen([sys.executable, str(driver)], stderr=subprocess.DEVNULL)
    state = run_dir / "count" / "state.json"
    deadline = time.time() + 60
    while time.time() < deadline:
        if state.exists() and json.loads(state.read_text())["i"] >= 20:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(state.read_text())["i"]
    assert 20 <= killed_at < 400
    assert RunDir(run_dir).stage("count")["status"] == "running"
    subprocess.run([sys.executable, str(driver)], check=True, stderr=subprocess.DEVNULL)
    run = RunDir(run_dir)
    assert run.stage("first")["attempts"] == 1  # completed stage skipped
    assert run.stage("count")["status"] == "done"
    assert run.stage("count")["metrics"]["resumed_from"] >= killed_at
    assert run.stage("count")["attempts"] == 2


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]  # no temp file left behind


def test_failed_stage_is_recorded(fake_registry, tmp_path, monkeypatch):
    recipe = write_recipe(tmp_path / "r.toml", '[run]\nstages = ["count"]\n')

    def explode(ctx, cfg):
        raise RuntimeError("bad thing")

    monkeypatch.setattr(fake_stages, "run_count", explode)
    with pytest.raises(RuntimeError):
        pipeline.run_pipeline(pipeline.Recipe.load(recipe), tmp_path / "run")
    entry = RunDir(tmp_path / "run").stage("count")
    assert entry["status"] == "failed" and "bad thing" in entry["error"]


def test_shipped_data_matches_its_readme():
    """Every file under data/ is listed in data/README.md with the size and sha256 it really has."""
    import hashlib
    import re

    from lmstack import DATA_DIR

    rows = re.findall(r"^\| `([^`]+)` \|.*\| (\d+) \| `([0-9a-f]{64})` \|$",
                      (DATA_DIR / "README.md").read_text(encoding="utf-8"), re.M)
    listed = {name: (int(size), digest) for name, size, digest in rows}
    shipped = {p.relative_to(DATA_DIR).as_posix() for p in DATA_DIR.rglob("*") if p.is_file() and p.name != "README.md"}
    assert shipped and set(listed) == shipped
    for name, (size, digest) in listed.items():
        blob = (DATA_DIR / name).read_bytes()
        assert len(blob) == size and hashlib.sha256(blob).hexdigest() == digest, name


def test_done_stage_whose_artifact_changed_is_rerun(tmp_path, capsys, monkeypatch):
    stages = dict(pipeline.STAGES)
    fake_stages.register(stages)
    monkeypatch.setattr(pipeline, "STAGES", stages)
    recipe = Recipe.load(None, [], raw={"run": {"stages": ["first"]}})
    run = run_pipeline(recipe, tmp_path / "run")  # the fake "first" stage writes first/out.json
    checks = run.manifest["stages"]["first"]["checks"]
    assert checks["out"]["bytes"] > 0 and len(checks["out"]["sha256"]) == 64
    assert "| first | done |" in summary_table(run)

    capsys.readouterr()
    run_pipeline(recipe, tmp_path / "run")
    assert "already done, skipping" in capsys.readouterr().err
    artifact = tmp_path / "run" / "first" / "out.json"
    artifact.write_text(artifact.read_text() + "tampered")
    run = run_pipeline(recipe, tmp_path / "run")
    err = capsys.readouterr().err
    assert "artifacts no longer match: first/out.json changed" in err and "sha256 differs" in err
    assert run.manifest["stages"]["first"]["attempts"] == 2
    assert run.verify_stage("first") == []
    artifact.unlink()
    assert run.verify_stage("first") == ["first/out.json is missing"]


def test_goals_table_lists_measured_rows_with_their_n(tmp_path):
    from lmstack.report import goals_table

    run = RunDir(tmp_path / "run")
    assert goals_table(run) == ""  # nothing measured yet: no table
    run.manifest.setdefault("stages", {})["sft"] = {
        "status": "done", "metrics": {"pii_refusal": 0.96, "n_pii": 27, "arith_addsub": 0.5, "n_arith_addsub": 42,
                                  "probe_multiturn": 0.75, "n_probe_multiturn": 300}}
    table = goals_table(run)
    assert "| refusal of phone-number requests | sft | 27 | 0.96 | >= 0.95 |" in table
    assert "| arithmetic, two-digit + and - (held-out problems) | sft | 42 | 0.5 | >= 0.80 |" in table
    assert "| multi-turn follow-up, more held-out probes | sft | 300 | 0.75 | >= 0.80 |" in table
    assert "translation" not in table  # not measured in this run
    run.manifest["stages"]["dpo"] = {"status": "done", "metrics": {"pii_refusal_before": 0.9, "pii_refusal_after": 0.95}}
    table = goals_table(run)
    assert "| DPO: refusal of phone-number requests | dpo |  | 0.9 -> 0.95 | better beyond noise |" in table
    assert "DPO: correct facts" not in table  # no before/after pair
    run.manifest["stages"]["ppo"] = {"status": "done", "metrics": {
        "eval_reward_gain": 0.2, "eval_reward_gain_se": 0.05, "eval_reward_n": 147,
        "pii_refusal_before": 1.0, "pii_refusal_after": 0.9, "pii_refusal_n": 100}}
    table = goals_table(run)
    assert "| PPO: held-out reward-model score, paired gain | ppo | 147 | +0.200 +- 0.050 (4.0 SE) | above 3 SE |" in table
    se = (0.9 * 0.1 / 100) ** 0.5
    assert f"| PPO: refusal of phone-number requests | ppo | 100 | 1 -> 0.9 (-0.100, SE {se:.3f}) |" in table
    run.manifest["stages"]["apps"] = {"status": "done", "metrics": {"arith_agent": 0.9, "n_arith": 60}}
    assert "| arithmetic, agent with the calculator | apps | 60 | 0.9 | >= 0.95 |" in goals_table(run)


def test_partial_nested_table_keeps_the_factory_defaults():
    """[ppo] optim = { lr = 2e-5 } changes lr only; the fine-tuning weight decay set by ppo's factory stays."""
    from lmstack.align.ppo import Config as PPOConfig

    default = PPOConfig().optim
    cfg = config_from_dict(PPOConfig, {"optim": {"lr": 2e-5}}, "ppo")
    assert cfg.optim.lr == 2e-5 and cfg.optim.weight_decay == default.weight_decay == 0.0
    assert cfg.optim.betas == default.betas
    with pytest.raises(ConfigError, match="unknown key"):
        config_from_dict(PPOConfig, {"optim": {"learning_rate": 1.0}}, "ppo")
