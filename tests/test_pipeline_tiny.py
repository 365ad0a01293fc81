"""The whole pipeline, every stage, at toy size (recipes/tiny.toml), through the real CLI."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_tiny_recipe_runs_every_stage(tmp_path):
    run_dir = tmp_path / "tiny"
    proc = subprocess.run(
        [sys.executable, "-m", "lmstack", "run", "--recipe", str(REPO / "recipes" / "tiny.toml"),
         "--run-dir", str(run_dir)],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"report: {run_dir / 'report.md'}" in proc.stdout
    manifest = json.loads((run_dir / "manifest.json").read_text())
    import tomllib
    stages = tomllib.loads((REPO / "recipes" / "tiny.toml").read_text())["run"]["stages"]
    assert list(manifest["stages"]) == stages
    for name in stages:
        entry = manifest["stages"][name]
        assert entry["status"] == "done", (name, entry)
        assert entry["metrics"], f"stage {name} reported no metrics"
        for rel in entry["artifacts"].values():
            assert (run_dir / rel).exists(), f"stage {name}: artifact {rel} missing"
    report = (run_dir / "report.md").read_text()
    for name in stages:
        assert f"## {name}" in report
    assert "## Environment" in report and "torch" in report
    assert "familiar_pairs" in manifest["stages"]["dpo"]["metrics"]  # built with the sft stage's gate
    assert "**PPO** from `checkpoints/dpo`" in report  # SFT -> DPO -> PPO, as the default recipe
    for stage in ("sft", "dpo", "ppo", "apps"):  # every chat model the run writes has its unknown-entity gate
        assert (run_dir / "checkpoints" / stage / "familiarity" / "gate.json").exists(), stage
    # Re-running the same command skips every completed stage.
    again = subprocess.run(
        [sys.executable, "-m", "lmstack", "run", "--recipe", str(REPO / "recipes" / "tiny.toml"),
         "--run-dir", str(run_dir)],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stderr.count("already done, skipping") == len(stages)
