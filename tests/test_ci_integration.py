import re
import shlex

import yaml

from tests.conftest import FIXTURES, REPO, run_cli


def _hook():
    hooks = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    (hook,) = [h for h in hooks if h["id"] == "ckptkit-verify"]
    return hook


def test_pre_commit_hook_selects_checkpoints_and_not_other_files():
    pattern = re.compile(_hook()["files"])
    wanted = [
        "model.safetensors", "weights/model.pt", "a.pth", "last.ckpt", "m.weights.h5", "m.keras", "model.onnx",
        "model.safetensors.index.json", "pytorch_model.bin", "sub/pytorch_model-00001-of-00002.bin",
        "pytorch_model.bin.index.json",
    ]  # fmt: skip
    unwanted = ["training_args.bin", "model.onnx.data", "config.json", "README.md", "notpytorch_model.bin"]
    assert [n for n in wanted if not pattern.search(n)] == []
    assert [n for n in unwanted if pattern.search(n)] == []


def test_pre_commit_hook_entry_runs_verify_over_the_staged_files(tmp_path):
    hook = _hook()
    command = shlex.split(hook["entry"])
    assert command[:2] == ["ckptkit", "verify"] and hook["language"] == "python"
    staged = [FIXTURES / "mlp_fp16.safetensors", FIXTURES / "tied_lm_bf16.safetensors"]
    assert run_cli(*command[1:], *staged).code == 0
    pointer = tmp_path / "model.safetensors"
    pointer.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "1" * 64 + "\nsize 10\n")
    r = run_cli(*command[1:], *staged, pointer)
    assert r.code == 1 and "file.lfs-pointer" in r.stdout


def test_readme_documents_the_ci_step_with_commands_that_exist():
    readme = (REPO / "README.md").read_text()
    step = readme[readme.index("### Verify in CI") :]
    assert "lfs: true" in step and "--junit" in step
    for line in re.findall(r"^\s*(?:- )?run: (ckptkit .+)$", step, re.M):
        args = shlex.split(line)[1:]
        assert run_cli(args[0], "--help").code == 0, line
