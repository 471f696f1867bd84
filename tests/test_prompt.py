"""The prompt directory: PEFT compatibility, round trips, atomic saves, refusal of bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import tsloss_harness
from tsloss_harness.prompt import (
    PromptLoadError,
    load_peft_config,
    load_prompt,
    load_provenance,
    save_prompt,
    save_raw_prompt,
)
from tsloss_harness.prompt_config import make_prompt_config
from tsloss_harness.topology import METRIC_KEYS

P = 6  # virtual tokens


@pytest.fixture(scope="module")
def model_config(tiny_llama_dir):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(tiny_llama_dir)


@pytest.fixture
def prompt_config(tiny_llama_dir, model_config):
    return make_prompt_config(
        str(tiny_llama_dir),
        num_virtual_tokens=P,
        token_dim=model_config.hidden_size,
        num_layers=model_config.num_hidden_layers,
        num_attention_heads=model_config.num_attention_heads,
    )


@pytest.fixture
def embeddings(model_config):
    return torch.randn(P, model_config.hidden_size, generator=torch.Generator().manual_seed(0)) * 0.02


def _base_model(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir)


def _peft_prompt(model_dir, prompt_dir) -> torch.Tensor:
    """The prompt as PEFT itself sees it after loading ``prompt_dir`` onto the base model."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(_base_model(model_dir), str(prompt_dir))
    return model.get_prompt_embedding_to_save("default")


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


# -------------------------------------------------------------------------------- round trips


def test_round_trip_ours_peft_raw_ours_is_bit_identical(tmp_path, tiny_llama_dir, prompt_config, embeddings):
    first = save_prompt(tmp_path / "first", embeddings, peft_config=prompt_config, provenance={"method": "tsloss"})
    assert sorted(p.name for p in first.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "tsloss.json",
    ]

    through_peft = _peft_prompt(tiny_llama_dir, first)
    assert torch.equal(through_peft, embeddings)
    assert torch.equal(load_prompt(first), embeddings)

    torch.save(through_peft.unsqueeze(0), tmp_path / "authors.pt")  # [1, P, d], as the paper's authors saved
    save_raw_prompt(tmp_path / "raw.safetensors", through_peft)
    save_raw_prompt(tmp_path / "raw.pt", through_peft)
    for name in ("authors.pt", "raw.safetensors", "raw.pt"):
        loaded = load_prompt(tmp_path / name)
        assert loaded.shape == (P, embeddings.shape[1]) and torch.equal(loaded, embeddings), name
        assert load_provenance(tmp_path / name) is None

    second = save_prompt(
        tmp_path / "second",
        load_prompt(tmp_path / "authors.pt"),
        peft_config=prompt_config,
        provenance={"method": "tsloss"},
    )
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_embeddings_are_stored_in_their_own_dtype(tmp_path, tiny_llama_dir, prompt_config, embeddings, dtype):
    stored = embeddings.to(dtype)
    out = save_prompt(tmp_path / "p", stored, peft_config=prompt_config, provenance={})
    loaded = load_prompt(out)
    assert loaded.dtype == dtype and torch.equal(loaded, stored)
    assert load_provenance(out)["dtype"] == str(dtype).removeprefix("torch.")
    assert torch.equal(_peft_prompt(tiny_llama_dir, out), stored.float())  # PEFT casts into its fp32 encoder


def test_files_match_what_peft_save_pretrained_writes(tmp_path, tiny_llama_dir, prompt_config, embeddings):
    from peft import get_peft_model

    peft_model = get_peft_model(_base_model(tiny_llama_dir), prompt_config)
    with torch.no_grad():
        peft_model.prompt_encoder["default"].embedding.weight.copy_(embeddings)
    peft_model.save_pretrained(tmp_path / "peft")
    ours = save_prompt(tmp_path / "ours", embeddings, peft_config=prompt_config, provenance={})

    def config(d):
        return json.loads((d / "adapter_config.json").read_text())

    assert config(ours) == config(tmp_path / "peft")
    for d in (ours, tmp_path / "peft"):
        with safe_open(d / "adapter_model.safetensors", "pt") as f:
            assert list(f.keys()) == ["prompt_embeddings"] and f.metadata() == {"format": "pt"}
    assert (ours / "adapter_model.safetensors").read_bytes() == (
        tmp_path / "peft/adapter_model.safetensors"
    ).read_bytes()
    assert torch.equal(load_prompt(tmp_path / "peft"), embeddings)
    assert load_provenance(tmp_path / "peft") is None
    assert load_peft_config(ours).to_dict() == load_peft_config(tmp_path / "peft").to_dict()


def test_legacy_adapter_model_bin_loads(tmp_path, tiny_llama_dir, prompt_config, embeddings):
    from peft import get_peft_model

    peft_model = get_peft_model(_base_model(tiny_llama_dir), prompt_config)
    with torch.no_grad():
        peft_model.prompt_encoder["default"].embedding.weight.copy_(embeddings)
    peft_model.save_pretrained(tmp_path / "old", safe_serialization=False)
    assert (tmp_path / "old/adapter_model.bin").is_file()
    assert torch.equal(load_prompt(tmp_path / "old"), embeddings)


def test_prefix_tuning_adapters_use_the_same_directory(tmp_path, tiny_llama_dir):
    # Prefix tuning stores [P, num_layers * 2 * token_dim]; the API does not change for it.
    from peft import PrefixTuningConfig, get_peft_model

    peft_model = get_peft_model(
        _base_model(tiny_llama_dir), PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)
    )
    peft_model.save_pretrained(tmp_path / "peft")
    config = load_peft_config(tmp_path / "peft")
    prefix = load_prompt(tmp_path / "peft")
    assert prefix.shape == (3, config.num_layers * 2 * config.token_dim)
    out = save_prompt(tmp_path / "ours", prefix * 2, peft_config=config, provenance={})
    assert torch.equal(_peft_prompt(tiny_llama_dir, out), prefix * 2)


def test_prefix_projection_adapters_load_as_their_prefix(tmp_path, tiny_llama_dir, model_config):
    # Prefix-Tuning trains P rows through an MLP; PEFT saves the MLP's output, the prefix itself, which
    # loads into the inference-mode encoder: load_prompt returns it, save_prompt writes it back.
    from peft import PeftModel, get_peft_model

    from tsloss_harness.prompt_config import expected_embedding_shape, make_method_config

    config = make_method_config(
        "prefix", str(tiny_llama_dir), model_config, num_virtual_tokens=3, encoder_hidden_size=8
    )
    d_kv = model_config.num_key_value_heads * model_config.head_dim
    assert (config.prefix_projection, config.token_dim, config.encoder_hidden_size) == (True, d_kv, 8)
    torch.manual_seed(0)
    peft_model = get_peft_model(_base_model(tiny_llama_dir), config)
    assert peft_model.peft_config["default"].token_dim == d_kv  # PEFT resolves grouped-query attention the same way
    peft_model.save_pretrained(tmp_path / "peft")
    prefix = load_prompt(tmp_path / "peft")
    assert prefix.shape == expected_embedding_shape(config) == (3, model_config.num_hidden_layers * 2 * d_kv)
    torch.testing.assert_close(prefix, peft_model.get_prompt_embedding_to_save("default"))
    out = save_prompt(tmp_path / "ours", prefix * 2, peft_config=load_peft_config(tmp_path / "peft"), provenance={})
    reloaded = PeftModel.from_pretrained(_base_model(tiny_llama_dir), str(out))
    assert torch.equal(reloaded.prompt_encoder["default"].embedding.weight, prefix * 2)


# -------------------------------------------------------------------------------- provenance


def _expected_git_commit(package_file: str) -> str | None:
    """What provenance's git_commit must be for a package at ``package_file``, asked of git here: HEAD
    (+dirty when tracked files differ) when the package's parent folder is the top of a checkout, else None."""
    import subprocess

    root = Path(package_file).resolve().parent.parent

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)

    top = git("rev-parse", "--show-toplevel")
    if top.returncode != 0 or Path(top.stdout.strip()).resolve() != root:
        return None
    dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    return git("rev-parse", "HEAD").stdout.strip() + ("+dirty" if dirty else "")


def _copied_prompt_module(folder: Path):
    """tsloss_harness/prompt.py copied into ``folder``/tsloss_harness and imported from there."""
    import importlib.util
    import shutil

    import tsloss_harness.prompt as original

    (folder / "tsloss_harness").mkdir(parents=True)
    copy = shutil.copy(original.__file__, folder / "tsloss_harness" / "prompt.py")
    spec = importlib.util.spec_from_file_location(f"copied_prompt_{folder.name}", copy)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_git_commit_is_the_checkouts_head_and_none_outside_one(tmp_path, prompt_config, embeddings):
    import subprocess

    import tsloss_harness.prompt as prompt_module

    here = save_prompt(tmp_path / "here", embeddings, peft_config=prompt_config, provenance={})
    expected = _expected_git_commit(prompt_module.__file__)
    assert load_provenance(here)["git_commit"] == expected
    if (Path(prompt_module.__file__).resolve().parent.parent / ".git").exists():
        assert expected is not None and len(expected.removesuffix("+dirty")) == 40  # a checkout: a commit
    # A copy of the package outside any checkout, and one inside another repository (a project that
    # vendors it, a venv inside a repository): no commit of its own.
    outside = _copied_prompt_module(tmp_path / "outside")
    record = outside.save_prompt(tmp_path / "o", embeddings, peft_config=prompt_config, provenance={})
    assert load_provenance(record)["git_commit"] is None
    other_repo = tmp_path / "other_repo"
    other_repo.mkdir()
    git = ["git", "-C", str(other_repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(other_repo)], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "theirs"], check=True)  # a HEAD that is not ours
    inside = _copied_prompt_module(other_repo / "vendor")
    record = inside.save_prompt(tmp_path / "i", embeddings, peft_config=prompt_config, provenance={})
    assert load_provenance(record)["git_commit"] is None


def test_provenance_is_strict_json_with_filled_in_fields(tmp_path, prompt_config, embeddings):
    caller = {
        "method": "tsloss",
        "regularizer": "tsloss",
        "regularizer_params": {"tau": np.float32(0.5), "alpha": torch.tensor(10.0), "betas": np.array([1.0, 1.0])},
        "seed": np.int64(3),
        "step": torch.tensor(7),
        "dataset": tmp_path / "train.jsonl",
        "init": "normal",
        "best_accuracy": float("nan"),
    }
    out = save_prompt(tmp_path / "p", embeddings, peft_config=prompt_config, provenance=caller)

    def refuse(token):
        raise AssertionError(f"non-standard JSON constant {token}")

    record = json.loads((out / "tsloss.json").read_text(), parse_constant=refuse)
    assert record == load_provenance(out)
    assert record["regularizer_params"] == {"tau": 0.5, "alpha": 10.0, "betas": [1.0, 1.0]}
    assert (record["seed"], record["step"], record["dataset"]) == (3, 7, str(tmp_path / "train.jsonl"))
    assert record["best_accuracy"] is None
    assert record["base_model"] == prompt_config.base_model_name_or_path
    assert (record["num_virtual_tokens"], record["token_dim"], record["dtype"]) == (P, embeddings.shape[1], "float32")
    assert record["package_version"] == tsloss_harness.__version__
    assert record["git_commit"] == _expected_git_commit(tsloss_harness.prompt.__file__)
    assert record["time"].endswith("+00:00")
    assert "topology" not in record  # stored only as the caller gives it, never computed here


def test_caller_topology_is_kept_and_bad_values_are_refused(tmp_path, prompt_config, embeddings):
    given = {key: 0 for key in METRIC_KEYS}
    out = save_prompt(tmp_path / "p", embeddings, peft_config=prompt_config, provenance={"topology": given})
    assert load_provenance(out)["topology"] == given
    with pytest.raises(TypeError, match="object"):
        save_prompt(tmp_path / "q", embeddings, peft_config=prompt_config, provenance={"bad": object()})
    assert not (tmp_path / "q").exists()


def test_shape_mismatch_is_refused(tmp_path, prompt_config, embeddings):
    with pytest.raises(ValueError) as info:
        save_prompt(tmp_path / "p", embeddings[:5], peft_config=prompt_config, provenance={})
    assert str(info.value) == "embeddings of shape [5, 64] do not match the PEFT config (PROMPT_TUNING: [6, 64])"
    with pytest.raises(ValueError, match="floating point"):
        save_prompt(tmp_path / "p", embeddings.long(), peft_config=prompt_config, provenance={})
    assert _siblings(tmp_path / "p") == []


# ---------------------------------------------------------------------------------- atomicity


def test_failed_save_keeps_existing_directory_and_leaves_nothing(tmp_path, monkeypatch, prompt_config, embeddings):
    import tsloss_harness.prompt as prompt_module

    out = save_prompt(tmp_path / "p", embeddings, peft_config=prompt_config, provenance={"step": 1})
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def crash(path, obj):  # dies after the adapter files are written, before tsloss.json
        raise OSError("disk full")

    monkeypatch.setattr(prompt_module, "_write_json", crash)
    with pytest.raises(OSError, match="disk full"):
        save_prompt(out, embeddings * 2, peft_config=prompt_config, provenance={"step": 2})
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    with pytest.raises(OSError, match="disk full"):
        save_prompt(tmp_path / "fresh", embeddings, peft_config=prompt_config, provenance={})
    assert _siblings(out) == ["p"]  # no half directory, no temporary left behind

    monkeypatch.undo()
    save_prompt(out, embeddings * 2, peft_config=prompt_config, provenance={"step": 2})
    assert torch.equal(load_prompt(out), embeddings * 2) and load_provenance(out)["step"] == 2
    assert _siblings(out) == ["p"]


def test_save_refuses_to_replace_a_directory_that_is_not_a_prompt(tmp_path, prompt_config, embeddings):
    (tmp_path / "run").mkdir()
    (tmp_path / "run/notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a prompt directory"):
        save_prompt(tmp_path / "run", embeddings, peft_config=prompt_config, provenance={})
    assert (tmp_path / "run/notes.txt").read_text() == "keep me"
    assert _siblings(tmp_path / "run") == ["run"]


# --------------------------------------------------------------------------------- bad inputs

_pickle_side_effects: list[str] = []


class _Payload:
    """A pickled object whose unpickling would run code; weights_only must refuse it unrun."""

    def __reduce__(self):
        return (_pickle_side_effects.append, ("unpickled!",))


def _bad_inputs(root: Path) -> dict[str, Path]:
    from peft import LoraConfig

    cases = {"missing": root / "nope.pt"}
    (root / "prompt.txt").write_text("0.1 0.2")
    cases["wrong extension"] = root / "prompt.txt"
    (root / "empty_dir").mkdir()
    cases["dir without adapter"] = root / "empty_dir"
    torch.save(torch.zeros(8), root / "vector.pt")
    cases["1-D tensor"] = root / "vector.pt"
    torch.save(torch.zeros(1, 1, 4, 8), root / "four_d.pt")
    cases["4-D tensor"] = root / "four_d.pt"
    torch.save(torch.zeros(2, 4, 8), root / "batch.pt")
    cases["[2, P, d] batch"] = root / "batch.pt"
    torch.save(torch.zeros(4, 8, dtype=torch.long), root / "ids.pt")
    cases["integer tensor"] = root / "ids.pt"
    torch.save(torch.zeros(0, 8), root / "no_rows.pt")
    cases["empty prompt"] = root / "no_rows.pt"
    torch.save([1, 2, 3], root / "list.pt")
    cases["non-tensor content"] = root / "list.pt"
    torch.save({"a": torch.zeros(4, 8), "b": torch.zeros(4, 8)}, root / "two.pt")
    cases["dict of two unnamed tensors"] = root / "two.pt"
    save_file({"a": torch.zeros(4, 8), "b": torch.zeros(4, 8)}, root / "two.safetensors")
    cases["safetensors with two unnamed tensors"] = root / "two.safetensors"
    (root / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    cases["corrupt safetensors"] = root / "corrupt.safetensors"
    (root / "corrupt.pt").write_bytes(b"PK\x03\x04 truncated")
    cases["corrupt .pt"] = root / "corrupt.pt"
    torch.save(_Payload(), root / "payload.pt")
    cases["pickled object"] = root / "payload.pt"
    lora = root / "lora"
    LoraConfig(task_type="CAUSAL_LM", target_modules=["q_proj"]).save_pretrained(lora)
    save_file({"base_model.model.q_proj.lora_A.weight": torch.zeros(8, 64)}, lora / "adapter_model.safetensors")
    cases["LoRA adapter"] = lora
    wrong_key = root / "wrong_key"
    wrong_key.mkdir()
    save_file({"embedding.weight": torch.zeros(4, 8)}, wrong_key / "adapter_model.safetensors")
    cases["adapter without prompt_embeddings"] = wrong_key
    return cases


def test_every_bad_input_raises_prompt_load_error_naming_the_path(tmp_path, prompt_config, embeddings):
    cases = _bad_inputs(tmp_path)
    mismatched = save_prompt(tmp_path / "mismatched", embeddings, peft_config=prompt_config, provenance={})
    save_file({"prompt_embeddings": embeddings[:3].contiguous()}, mismatched / "adapter_model.safetensors")
    cases["weights disagree with adapter_config"] = mismatched
    for what, path in cases.items():
        with pytest.raises(PromptLoadError) as info:
            load_prompt(path)
        message = str(info.value)
        assert str(path) in message and "\n" not in message, what
    with pytest.raises(PromptLoadError, match="refused"):
        load_prompt(cases["pickled object"])
    assert _pickle_side_effects == []  # the pickled object was refused, never run
    with pytest.raises(PromptLoadError, match="nope"):
        load_provenance(tmp_path / "nope")
    with pytest.raises(PromptLoadError, match="adapter_config.json"):
        load_peft_config(tmp_path / "empty_dir")


def test_dict_with_one_tensor_or_named_prompt_loads(tmp_path, embeddings):
    torch.save({"weight": embeddings}, tmp_path / "one.pt")
    torch.save({"prompt_embeddings": embeddings, "step": torch.tensor(3)}, tmp_path / "named.pt")
    save_file({"other": torch.zeros(2), "prompt_embeddings": embeddings}, tmp_path / "named.safetensors")
    for name in ("one.pt", "named.pt", "named.safetensors"):
        assert torch.equal(load_prompt(tmp_path / name), embeddings), name


def test_save_raw_prompt_refuses_unknown_extension(tmp_path, embeddings):
    with pytest.raises(ValueError, match="prompt.npy"):
        save_raw_prompt(tmp_path / "prompt.npy", embeddings)
